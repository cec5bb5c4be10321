//! Exactness: every window's report equals the distinct ids answered `ok` in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::common::{Conn, Verve, WindowedIds, send_ids, sleep_until_next_window};

const WINDOW_SECS: u64 = 2;
const CONNECTIONS: usize = 16;
const PIPELINE: usize = 32;
const ACTIVE_WINDOWS: u64 = 3;
const MARGIN: Duration = Duration::from_millis(150);
const WAIT: Duration = Duration::from_secs(20);

fn client(
    addr: std::net::SocketAddr,
    seed: u64,
    stop: &AtomicBool,
    pause: &AtomicBool,
) -> WindowedIds {
    let mut conn = Conn::open(addr);
    let mut answered = WindowedIds::default();
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
        send_ids(&mut conn, &ids, WINDOW_SECS, &mut answered);
    }
    answered
}

#[test]
fn every_window_reports_exactly_the_distinct_ids_answered_ok() {
    let verve = Verve::options()
        .workers(2)
        .window_secs(2)
        .report_grace(Duration::from_millis(500))
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(true));
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (stop, pause) = (Arc::clone(&stop), Arc::clone(&pause));
            let addr = verve.addr;
            thread::spawn(move || client(addr, 0x9E37_79B9 * (i as u64 + 1), &stop, &pause))
        })
        .collect();
    // Load during the middle of each active window, so that nearly every batch falls
    // clearly inside one window.
    for _ in 0..ACTIVE_WINDOWS {
        pause.store(false, Ordering::Relaxed);
        thread::sleep(
            Duration::from_secs(WINDOW_SECS)
                .checked_sub(2 * MARGIN)
                .unwrap(),
        );
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
        let sure = seen.sure.get(&w).map_or(0, std::collections::HashSet::len);
        assert!(sure > 1000, "window {w} had too little traffic");
    }
    assert_eq!(count_of(idle), 0);
    let (status, _) = verve.terminate(Duration::from_secs(20));
    assert!(status.success());
}

/// `--max-window-ids 1000`, 1500 distinct ids over four connections (spread over both
/// workers): between 1000 and 1000 + a batch per worker are answered `ok`, the rest `503
/// failed`; an id answered `ok` still gets `ok`, on either worker; the report equals the ids
/// answered `ok`; `/readyz` stays ready; `/metrics` and the log say what was refused.
#[test]
fn past_max_window_ids_new_ids_get_503_and_the_report_counts_the_ok_ones() {
    const WINDOW: u64 = 5;
    const WORKERS: u16 = 2;
    let verve = Verve::options()
        .workers(WORKERS)
        .window_secs(5)
        .report_grace(Duration::from_millis(300))
        .max_window_ids(1000)
        .start();
    let window = sleep_until_next_window(WINDOW, MARGIN);
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(verve.addr)).collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for id in 0..1_500i64 {
        let conn = &mut conns[id as usize % 4];
        let answer = conn.get(&format!("/api/verve/accept?id={id}"));
        match (answer.status, answer.body_str()) {
            (200, "ok") => ok.push(id),
            (503, "failed") => refused += 1,
            other => panic!("id {id}: {other:?}"),
        }
    }
    // Each on fresh connections, which land on either worker: an id counted by the other
    // worker is found in the recorder's set.
    for &id in ok.iter().step_by(ok.len() / 20) {
        for _ in 0..4 {
            let answer = Conn::open(verve.addr).get(&format!("/api/verve/accept?id={id}"));
            assert_eq!((answer.status, answer.body_str()), (200, "ok"), "id {id}");
        }
    }
    let ready = conns[0].get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(
        crate::common::window_of(std::time::SystemTime::now(), WINDOW),
        window
    );
    // The README's bound: N + 512 × (workers − 1).
    let batches_of_the_other_workers = 512 * usize::from(WORKERS - 1);
    assert!(
        (1_000..=1_000 + batches_of_the_other_workers).contains(&ok.len()),
        "{} answered ok",
        ok.len()
    );
    assert_eq!(ok.len() + refused, 1_500);
    let metrics = crate::common::scrape(verve.addr);
    assert_eq!(
        crate::common::metric(&metrics, "verve_window_ids_refused_total"),
        refused as u64
    );
    assert!(
        verve
            .wait_for_log("holds --max-window-ids 1000 ids: new ids get 503", WAIT)
            .is_some()
    );
    let deadline = std::time::Instant::now() + WAIT;
    let report = loop {
        let reports = verve.reports();
        if let Some(r) = reports.iter().find(|r| r.start_secs() == window * WINDOW) {
            break r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no report of the window: {reports:?}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(report.unique_requests, ok.len() as u64);
}
