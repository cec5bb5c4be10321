//! Running under systemd: notifications on a real `NOTIFY_SOCKET`, the watchdog, the unit file
//! checked by systemd-analyze, and SIGHUP reopening the stats log for logrotate.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Verve;

fn receive_until(socket: &UnixDatagram, wanted: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.lines().any(|l| l == wanted);
            got.push(message);
            if done {
                return got;
            }
        }
    }
    panic!("no {wanted} in {got:?}");
}

#[test]
fn ready_then_watchdog_pings_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let verve = Verve::options()
        .workers(2)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "1000000")
        .start();
    receive_until(&socket, "READY=1", Duration::from_secs(10));
    let pings = receive_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(pings.iter().all(|m| m != "STOPPING=1"));
    receive_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
    verve.signal(libc::SIGTERM);
    receive_until(&socket, "STOPPING=1", Duration::from_secs(5));
    let (status, _) = verve.wait_exit(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/systemd/verve.service"
    ))
    .unwrap();
    // Verified as shipped, but for the binary's path: the package installs /usr/bin/verve.
    let unit = unit.replace(
        "ExecStart=/usr/bin/verve",
        concat!("ExecStart=", env!("CARGO_BIN_EXE_verve")),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verve.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("verve.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(complaints.is_empty(), "{complaints:?}");
}

#[test]
fn sighup_reopens_the_stats_log_and_the_callback_log_after_rotation() {
    let peer = crate::common::CallbackPeer::start(crate::common::PeerBehaviour::Status(200));
    let endpoint = crate::common::percent_encode(&peer.url("/hook"));
    let verve = Verve::options()
        .window_secs(1)
        .report_grace(Duration::from_millis(100))
        .callback_allow_private()
        .start();
    let callback = |id: u32| {
        let target = format!("/api/verve/accept?id={id}&endpoint={endpoint}");
        assert_eq!(
            crate::common::Conn::open(verve.addr).get(&target).status,
            200
        );
    };
    callback(1);
    assert!(
        verve
            .wait_for_callback_log("status=200", Duration::from_secs(10))
            .is_some()
    );
    verve.wait_for_reports(1, Duration::from_secs(10));
    let rotated_stats = verve.dir.path().join("stats.log.1");
    let rotated_callbacks = verve.dir.path().join("callbacks.log.1");
    std::fs::rename(verve.stats_path(), &rotated_stats).unwrap();
    std::fs::rename(verve.callback_log_path(), &rotated_callbacks).unwrap();
    verve.signal(libc::SIGHUP);
    assert!(
        verve
            .wait_for_log(
                "stats log and callback log reopened",
                Duration::from_secs(5)
            )
            .is_some()
    );
    // The reports from before the rotation stay in the moved file; the new file gets the next.
    let after = verve.wait_for_reports(1, Duration::from_secs(10));
    let before = std::fs::read_to_string(&rotated_stats).unwrap();
    assert!(before.contains("window_start="), "{before}");
    let first_after = format!("window_start={} ", after[0].window_start);
    assert!(!before.contains(&first_after), "{before}");
    callback(2);
    assert!(
        verve
            .wait_for_callback_log("status=200", Duration::from_secs(10))
            .is_some()
    );
    assert!(
        std::fs::read_to_string(&rotated_stats)
            .unwrap()
            .contains("window_start=")
    );
    assert!(
        std::fs::read_to_string(&rotated_callbacks)
            .unwrap()
            .contains("status=200")
    );
}
