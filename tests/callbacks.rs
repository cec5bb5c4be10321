//! Callbacks against a real HTTP peer: counts, methods, logged status codes, the address
//! policy, and a peer that never answers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{CallbackPeer, Conn, PeerBehaviour, Verve, percent_encode};

const WAIT: Duration = Duration::from_secs(20);

/// Sends ids 1, 2, 2, 3 with an endpoint naming the request, and returns the count each
/// request's callback carried, by request number.
fn counts_for_1_2_2_3(
    verve: &Verve,
    peer: &CallbackPeer,
    count_of: fn(&common::Received) -> u64,
) -> BTreeMap<u32, u64> {
    let mut c = Conn::open(verve.addr);
    for (n, id) in [1, 2, 2, 3].into_iter().enumerate() {
        let endpoint = peer.url(&format!("/hook?req={n}"));
        let target = format!(
            "/api/verve/accept?id={id}&endpoint={}",
            percent_encode(&endpoint)
        );
        assert_eq!(c.get(&target).status, 200);
    }
    peer.wait_for(4, WAIT)
        .iter()
        .map(|r| {
            let req = r.target.split("req=").nth(1).unwrap()[..1].parse().unwrap();
            (req, count_of(r))
        })
        .collect()
}

#[test]
fn post_callbacks_carry_the_count_so_far_as_json() {
    let peer = CallbackPeer::start(PeerBehaviour::Status(200));
    let verve = Verve::start(&["--callback-allow-private", "--window-secs", "3600"]);
    let counts = counts_for_1_2_2_3(&verve, &peer, |r| {
        assert_eq!(r.method, "POST");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["window_secs"], 3600);
        assert!(
            body["window_start"].as_str().unwrap().ends_with(":00:00Z"),
            "{body}"
        );
        body["count"].as_u64().unwrap()
    });
    assert_eq!(counts, BTreeMap::from([(0, 1), (1, 2), (2, 2), (3, 3)]));
    // Each outcome goes to the callback log, not to stderr.
    let line = verve
        .wait_for_callback_log("count=3 status=200", WAIT)
        .unwrap();
    assert!(line.contains(" INFO callback http://127.0.0.1:"), "{line}");
    assert!(
        !verve.log_lines().iter().any(|l| l.contains("status=")),
        "{:?}",
        verve.log_lines()
    );
}

#[test]
fn get_callbacks_add_count_to_the_query_and_log_the_status() {
    let peer = CallbackPeer::start(PeerBehaviour::Status(500));
    let verve = Verve::start(&[
        "--callback-allow-private",
        "--callback-method",
        "get",
        "--window-secs",
        "3600",
    ]);
    let counts = counts_for_1_2_2_3(&verve, &peer, |r| {
        assert_eq!(r.method, "GET");
        r.target.split("count=").nth(1).unwrap().parse().unwrap()
    });
    assert_eq!(counts, BTreeMap::from([(0, 1), (1, 2), (2, 2), (3, 3)]));
    assert!(verve.wait_for_callback_log("status=500", WAIT).is_some());
}

#[test]
fn refused_targets_are_never_contacted() {
    let peer = CallbackPeer::start(PeerBehaviour::Status(200));
    let verve = Verve::start(&[]);
    let mut c = Conn::open(verve.addr);
    let endpoint = percent_encode(&peer.url("/hook"));
    assert_eq!(
        c.get(&format!("/api/verve/accept?id=1&endpoint={endpoint}"))
            .status,
        200
    );
    let line = verve
        .wait_for_callback_log("refused", WAIT)
        .expect("a refusal in the log");
    assert!(line.contains("127.0.0.1"), "{line}");
    // Link-local (cloud metadata) stays refused even when private ranges are allowed.
    let open = Verve::start(&["--callback-allow-private"]);
    let mut c = Conn::open(open.addr);
    let metadata = percent_encode("http://169.254.169.254/latest/meta-data/");
    assert_eq!(
        c.get(&format!("/api/verve/accept?id=1&endpoint={metadata}"))
            .status,
        200
    );
    assert!(
        open.wait_for_callback_log("169.254.169.254 not allowed", WAIT)
            .is_some()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peer.connections(), 0);
}

#[test]
fn a_peer_that_never_answers_slows_nothing_and_memory_stays_bounded() {
    let peer = CallbackPeer::start(PeerBehaviour::Hang);
    let verve = Verve::start(&[
        "--callback-allow-private",
        "--callback-threads",
        "2",
        "--callback-queue",
        "100",
        "--callback-timeout-ms",
        "60000",
    ]);
    let endpoint = percent_encode(&peer.url("/hook"));
    let mut c = Conn::open(verve.addr);
    let target = |id: u32| format!("/api/verve/accept?id={id}&endpoint={endpoint}");
    for id in 0..2_000 {
        assert_eq!(c.get(&target(id)).status, 200);
    }
    let rss_before = verve.rss_kib();
    for id in 2_000..40_000 {
        assert_eq!(c.get(&target(id)).status, 200);
    }
    let rss_after = verve.rss_kib();
    assert!(
        verve
            .wait_for_log("callback queue full: dropped", WAIT)
            .is_some()
    );
    // The queue holds 100 jobs and two are in flight; everything else is shed.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(peer.connections(), 2);
}
