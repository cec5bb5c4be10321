//! Exactness: every window's report equals the distinct ids answered `ok` in it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{Conn, Verve, WindowedIds, send_ids, sleep_until_next_window};

const WINDOW_SECS: u64 = 2;
const CONNECTIONS: usize = 16;
const PIPELINE: usize = 32;
const ACTIVE_WINDOWS: u64 = 3;
const MARGIN: Duration = Duration::from_millis(150);

fn client(
    addr: std::net::SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
) -> WindowedIds {
    let mut conn = Conn::open(addr);
    let mut seen = WindowedIds::default();
    let mut state = seed | 1;
    while !stop.load(Ordering::Relaxed) {
        if pause.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        // xorshift: ids drawn from a small range repeat across connections and workers
        let ids: Vec<i64> = (0..PIPELINE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 30_000) as i64 - 15_000
            })
            .collect();
        send_ids(&mut conn, &ids, WINDOW_SECS, &mut seen);
    }
    seen
}

#[test]
fn every_window_reports_exactly_the_distinct_ids_answered_ok() {
    let verve = Verve::start(&[
        "--workers",
        "2",
        "--window-secs",
        "2",
        "--report-grace-ms",
        "500",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(true));
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (stop, pause) = (Arc::clone(&stop), Arc::clone(&pause));
            let addr = verve.addr;
            thread::spawn(move || client(addr, 0x9E37_79B9 * (i as u64 + 1), stop, pause))
        })
        .collect();
    // Load during the middle of each active window, so that nearly every batch falls
    // clearly inside one window.
    for _ in 0..ACTIVE_WINDOWS {
        pause.store(false, Ordering::Relaxed);
        thread::sleep(Duration::from_secs(WINDOW_SECS) - 2 * MARGIN);
        pause.store(true, Ordering::Relaxed);
        sleep_until_next_window(WINDOW_SECS, MARGIN);
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = WindowedIds::default();
    for c in clients {
        seen.merge(c.join().unwrap());
    }
    let requests = seen.requests;
    assert!(requests >= 100_000, "only {requests} requests");
    eprintln!(
        "{requests} requests; ambiguous batches in windows {:?}",
        seen.ambiguous.keys()
    );
    let idle = first + ACTIVE_WINDOWS;
    // The idle window (no requests at all) must be reported too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reports = loop {
        let reports = verve.reports();
        if reports.iter().any(|r| r.start_secs() == idle * WINDOW_SECS)
            || std::time::Instant::now() > deadline
        {
            break reports;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let count_of = |w: u64| {
        let matching: Vec<_> = reports
            .iter()
            .filter(|r| r.start_secs() == w * WINDOW_SECS)
            .collect();
        assert_eq!(matching.len(), 1, "window {w}: {reports:?}");
        assert!(!matching[0].partial);
        assert_eq!(matching[0].mode, "standalone");
        matching[0].unique_requests
    };
    for w in first..first + ACTIVE_WINDOWS {
        seen.assert_count(w, count_of(w));
        let sure = seen.sure.get(&w).map_or(0, |ids| ids.len());
        assert!(sure > 1000, "window {w} had too little traffic");
    }
    assert_eq!(count_of(idle), 0);
    let (status, _) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
}
