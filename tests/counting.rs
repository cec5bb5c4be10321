//! Exactness: every window's report equals the distinct ids answered `ok` in it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use common::{Conn, Verve, sleep_until_next_window, window_of};

const WINDOW_SECS: u64 = 2;
const CONNECTIONS: usize = 16;
const PIPELINE: usize = 32;
const ACTIVE_WINDOWS: u64 = 3;
const MARGIN: Duration = Duration::from_millis(150);

/// What one client saw: ids answered `ok` per window. A batch whose round trip crossed a
/// window boundary could have landed in either window; its ids are kept apart.
#[derive(Default)]
struct Seen {
    by_window: BTreeMap<u64, HashSet<i64>>,
    ambiguous: BTreeMap<u64, HashSet<i64>>,
    requests: usize,
}

fn client(
    addr: std::net::SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
) -> Seen {
    let mut conn = Conn::open(addr);
    let mut seen = Seen::default();
    let mut state = seed | 1;
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if pause.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        batch.clear();
        let mut ids = Vec::with_capacity(PIPELINE);
        for _ in 0..PIPELINE {
            // xorshift: ids drawn from a small range repeat across connections and workers
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let id = (state % 30_000) as i64 - 15_000;
            ids.push(id);
            batch.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\n\r\n").as_bytes(),
            );
        }
        let sent = SystemTime::now();
        conn.send(&batch);
        let answers: Vec<u16> = (0..PIPELINE)
            .map(|_| conn.read_answer(false).expect("answer").status)
            .collect();
        let received = SystemTime::now();
        assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
        seen.requests += PIPELINE;
        let (w0, w1) = (
            window_of(sent, WINDOW_SECS),
            window_of(received, WINDOW_SECS),
        );
        if w0 == w1 {
            seen.by_window.entry(w0).or_default().extend(&ids);
        } else {
            for w in [w0, w1] {
                seen.ambiguous.entry(w).or_default().extend(&ids);
            }
        }
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
    let mut expected: BTreeMap<u64, HashSet<i64>> = BTreeMap::new();
    let mut ambiguous: BTreeMap<u64, HashSet<i64>> = BTreeMap::new();
    let mut requests = 0;
    for c in clients {
        let seen = c.join().unwrap();
        requests += seen.requests;
        for (w, ids) in seen.by_window {
            expected.entry(w).or_default().extend(ids);
        }
        for (w, ids) in seen.ambiguous {
            ambiguous.entry(w).or_default().extend(ids);
        }
    }
    assert!(requests >= 100_000, "only {requests} requests");
    eprintln!(
        "{requests} requests; ambiguous batches in windows {:?}",
        ambiguous.keys()
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
        let sure = expected.get(&w).cloned().unwrap_or_default();
        let maybe = ambiguous.get(&w).cloned().unwrap_or_default();
        let count = count_of(w);
        if maybe.is_empty() {
            assert_eq!(count, sure.len() as u64, "window {w}");
        } else {
            let upper = sure.union(&maybe).count() as u64;
            assert!(
                (sure.len() as u64..=upper).contains(&count),
                "window {w}: {count}"
            );
        }
        assert!(sure.len() > 1000, "window {w} had too little traffic");
    }
    assert_eq!(count_of(idle), 0);
    let (status, _) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
}
