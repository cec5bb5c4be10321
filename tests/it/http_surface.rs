//! Every row of the design's HTTP surface table, against the real binary, with raw bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use verve::config::DriverChoice;

use crate::common::{Conn, Verve, exchange_until_close};

const WAIT: Duration = Duration::from_secs(20);

fn status_and_body(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[test]
fn accept_answers_ok_and_bad_input_gets_400_failed_and_counts_nothing() {
    let verve = Verve::options().window_secs(3600).start();
    let mut c = Conn::open(verve.addr);
    let ok = c.get("/api/verve/accept?id=42");
    assert_eq!((ok.status, ok.body_str()), (200, "ok"));
    assert_eq!(ok.header("content-type"), Some("text/plain"));
    let long_endpoint = format!(
        "/api/verve/accept?id=7&endpoint=http://example.com/{}",
        "a".repeat(2048)
    );
    for target in [
        "/api/verve/accept",
        "/api/verve/accept?id=",
        "/api/verve/accept?id=abc",
        "/api/verve/accept?id=1.5",
        "/api/verve/accept?id=9223372036854775808",
        "/api/verve/accept?id=1&id=2",
        "/api/verve/accept?id=3&endpoint=/relative",
        "/api/verve/accept?id=4&endpoint=ftp://example.com/",
        "/api/verve/accept?id=5&endpoint=http://a.example&endpoint=http://b.example",
        long_endpoint.as_str(),
    ] {
        let a = c.get(target);
        assert_eq!((a.status, a.body_str()), (400, "failed"), "{target}");
    }
    // Percent-decoding and `+`: `%2D7` is -7, `i%64` is `id`.
    assert_eq!(c.get("/api/verve/accept?i%64=%2D7&x=a+b").status, 200);
    let (status, reports) = verve.terminate(WAIT);
    assert!(status.success());
    let total: u64 = reports.iter().map(|r| r.unique_requests).sum();
    assert_eq!(total, 2, "only 42 and -7 were answered ok: {reports:?}");
}

#[test]
fn methods_paths_and_probes() {
    let verve = Verve::start();
    let mut c = Conn::open(verve.addr);
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        c.send(
            format!(
                "{method} /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        );
        let a = c.read_answer(false).unwrap();
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(c.get("/nowhere").status, 404);
    assert_eq!(c.get("/api/verve/accepted?id=1").status, 404);
    let health = c.get("/healthz");
    assert_eq!((health.status, health.body_str()), (200, "ok"));
    assert_eq!(c.get("/readyz").status, 200);
    c.send(b"HEAD /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_answer(true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("2"));
    // The HEAD answer had no body: the next answer follows directly.
    assert_eq!(c.get("/healthz").status, 200);
}

/// A cache in front (a CDN, Varnish) may store a `200` it was not told about: a repeat of
/// an accept request answered by it would never be counted in a later window.
#[test]
fn every_answer_forbids_caches_to_store_it() {
    let verve = Verve::options().workers(1).max_connections(1).start();
    let mut c = Conn::open(verve.addr);
    for target in [
        "/api/verve/accept?id=1",
        "/api/verve/accept?id=x",
        "/healthz",
        "/readyz",
        "/metrics",
        "/nowhere",
    ] {
        let a = c.get(target);
        assert_eq!(a.header("cache-control"), Some("no-store"), "{target}");
    }
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nDELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    for head_only in [true, false] {
        let a = c.read_answer(head_only).unwrap();
        assert_eq!(a.header("cache-control"), Some("no-store"), "{}", a.status);
    }
    // Over --max-connections: the 503 written before any request is read.
    let over = Conn::open(verve.addr).get("/healthz");
    assert_eq!(
        (over.status, over.header("cache-control")),
        (503, Some("no-store"))
    );
    drop(c);
    // A refused head: 400, then close.
    let other = Verve::start();
    let raw = exchange_until_close(other.addr, b"GET zz HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\r\nCache-Control: no-store\r\n"), "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let verve = Verve::start();
    let mut c = Conn::open(verve.addr);
    let mut batch = Vec::new();
    let targets = [
        "/api/verve/accept?id=1",
        "/api/verve/accept?id=bad",
        "/missing",
        "/api/verve/accept?id=2",
        "/healthz",
    ];
    for _ in 0..20 {
        for t in targets {
            batch.extend_from_slice(format!("GET {t} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
    }
    c.send(&batch);
    for _ in 0..20 {
        let statuses: Vec<u16> = (0..targets.len())
            .map(|_| c.read_answer(false).unwrap().status)
            .collect();
        assert_eq!(statuses, [200, 400, 404, 200, 200]);
    }
}

#[test]
fn http10_connection_close_and_keep_alive() {
    let verve = Verve::start();
    let raw = exchange_until_close(verve.addr, b"GET /api/verve/accept?id=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status_and_body(&raw), (200, "ok".to_owned()));

    let mut c = Conn::open(verve.addr);
    c.send(b"GET /api/verve/accept?id=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let a = c.read_answer(false).unwrap();
    assert_eq!(a.header("connection"), Some("keep-alive"));
    c.send(b"GET /api/verve/accept?id=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_answer(false).unwrap().status, 200);

    let mut c = Conn::open(verve.addr);
    c.send(b"GET /api/verve/accept?id=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let a = c.read_answer(false).unwrap();
    assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    assert!(c.is_closed_by_server());

    let mut c = Conn::open(verve.addr);
    for id in 0..50 {
        assert_eq!(c.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
}

#[test]
fn oversized_heads_get_431_or_414_then_close() {
    let verve = Verve::start();
    let mut long_header = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\nX-Pad: ".to_vec();
    long_header.extend(std::iter::repeat_n(b'a', 9000));
    long_header.extend_from_slice(b"\r\n\r\n");
    let raw = exchange_until_close(verve.addr, &long_header);
    assert_eq!(status_and_body(&raw).0, 431);

    let mut long_target = b"GET /api/verve/accept?id=1&pad=".to_vec();
    long_target.extend(std::iter::repeat_n(b'a', 9000));
    long_target.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
    let raw = exchange_until_close(verve.addr, &long_target);
    assert_eq!(status_and_body(&raw).0, 414);

    let raw = exchange_until_close(verve.addr, b"\x16\x03\x01garbage\r\n\r\n");
    assert_eq!(status_and_body(&raw), (400, "failed".to_owned()));
}

#[test]
fn idle_and_dribbling_connections_are_closed() {
    let verve = Verve::options()
        .idle_timeout(Duration::from_millis(400))
        .head_timeout(Duration::from_millis(600))
        .start();
    let mut idle = Conn::open(verve.addr);
    let started = Instant::now();
    assert!(idle.is_closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(5));

    // One byte every 100 ms: each read is within the idle timeout, the head is not.
    let mut slow = TcpStream::connect(verve.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\nX-Slow: yes\r\n\r\n" {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let mut rest = [0u8; 1024];
    assert!(
        closed || crate::common::closed(slow.read(&mut rest)),
        "dribbled head not closed"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A client that pipelines steadily, each write ending inside the next request, is never
/// closed by the head timeout: each request is timed from its own first byte.
#[test]
fn the_head_timeout_times_each_request_not_the_connection() {
    let verve = Verve::options()
        .head_timeout(Duration::from_secs(1))
        .start();
    let request = b"GET /api/verve/accept?id=7 HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut c = Conn::open(verve.addr);
    c.send(&request[..10]);
    let started = Instant::now();
    let mut answers = 0;
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(200));
        // The rest of the last request, a whole one, the first bytes of the next.
        let mut write = request[10..].to_vec();
        write.extend_from_slice(request);
        write.extend_from_slice(&request[..10]);
        c.send(&write);
        for _ in 0..2 {
            let a = c.read_answer(false).expect("answered, not closed");
            assert_eq!(a.status, 200);
            answers += 1;
        }
    }
    assert!(started.elapsed() > Duration::from_millis(2400));
    assert_eq!(answers, 24);
}

#[test]
fn many_connections_at_once() {
    let verve = Verve::start();
    let addr = verve.addr;
    let clients: Vec<_> = (0..400)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Conn::open(addr);
                (0..5)
                    .map(|j| c.get(&format!("/api/verve/accept?id={}", i * 5 + j)).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), [200; 5]);
    }
    let (status, reports) = verve.terminate(WAIT);
    assert!(status.success());
    assert_eq!(reports.iter().map(|r| r.unique_requests).sum::<u64>(), 2000);
}

#[test]
fn connections_over_the_cap_get_503() {
    let verve = Verve::options().workers(2).max_connections(2).start();
    // Two workers hold at most two connections each: of ten held open, six or more are
    // refused whichever worker they land on.
    let mut held: Vec<Conn> = (0..10).map(|_| Conn::open(verve.addr)).collect();
    let mut statuses = Vec::new();
    for c in &mut held {
        let a = c.get("/healthz");
        if a.status == 503 {
            assert_eq!(a.body_str(), "failed");
        }
        statuses.push(a.status);
    }
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(refused + served, 10, "{statuses:?}");
    assert!(served <= 4 && refused >= 6, "{statuses:?}");
}

#[test]
fn the_epoll_driver_serves_the_same_surface_and_shuts_down_cleanly() {
    let verve = Verve::options()
        .driver(DriverChoice::Epoll)
        .workers(2)
        .start();
    assert!(verve.wait_for_log("(epoll)", WAIT).is_some());
    let mut c = Conn::open(verve.addr);
    let mut batch = Vec::new();
    for id in 0..100 {
        batch.extend_from_slice(
            format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    c.send(&batch);
    for _ in 0..100 {
        assert_eq!(c.read_answer(false).unwrap().body_str(), "ok");
    }
    assert_eq!(c.get("/api/verve/accept?id=x").status, 400);
    let mut idle = Conn::open(verve.addr);
    assert_eq!(idle.get("/healthz").status, 200);
    // Open keep-alive connections do not hold up the shutdown.
    let (status, reports) = verve.terminate(Duration::from_secs(5));
    assert!(status.success());
    assert_eq!(reports.iter().map(|r| r.unique_requests).sum::<u64>(), 100);
    assert!(reports.last().unwrap().partial);
    assert!(idle.is_closed_by_server());
}

#[test]
fn the_uring_driver_is_used_when_asked_or_start_up_says_it_is_not_available() {
    if verve::worker::probe_uring().is_err() {
        let (code, stderr) = Verve::options().driver(DriverChoice::Uring).start_refused();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("--driver uring: io_uring is not available"),
            "{stderr}"
        );
        return;
    }
    let verve = Verve::options().driver(DriverChoice::Uring).start();
    assert!(verve.wait_for_log("(io_uring)", WAIT).is_some());
    assert_eq!(
        Conn::open(verve.addr).get("/api/verve/accept?id=1").status,
        200
    );
}
