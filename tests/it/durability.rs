//! Durable acknowledgements: every id answered `ok` is in its window's report, across a
//! SIGKILL and a restart, a torn segment, a full disk; and `--durability host` answers only
//! once the log is on disk.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use verve::config::{DriverChoice, Durability};
use verve::wal::record;

use crate::common::redis_cluster::redis_cli;
use crate::common::{
    Conn, RedisServer, Report, Tmpfs, Verve, metric, reports_of, scrape, sleep_until_next_window,
    window_of,
};

const WAIT: Duration = Duration::from_secs(20);

/// Sends `ids` pipelined, `per_write` requests a write, and returns those answered `ok`;
/// every other answer must be `503 failed`.
fn send(verve: &Verve, ids: impl IntoIterator<Item = i64>, per_write: usize) -> BTreeSet<i64> {
    let mut conn = Conn::open(verve.addr);
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut ok = BTreeSet::new();
    for chunk in ids.chunks(per_write) {
        let mut batch = Vec::new();
        for id in chunk {
            batch.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        conn.send(&batch);
        for &id in chunk {
            let answer = conn.read_answer(false).expect("an answer");
            match (answer.status, answer.body_str()) {
                (200, "ok") => {
                    ok.insert(id);
                }
                (503, "failed") => {}
                other => panic!("id {id}: {other:?}"),
            }
        }
    }
    ok
}

/// The reports of window `w` (of `secs`), waiting for the first, then a moment for a second.
fn reports_of_window(verve: &Verve, w: u64, secs: u64) -> Vec<Report> {
    reports_of(&[verve], w, secs, WAIT)
}

/// The RFC 3339 start of window `w` of `secs`, as verve names it in Redis.
fn window_start(w: u64, secs: u64) -> String {
    humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(w * secs)).to_string()
}

fn assert_still_in(w: u64, secs: u64) {
    assert_eq!(
        window_of(SystemTime::now(), secs),
        w,
        "the test's steps took longer than its window"
    );
}

#[test]
fn ids_answered_ok_survive_a_sigkill_and_the_window_reports_them_all_once() {
    const SECS: u64 = 6;
    let options = Verve::options()
        .workers(2)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300));
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = options.start();
    let before = send(&verve, 0..1000, 50);
    assert_eq!(before.len(), 1000);
    let verve = verve.kill().restart();
    let after = send(&verve, 1000..1010, 10);
    assert_eq!(after.len(), 10);
    assert_still_in(w, SECS);

    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(
        (report.unique_requests, report.partial, report.recovered),
        (1010, false, false),
        "{report:?}"
    );
    assert!(
        verve
            .wait_for_log("wal: read back 1000 logged ids of 1 windows", WAIT)
            .is_some()
    );
}

#[test]
fn a_window_that_closed_while_verve_was_down_is_reported_at_start_once_marked_recovered() {
    const SECS: u64 = 2;
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .window_secs(SECS)
        .report_grace(Duration::from_millis(200))
        .start();
    let ok = send(&verve, (0..600).map(|i| i * 7 - 2000), 40);
    assert_eq!(ok.len(), 600);
    let killed = verve.kill();
    sleep_until_next_window(SECS, Duration::from_millis(500));
    let started = Instant::now();
    let verve = killed.restart();

    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (reports[0].unique_requests, reports[0].recovered),
        (600, true),
        "{reports:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "not at start");
    // Its segments go once it is reported: a later start reports it no more.
    let wal = verve.dir.path().join("wal");
    let left: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(&format!("{w}-")))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    let verve = verve.kill().restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(reports_of_window(&verve, w, SECS).len(), 1);
}

#[test]
fn a_segment_torn_in_the_middle_of_a_record_keeps_every_whole_record_before_it() {
    const SECS: u64 = 6;
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .workers(1)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300))
        .start();
    let ok = send(&verve, 0..300, 30);
    assert_eq!(ok.len(), 300);
    let killed = verve.kill();

    // The first half of one more record of three ids: as if the process died mid-copy, or
    // the disk kept part of a page.
    let segment = std::fs::read_dir(killed.wal_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{w}-"))
        })
        .expect("the window's segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = record::decode(&bytes).unwrap();
    assert_eq!(whole.ids.len(), 300);
    let mut torn = vec![0; record::record_len(3)];
    record::encode(&[7001, 7002, 7003], &mut torn);
    let cut = 2 + torn.len() / 2;
    bytes[whole.good_len..whole.good_len + cut].copy_from_slice(&torn[..cut]);
    std::fs::write(&segment, &bytes).unwrap();

    let verve = killed.restart();
    let line = verve
        .wait_for_log("torn or corrupt tail", WAIT)
        .expect("a line about the cut");
    assert!(line.contains(&segment.display().to_string()), "{line}");
    assert!(line.contains(&format!("cut {cut} bytes")), "{line}");
    assert_eq!(
        metric(&scrape(verve.addr), "verve_wal_torn_bytes_total"),
        cut as u64
    );
    assert_still_in(w, SECS);
    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].unique_requests, 300, "{reports:?}");
}

#[test]
fn a_full_disk_answers_503_and_readyz_says_so_until_space_returns_and_loses_nothing() {
    const SECS: u64 = 12;
    let disk = Tmpfs::mount(192);
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .workers(1)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300))
        .wal_dir(disk.path())
        .start();

    // A segment starts at 128 KiB and doubles: the second allocation does not fit.
    let mut ok = BTreeSet::new();
    let mut next = 0;
    while ok.len() == next as usize {
        assert!(next < 100_000, "the disk never filled");
        ok.extend(send(&verve, next..next + 500, 50));
        next += 500;
    }
    let mut conn = Conn::open(verve.addr);
    let ready = conn.get("/readyz");
    assert_eq!(
        (ready.status, ready.body_str()),
        (503, "not ready: write-ahead log not writable")
    );
    assert!(metric(&scrape(verve.addr), "verve_wal_errors_total") > 0);
    // Ids answered ok before the disk filled still get ok: they need no room.
    let again: Vec<i64> = ok.iter().copied().take(100).collect();
    assert_eq!(send(&verve, again, 50).len(), 100);

    disk.resize(8192);
    let more = send(&verve, next..next + 1000, 50);
    assert_eq!(more.len(), 1000, "space returned");
    ok.extend(more);
    assert_eq!(conn.get("/readyz").status, 200);

    let verve = verve.kill().restart();
    assert_still_in(w, SECS);
    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].unique_requests, ok.len() as u64, "{reports:?}");
}

/// One request's round trip to a verve whose every `fdatasync` strace holds for 1.5 s (the
/// epoll driver syncs with the system call; `io_uring` would sync without one).
fn answer_time_with_slow_syncs(durability: Durability) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.out");
    let verve = Verve::options()
        .under(&[
            "strace",
            "-f",
            "-o",
            trace.to_str().unwrap(),
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_enter=1500000",
        ])
        .workers(1)
        .driver(DriverChoice::Epoll)
        .durability(durability)
        .wal_fsync(Duration::from_hours(1))
        .start();
    let mut conn = Conn::open(verve.addr);
    let started = Instant::now();
    let answer = conn.get("/api/verve/accept?id=42");
    assert_eq!((answer.status, answer.body_str()), (200, "ok"));
    started.elapsed()
}

#[test]
fn host_durability_answers_only_once_the_log_is_synced() {
    let host = answer_time_with_slow_syncs(Durability::Host);
    assert!(host >= Duration::from_millis(1500), "answered in {host:?}");
    // The same verve in process mode answers before any sync.
    let process = answer_time_with_slow_syncs(Durability::Process);
    assert!(process < Duration::from_secs(1), "answered in {process:?}");
}

/// Ids a load thread sent: answered `ok`, and sent without an answer (the instance died).
#[derive(Default)]
struct Sent {
    ok: BTreeSet<i64>,
    unanswered: BTreeSet<i64>,
}

/// Pipelined load of fresh ids (`base` + n, 64 a write) on `addr` until `stop`; a connection
/// that dies ends it.
fn load_until(addr: std::net::SocketAddr, base: i64, stop: &AtomicBool) -> Sent {
    let mut sent = Sent::default();
    let Ok(mut conn) = Conn::try_open(addr) else {
        return sent;
    };
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<i64> = (next..next + 64).collect();
        next += 64;
        let mut batch = Vec::new();
        for id in &ids {
            batch.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        if conn.try_send(&batch).is_err() {
            sent.unanswered.extend(ids);
            break;
        }
        for (at, &id) in ids.iter().enumerate() {
            let Ok(answer) = conn.read_answer(false) else {
                sent.unanswered.extend(&ids[at..]);
                return sent;
            };
            assert_eq!((answer.status, answer.body_str()), (200, "ok"));
            sent.ok.insert(id);
        }
    }
    sent
}

/// Load on `addr` from another thread until the returned flag is set.
fn load(addr: std::net::SocketAddr, base: i64) -> (Arc<AtomicBool>, thread::JoinHandle<Sent>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    (stop, thread::spawn(move || load_until(addr, base, &flag)))
}

#[test]
fn a_distributed_instance_killed_under_load_pushes_every_id_it_answered_after_its_restart() {
    const SECS: u64 = 8;
    let redis = RedisServer::start();
    let options = |name: &str| {
        Verve::options()
            .workers(1)
            .window_secs(SECS)
            .report_grace(Duration::from_millis(500))
            .redis_heartbeat(Duration::from_secs(1))
            .instance_id(name)
            .redis(&redis)
    };
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let a = options("a").start();
    let b = options("b").start();
    let (stop_a, load_a) = load(a.addr, 1_000_000_000);
    let (stop_b, load_b) = load(b.addr, 2_000_000_000);
    thread::sleep(Duration::from_millis(700));
    // Redis stops answering (a partition without a reset): what a answers now is only in its
    // memory and its log when it is killed.
    redis.pause();
    thread::sleep(Duration::from_millis(500));
    let killed = a.kill();
    redis.resume();
    stop_a.store(true, Ordering::Relaxed);
    let mut sent = load_a.join().unwrap();
    let a = killed.restart();
    let (stop_again, load_again) = load(a.addr, 3_000_000_000);
    thread::sleep(Duration::from_millis(500));
    for stop in [&stop_again, &stop_b] {
        stop.store(true, Ordering::Relaxed);
    }
    for more in [load_again.join().unwrap(), load_b.join().unwrap()] {
        sent.ok.extend(more.ok);
        sent.unanswered.extend(more.unanswered);
    }
    assert_still_in(w, SECS);
    assert!(sent.ok.len() > 1000, "only {} ids answered", sent.ok.len());

    // By id: every id answered ok reaches the window's set in Redis (read before the report,
    // which removes it), and nothing that was not sent.
    let key = format!("verve:w:{}", window_start(w, SECS));
    let members = || -> BTreeSet<i64> {
        redis_cli(redis.port, &["smembers", &key])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut held = members();
    while !sent.ok.is_subset(&held) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        held = members();
    }
    let lost: Vec<&i64> = sent.ok.difference(&held).collect();
    assert!(
        lost.is_empty(),
        "{} answered ok and not in Redis: {lost:?}",
        lost.len()
    );
    let extra: Vec<&i64> = held
        .iter()
        .filter(|id| !sent.ok.contains(id) && !sent.unanswered.contains(id))
        .collect();
    assert!(extra.is_empty(), "in Redis and never sent: {extra:?}");

    let reports = reports_of(&[&a, &b], w, SECS, WAIT);
    let distributed: Vec<&Report> = reports.iter().filter(|r| r.mode == "distributed").collect();
    assert_eq!(distributed.len(), 1, "{reports:?}");
    assert_eq!(
        distributed[0].unique_requests,
        held.len() as u64,
        "{reports:?}"
    );
}
