//! The recorder's Redis path end to end: random new ids recorded into the replicator and
//! pushed by the Redis thread until Redis has confirmed every one, into a real local
//! redis-server and a real local Redis Cluster of three masters (no replicas), each started
//! here on run-time ports. Prints ids/s, and Redis's CPU and memory per id (from `INFO cpu`
//! and `INFO memory`, summed over the nodes).
//!
//!   cargo bench --bench `redis_push`            5 rounds of 2,000,000 ids per target
//!   cargo test --benches (scripts/test.sh)    one small round, as a smoke test

// The test helpers that start real redis-servers and clusters.
// The tests' real Redis server and cluster; the bench uses only those of the helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::redis_cluster::RedisCluster;
use common::{RedisServer, redis_cli};
use verve::clock::Clock;
use verve::id_set::IdSet;
use verve::metrics::Metrics;
use verve::recorder::distributed::{RedisHealth, RedisLink, RedisSettings, Replicator, Topology};
use verve::window::WindowClock;

/// The sum of the named fields of an `INFO` section of a node.
fn info_sum(port: u16, section: &str, fields: &[&str]) -> f64 {
    let info = redis_cli(port, &["info", section]).expect("INFO");
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            fields.contains(&k).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// CPU seconds the nodes have used, user and system.
fn redis_cpu(ports: &[u16]) -> f64 {
    ports
        .iter()
        .map(|&p| info_sum(p, "cpu", &["used_cpu_sys", "used_cpu_user"]))
        .sum()
}

/// Bytes the nodes hold.
fn redis_memory(ports: &[u16]) -> f64 {
    ports
        .iter()
        .map(|&p| info_sum(p, "memory", &["used_memory"]))
        .sum()
}

struct Round {
    ids_per_sec: f64,
    redis_cpu_us_per_id: f64,
    redis_bytes_per_id: f64,
}

fn push_rounds(
    topology: Topology,
    shards: u32,
    ports: &[u16],
    rounds: usize,
    ids: usize,
) -> Vec<Round> {
    let health = Arc::new(RedisHealth::new(Clock::system()));
    let clock = WindowClock::new(3600);
    let settings = RedisSettings {
        topology,
        process: "bench".into(),
        shards,
        key_ttl: Duration::from_mins(10),
        heartbeat_ttl: Duration::from_secs(3),
        amend_horizon: Duration::from_mins(1),
        claims_return_wait: Duration::from_mins(2),
    };
    let link = RedisLink::start(
        settings,
        clock,
        Arc::clone(&health),
        Arc::new(Metrics::new(1)),
        None,
    )
    .expect("the Redis thread");
    let mut replicator = Replicator::new(link, Duration::from_mins(1));
    let mut open: BTreeMap<u64, IdSet> = BTreeMap::new();
    let mut ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !health.is_up() {
        assert!(Instant::now() < deadline, "redis did not answer");
        replicator.step(&open, &mut ready);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..rounds)
        .map(|round| {
            // A fresh window each round keeps the sets at the size of one round.
            let window = clock.window_of(SystemTime::now()) + round as u64;
            let ids_of_round = open.entry(window).or_default();
            let (cpu_before, memory_before) = (redis_cpu(ports), redis_memory(ports));
            let started = Instant::now();
            for _ in 0..ids {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let id = state as i64;
                if ids_of_round.insert(id) {
                    replicator.record(window, id);
                }
            }
            while replicator.unconfirmed_ids() > 0 {
                replicator.step(&open, &mut ready);
                std::thread::sleep(Duration::from_micros(100));
            }
            let took = started.elapsed().as_secs_f64();
            let cpu = redis_cpu(ports) - cpu_before;
            let memory = redis_memory(ports) - memory_before;
            open.remove(&window);
            Round {
                ids_per_sec: ids as f64 / took,
                redis_cpu_us_per_id: cpu * 1e6 / ids as f64,
                redis_bytes_per_id: memory / ids as f64,
            }
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, ids) = if full { (5, 2_000_000) } else { (1, 20_000) };
    let single = RedisServer::start();
    let cluster = RedisCluster::start_with(3, 0);
    let cluster_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let targets = [
        (
            "1 node, 1 shard",
            Topology::single(&single.url()).unwrap(),
            1,
            vec![single.port],
        ),
        (
            "1 node, 64 shards",
            Topology::single(&single.url()).unwrap(),
            64,
            vec![single.port],
        ),
        (
            "3 masters, 64 shards",
            Topology::cluster(&[format!("redis://127.0.0.1:{}", cluster_ports[0])]).unwrap(),
            64,
            cluster_ports.clone(),
        ),
    ];
    println!(
        "| target | ids/s (median of {rounds}) | Redis CPU µs/id | Redis bytes/id | rounds ids/s |"
    );
    println!("|---|---|---|---|---|");
    for (name, topology, shards, ports) in targets {
        let results = push_rounds(topology, shards, &ports, rounds, ids);
        let all: Vec<String> = results
            .iter()
            .map(|r| format!("{:.0}", r.ids_per_sec))
            .collect();
        println!(
            "| {name} | {:.0} | {:.3} | {:.1} | {} |",
            median(results.iter().map(|r| r.ids_per_sec).collect()),
            median(results.iter().map(|r| r.redis_cpu_us_per_id).collect()),
            median(results.iter().map(|r| r.redis_bytes_per_id).collect()),
            all.join(", ")
        );
    }
}
