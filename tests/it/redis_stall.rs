//! A Redis that stops answering without closing its connections (SIGSTOP: what a network
//! partition without a reset looks like) while every request carries a new id: verve answers
//! every request `ok`, and once Redis answers again each window's report is exactly the ids
//! answered `ok` in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::common::{Conn, RedisServer, Verve, WindowedIds, send_ids, sleep_until_next_window};

/// Connections sending new ids, each in pipelined batches, until `stop`; every answer must be
/// `200 ok` (`send_ids` asserts it).
fn load(
    v: &Verve,
    window_secs: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<WindowedIds>> {
    (0..2i64)
        .map(|c| {
            let (addr, stop) = (v.addr, Arc::clone(stop));
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut seen = WindowedIds::default();
                let mut next = (c + 1) * 1_000_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<i64> = (next..next + 32).collect();
                    next += 32;
                    send_ids(&mut conn, &ids, window_secs, &mut seen);
                }
                seen
            })
        })
        .collect()
}

fn a_stall_refuses_nothing_and_loses_nothing(stall: Duration, window_secs: u64) {
    let redis = RedisServer::start();
    let v = Verve::options()
        .workers(1)
        .window_secs(window_secs)
        .report_grace(Duration::from_millis(500))
        .redis_heartbeat(Duration::from_secs(1))
        .redis(&redis)
        .start();
    assert!(
        v.wait_for_log("redis: connected", Duration::from_secs(10))
            .is_some()
    );
    sleep_until_next_window(window_secs, Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(&v, window_secs, &stop);
    thread::sleep(Duration::from_secs(1));
    redis.pause();
    thread::sleep(stall);
    redis.resume();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut seen = WindowedIds::default();
    for t in threads {
        seen.merge(t.join().expect("every request answered ok"));
    }
    let windows: Vec<u64> = seen
        .sure
        .keys()
        .chain(seen.ambiguous.keys())
        .copied()
        .collect();
    let (first, last) = (windows[0], *windows.iter().max().unwrap());
    assert!(seen.requests > 1000, "{} requests", seen.requests);
    for w in first..=last {
        let reports = crate::common::reports_of(&[&v], w, window_secs, Duration::from_secs(30));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        assert_eq!(reports[0].mode, "distributed", "window {w}");
        seen.assert_count(w, reports[0].unique_requests);
    }
    // Zero counters are not listed: no 503 at all.
    let scrape = crate::common::scrape(v.addr);
    assert!(!scrape.contains("status=\"503\""), "{scrape}");
    assert_eq!(
        crate::common::metric(
            &scrape,
            "verve_requests_total{route=\"accept\",status=\"200\"}"
        ),
        seen.requests as u64
    );
}

#[test]
fn redis_stopped_for_4_seconds_refuses_nothing_and_loses_nothing() {
    a_stall_refuses_nothing_and_loses_nothing(Duration::from_secs(4), 10);
}

#[test]
fn redis_stopped_for_30_seconds_refuses_nothing_and_loses_nothing() {
    a_stall_refuses_nothing_and_loses_nothing(Duration::from_secs(30), 5);
}
