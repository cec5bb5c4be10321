//! SIGTERM in the middle of a load: the service stops accepting, finishes what is in flight,
//! and the final (partial) report counts every id answered `ok`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::common::{CallbackPeer, Conn, PeerBehaviour, Verve, percent_encode};

#[test]
fn sigterm_under_load_reports_every_id_answered_ok() {
    // One long window, so that every id of the run belongs to the window cut short.
    let verve = Verve::options().workers(2).window_secs(86400).start();
    let started = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            let addr = verve.addr;
            let started = Arc::clone(&started);
            thread::spawn(move || {
                let mut ok = HashSet::new();
                let mut conn = Conn::open(addr);
                for n in 0u64.. {
                    let id = (n * 8 + i) as i64;
                    conn.send(
                        format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n")
                            .as_bytes(),
                    );
                    match conn.read_answer(false) {
                        Ok(a) if a.status == 200 => {
                            ok.insert(id);
                            started.store(true, Ordering::Relaxed);
                        }
                        // Draining: refused, and not counted.
                        Ok(a) => assert_eq!((a.status, a.body_str()), (503, "failed")),
                        Err(_) => break, // closed by the shutdown
                    }
                }
                ok
            })
        })
        .collect();
    while !started.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(700));
    let (status, reports) = verve.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let mut answered_ok = HashSet::new();
    for c in clients {
        answered_ok.extend(c.join().unwrap());
    }
    assert!(
        answered_ok.len() > 1000,
        "load too small: {}",
        answered_ok.len()
    );
    let last = reports.last().expect("a final report");
    assert!(last.partial, "{reports:?}");
    let counted: u64 = reports.iter().map(|r| r.unique_requests).sum();
    assert_eq!(counted, answered_ok.len() as u64, "{reports:?}");
}

fn accept_with_endpoint(conn: &mut Conn, id: u32, peer: &CallbackPeer) {
    let endpoint = percent_encode(&peer.url("/hook"));
    let answer = conn.get(&format!("/api/verve/accept?id={id}&endpoint={endpoint}"));
    assert_eq!(answer.status, 200);
}

#[test]
fn queued_callbacks_are_sent_before_exit() {
    let peer = CallbackPeer::start(PeerBehaviour::Slow(Duration::from_millis(200)));
    let verve = Verve::options()
        .callback_allow_private()
        .callback_threads(1)
        .start();
    let mut conn = Conn::open(verve.addr);
    for id in 0..5 {
        accept_with_endpoint(&mut conn, id, &peer);
    }
    let (status, _) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
    assert_eq!(peer.wait_for(5, Duration::ZERO).len(), 5);
}

#[test]
fn a_hung_callback_peer_delays_exit_only_until_the_shutdown_timeout() {
    let peer = CallbackPeer::start(PeerBehaviour::Hang);
    let verve = Verve::options()
        .callback_allow_private()
        .callback_threads(1)
        .callback_timeout(Duration::from_mins(10))
        .shutdown_timeout(Duration::from_secs(1))
        .start();
    let mut conn = Conn::open(verve.addr);
    for id in 0..3 {
        accept_with_endpoint(&mut conn, id, &peer);
    }
    peer.wait_for(1, Duration::from_secs(10));
    drop(conn);
    let started = std::time::Instant::now();
    let (status, reports) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reports.iter().map(|r| r.unique_requests).sum::<u64>(), 3);
}
