//! The hyper-on-tokio baseline answers like verve and counts with the same library code, so
//! that the benchmark compares runtimes, not features.

use std::time::Duration;

use crate::common::{Conn, Verve};

#[test]
fn the_baseline_answers_the_same_surface_and_counts_the_same() {
    let verve = Verve::options()
        .baseline()
        .workers(2)
        .window_secs(3600)
        .start();
    assert!(
        verve
            .wait_for_log("(tokio)", Duration::from_secs(5))
            .is_some()
    );
    let mut c = Conn::open(verve.addr);
    let mut batch = Vec::new();
    for id in [1, 2, 1, 3] {
        batch.extend_from_slice(
            format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    batch.extend_from_slice(b"GET /api/verve/accept?id=x HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend_from_slice(b"DELETE /api/verve/accept?id=4 HTTP/1.1\r\nHost: t\r\n\r\n");
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&batch);
    let answers: Vec<(u16, String)> = (0..7)
        .map(|_| {
            let a = c.read_answer(false).unwrap();
            (a.status, a.body_str().to_owned())
        })
        .collect();
    let expected = [
        (200, "ok"),
        (200, "ok"),
        (200, "ok"),
        (200, "ok"),
        (400, "failed"),
        (405, "method not allowed"),
        (404, "not found"),
    ];
    assert_eq!(answers, expected.map(|(s, b)| (s, b.to_owned())));
    let health = c.get("/healthz");
    assert_eq!(
        (health.body_str(), health.header("cache-control")),
        ("ok", Some("no-store"))
    );
    let (status, reports) = verve.terminate(Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(reports.iter().map(|r| r.unique_requests).sum::<u64>(), 3);
    assert!(reports.last().unwrap().partial);
}
