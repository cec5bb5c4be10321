//! The container files, without a Docker engine (none runs here): verve under the seccomp
//! profile of `scripts/container/`, applied through libseccomp as Docker applies it
//! (`tests/seccomp/run-under-profile.py`), and the cluster of `docker-compose.yaml` as local
//! processes: two verve instances with `cluster.env`, a real redis-server, a Kafka-protocol
//! broker and `HAProxy` with `haproxy.cfg`, on ports chosen at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use verve::config::DriverChoice;

use crate::common::{
    Conn, Killable, RedisServer, TansuBroker, Verve, VerveOptions, WindowedIds, free_port,
    kafka_records, metric, scrape, send_ids, sleep_until_next_window, wait_for_port,
};

const PROFILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/scripts/container/seccomp-io_uring.json"
);
const RUN_UNDER_PROFILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/seccomp/run-under-profile.py"
);
/// Leaving these out of the profile gives the policy of Docker's own default profile.
const IO_URING_CALLS: &str = "io_uring_setup,io_uring_enter,io_uring_register";
const WAIT: Duration = Duration::from_secs(20);

/// Serves a few requests, then stops on SIGTERM and reports exactly what it counted.
fn assert_serves_counts_and_stops(verve: Verve, driver: &str) {
    let mut c = Conn::open(verve.addr);
    for id in [1, 2, 2, 3] {
        let a = c.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((a.status, a.body_str()), (200, "ok"));
    }
    let series = format!("verve_io_driver{{driver=\"{driver}\"}}");
    assert_eq!(metric(&scrape(verve.addr), &series), 1);
    let (status, reports) = verve.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert_eq!(reports.iter().map(|r| r.unique_requests).sum::<u64>(), 3);
}

#[test]
fn the_seccomp_profile_lets_verve_run_on_io_uring() {
    let verve = Verve::options()
        .under(&[RUN_UNDER_PROFILE, PROFILE, "--"])
        .driver(DriverChoice::Uring)
        .workers(2)
        .window_secs(3600)
        .start();
    assert!(verve.wait_for_log("(io_uring)", WAIT).is_some());
    assert_serves_counts_and_stops(verve, "io_uring");
}

/// verve under the profile without the `io_uring` calls, as Docker's default policy runs it.
fn under_default_docker_policy() -> VerveOptions {
    Verve::options().under(&[
        RUN_UNDER_PROFILE,
        PROFILE,
        "--without",
        IO_URING_CALLS,
        "--",
    ])
}

#[test]
fn under_dockers_default_policy_auto_falls_back_to_epoll_and_says_why() {
    let verve = under_default_docker_policy()
        .workers(2)
        .window_secs(3600)
        .start();
    let line = verve
        .wait_for_log("io_uring is not available", WAIT)
        .expect("a line saying why io_uring is not used");
    assert!(line.contains("using epoll"), "{line}");
    assert!(verve.wait_for_log("(epoll)", WAIT).is_some());
    assert_serves_counts_and_stops(verve, "epoll");
}

#[test]
fn under_dockers_default_policy_driver_uring_stops_start_up_naming_it() {
    let (code, stderr) = under_default_docker_policy()
        .driver(DriverChoice::Uring)
        .start_refused();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--driver uring: io_uring is not available"),
        "{stderr}"
    );
}

/// `scripts/container/cluster.env` with the compose services' addresses replaced by local
/// ones; every service it names must be replaced.
/// The per-client limit docker-compose.yaml gives the load balancer (requests per second).
fn compose_rate_limit() -> u32 {
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yaml"))
            .unwrap();
    compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("VERVE_LB_RATE_LIMIT:"))
        .expect("docker-compose.yaml sets VERVE_LB_RATE_LIMIT")
        .trim()
        .parse()
        .unwrap()
}

fn cluster_env(redis: &RedisServer, broker: &TansuBroker) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/container/cluster.env"
    ))
    .unwrap();
    let services = [
        ("redis:6379", format!("127.0.0.1:{}", redis.port)),
        ("kafka:9092", broker.bootstrap()),
    ];
    for (service, _) in &services {
        assert!(
            text.contains(service),
            "cluster.env does not name {service}"
        );
    }
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l.split_once('=').expect("KEY=value");
            let value = services
                .iter()
                .fold(value.to_owned(), |v, (service, local)| {
                    v.replace(service, local)
                });
            (key.to_owned(), value)
        })
        .collect()
}

/// `HAProxy` with `scripts/container/haproxy.cfg` in front of two instances, limiting each
/// client address to `rate_limit` requests per second as docker-compose.yaml does.
fn load_balancer(backends: [SocketAddr; 2], rate_limit: u32) -> (Killable, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let process = Killable::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/container/haproxy.cfg"
            ))
            .env("VERVE_LB_LISTEN", listen.to_string())
            .env("VERVE_1", backends[0].to_string())
            .env("VERVE_2", backends[1].to_string())
            .env("VERVE_LB_RATE_LIMIT", rate_limit.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "haproxy (scripts/test.sh installs it)",
    );
    wait_for_port(listen.port(), "haproxy");
    (process, listen)
}

fn wait_until_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while Conn::open(addr).get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "{addr} did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn accepted_ok(addr: SocketAddr) -> u64 {
    metric(
        &scrape(addr),
        r#"verve_requests_total{route="accept",status="200"}"#,
    )
}

#[test]
fn the_compose_cluster_counts_each_id_once_through_the_load_balancer() {
    const WINDOW_SECS: u64 = 2;
    const TOPIC: &str = "verve-unique-counts";
    let redis = RedisServer::start();
    let broker = TansuBroker::start_memory();
    let env = cluster_env(&redis, &broker);
    let instances = ["verve-1", "verve-2"].map(|name| {
        let options = Verve::options()
            .workers(1)
            .window_secs(2)
            .report_grace(Duration::from_millis(500))
            .redis_heartbeat(Duration::from_secs(1));
        env.iter()
            .fold(options, |options, (k, v)| options.env(k, v))
            .env("VERVE_INSTANCE_ID", name)
            .start()
    });
    for verve in &instances {
        wait_until_ready(verve.addr);
    }
    let (_haproxy, lb) =
        load_balancer([instances[0].addr, instances[1].addr], compose_rate_limit());

    // Three windows of ids through the load balancer on two connections: ids repeat within a
    // window, across the connections (so across instances) and across windows.
    let mut conns = [Conn::open(lb), Conn::open(lb)];
    let mut seen = WindowedIds::default();
    let mut loaded = Vec::new();
    for round in 0..3i64 {
        loaded.push(sleep_until_next_window(
            WINDOW_SECS,
            Duration::from_millis(200),
        ));
        for (i, conn) in conns.iter_mut().enumerate() {
            let ids: Vec<i64> = (0..300)
                .map(|k| (round * 100 + k + i as i64 * 50) % 500)
                .collect();
            send_ids(conn, &ids, WINDOW_SECS, &mut seen);
        }
    }
    assert!(
        seen.ambiguous.is_empty(),
        "a batch crossed a window boundary"
    );

    // Both instances served, and every request was answered by one of them.
    let served = instances.each_ref().map(|v| accepted_ok(v.addr));
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
    assert_eq!(served.iter().sum::<u64>(), seen.requests as u64);

    // One record per window, from whichever instance reported it, with the exact count.
    let last = *loaded.last().unwrap();
    let deadline = Instant::now() + WAIT;
    let reports = loop {
        let reports: Vec<_> = instances
            .iter()
            .flat_map(crate::common::Verve::reports)
            .collect();
        if reports.iter().any(|r| r.start_secs() / WINDOW_SECS == last) {
            break reports;
        }
        assert!(Instant::now() < deadline, "no report of window {last}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let records = kafka_records(&broker.bootstrap(), TOPIC, reports.len(), WAIT);
    let mut by_window: BTreeMap<u64, Vec<&serde_json::Value>> = BTreeMap::new();
    for (_, value) in &records {
        let start = humantime::parse_rfc3339(value["window_start"].as_str().unwrap()).unwrap();
        let secs = start.duration_since(UNIX_EPOCH).unwrap().as_secs();
        by_window.entry(secs / WINDOW_SECS).or_default().push(value);
    }
    for (window, values) in &by_window {
        assert_eq!(values.len(), 1, "window {window}: {values:?}");
        assert_eq!(values[0]["mode"], "distributed", "{values:?}");
    }
    for w in loaded {
        let record = by_window
            .get(&w)
            .unwrap_or_else(|| panic!("no record of window {w}"));
        seen.assert_count(w, record[0]["unique_requests"].as_u64().unwrap());
    }
}

#[test]
fn the_load_balancer_answers_429_to_a_client_over_its_rate_and_serves_the_others() {
    const LIMIT: u32 = 50;
    let instances = [Verve::start(), Verve::start()];
    let (_haproxy, lb) = load_balancer([instances[0].addr, instances[1].addr], LIMIT);
    let run = Duration::from_secs(3);
    // One client as fast as it can, another at a fifth of the limit, from two addresses.
    let greedy = std::thread::spawn(move || {
        let mut conn = Conn::open_from([127, 0, 0, 2].into(), lb);
        let (mut ok, mut limited) = (0u32, 0u32);
        let end = Instant::now() + run;
        let mut id = 0;
        while Instant::now() < end {
            id += 1;
            let answer = conn.get(&format!("/api/verve/accept?id={id}"));
            match answer.status {
                200 => ok += 1,
                429 => {
                    assert_eq!(answer.body_str(), "too many requests");
                    assert_eq!(answer.header("retry-after"), Some("1"));
                    limited += 1;
                }
                other => panic!("greedy client: {other}"),
            }
        }
        (ok, limited)
    });
    let mut calm = Conn::open_from([127, 0, 0, 3].into(), lb);
    let mut calm_statuses = Vec::new();
    let end = Instant::now() + run;
    let mut id = 1_000_000;
    while Instant::now() < end {
        id += 1;
        calm_statuses.push(calm.get(&format!("/api/verve/accept?id={id}")).status);
        std::thread::sleep(Duration::from_secs(1) / (LIMIT / 5));
    }
    let (ok, limited) = greedy.join().unwrap();
    assert!(calm_statuses.len() >= 20, "{calm_statuses:?}");
    assert!(
        calm_statuses.iter().all(|&s| s == 200),
        "the calm client was limited: {calm_statuses:?}"
    );
    // The greedy client's first requests pass, then the rest of the run is over the limit.
    assert!((1..=LIMIT * 4).contains(&ok), "{ok} ok, {limited} limited");
    assert!(limited > 10 * ok, "{ok} ok, {limited} limited");
}
