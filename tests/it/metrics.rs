//! `/metrics` after a known load: request, status and callback counts.

use std::time::{Duration, Instant};

use crate::common::{
    CallbackPeer, Conn, PeerBehaviour, Verve, exchange_until_close, metric, percent_encode, scrape,
};

#[test]
fn a_scrape_counts_requests_statuses_and_callbacks() {
    let ok_peer = CallbackPeer::start(PeerBehaviour::Status(204));
    let failing_peer = CallbackPeer::start(PeerBehaviour::Status(500));
    let verve = Verve::options()
        .workers(2)
        .callback_allow_private()
        .window_secs(3600)
        .start();
    let mut c = Conn::open(verve.addr);
    for id in [1, 2, 2, 3, 3] {
        assert_eq!(c.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    for target in ["/api/verve/accept?id=x", "/api/verve/accept"] {
        assert_eq!(c.get(target).status, 400);
    }
    assert_eq!(c.get("/nope").status, 404);
    c.send(b"POST /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read_answer(false).unwrap().status, 405);
    assert_eq!(c.get("/healthz").status, 200);
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    assert!(exchange_until_close(verve.addr, &long).starts_with(b"HTTP/1.1 414"));
    for (peer, id) in [(&ok_peer, 10), (&ok_peer, 11), (&failing_peer, 12)] {
        let endpoint = percent_encode(&peer.url("/hook"));
        assert_eq!(
            c.get(&format!("/api/verve/accept?id={id}&endpoint={endpoint}"))
                .status,
            200
        );
    }
    ok_peer.wait_for(2, Duration::from_secs(10));
    failing_peer.wait_for(1, Duration::from_secs(10));

    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = scrape(verve.addr);
        // The peer sees a callback before verve has read its answer: wait for the counts.
        let done = scrape.contains(r#"verve_callbacks_total{outcome="5xx"} 1"#)
            && scrape.contains(r#"verve_callbacks_total{outcome="2xx"} 2"#);
        if done || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (series, expected) in [
        (r#"verve_requests_total{route="accept",status="200"}"#, 8),
        (r#"verve_requests_total{route="accept",status="400"}"#, 2),
        (r#"verve_requests_total{route="accept",status="405"}"#, 1),
        (r#"verve_requests_total{route="other",status="404"}"#, 1),
        (r#"verve_requests_total{route="other",status="414"}"#, 1),
        (r#"verve_requests_total{route="healthz",status="200"}"#, 1),
        ("verve_window_distinct_ids", 6),
        // 1, 2 and 3 once each, and the three callbacks.
        ("verve_ids_forwarded_total", 6),
        (r#"verve_callbacks_total{outcome="2xx"}"#, 2),
        (r#"verve_callbacks_total{outcome="5xx"}"#, 1),
        (r#"verve_callbacks_total{outcome="dropped"}"#, 0),
    ] {
        assert_eq!(metric(&scrape, series), expected, "{series}");
    }
    // The default driver is io_uring where the kernel allows it, else epoll: the metric names
    // the one the start-up line names.
    let listening = verve
        .wait_for_log("listening on", Duration::from_secs(5))
        .unwrap();
    let driver = if listening.contains("(io_uring)") {
        "io_uring"
    } else {
        "epoll"
    };
    let series = format!(r#"verve_io_driver{{driver="{driver}"}}"#);
    assert_eq!(metric(&scrape, &series), 1, "{listening}\n{scrape}");
    assert!(scrape.contains("verve_build_info{version="), "{scrape}");
}

#[test]
fn a_scrape_says_readiness_the_last_report_and_the_bounds_the_alerts_compare_with() {
    // Redis on a port nothing listens on: not ready, yet answering and counting.
    let unreachable = format!("redis://127.0.0.1:{}", crate::common::free_port());
    let verve = Verve::options()
        .window_secs(1)
        .report_grace(Duration::from_millis(300))
        .report_max_delay(Duration::from_secs(1))
        .redis_url(&unreachable)
        .start();
    assert_eq!(
        Conn::open(verve.addr).get("/api/verve/accept?id=7").status,
        200
    );
    // Past the delay the window is reported, as degraded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = scrape(verve.addr);
        if metric(&scrape, "verve_last_report_window_end_seconds") > 0 || Instant::now() > deadline
        {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&scrape, "verve_ready"), 0, "{scrape}");
    assert_eq!(metric(&scrape, "verve_window_seconds"), 1);
    // The grace and the delay.
    assert!(
        scrape.contains("\nverve_report_deadline_seconds 1.3\n"),
        "{scrape}"
    );
    assert_eq!(metric(&scrape, "verve_ingest_queue_capacity_batches"), 4096);
    assert_eq!(metric(&scrape, "verve_callback_queue_capacity_jobs"), 10000);
    let reported = metric(&scrape, "verve_last_report_window_end_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reported <= now && reported + 5 >= now,
        "{reported} vs {now}"
    );
    assert!(metric(&scrape, r#"verve_reports_total{mode="degraded"}"#) >= 1);
    assert_eq!(
        metric(&crate::common::scrape(Verve::start().addr), "verve_ready"),
        1
    );
}
