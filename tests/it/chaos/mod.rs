//! The chaos harness (`scripts/chaos.sh`): three verve instances, a Redis (one server, or a
//! cluster of three masters and three replicas, or none: standalone) and a tansu broker, load with known ids, a
//! seeded schedule of faults (`schedule`) applied to the real parts (`system`), the ids of
//! every window read from Redis as the run goes (`members`), then a check of every window's
//! reports, Kafka records and ids in Redis against what each request was answered (`check`,
//! whose self-test plants defects in a run: `check_planted`). The same seed replays the
//! same faults at the same offsets and the same ids.

mod check;
mod check_planted;
mod load;
mod members;
pub(crate) mod schedule;
mod system;

use std::fmt::Write;
use std::thread;
use std::time::{Duration, SystemTime};

use check::{Run, check, check_callbacks, table};
use load::Load;
use schedule::{RedisMode, schedule};
use system::{GRACE, MAX_DELAY, System, TOPIC, WINDOW_SECS};

use crate::common::{kafka_records, value_name, window_of};
use clap::ValueEnum;
use verve::config::Durability;

const INSTANCES: usize = 3;

/// The short schedule `scripts/test.sh` runs: each run covers every fault kind of its mode.
/// Seeds that found a defect stay here as regression cases.
const SHORT: &[(RedisMode, u64)] = &[
    (RedisMode::Single, 1),
    (RedisMode::Cluster, 2),
    (RedisMode::Standalone, 3),
];
const SHORT_SPAN: Duration = Duration::from_secs(50);

#[test]
#[ignore = "scripts/chaos.sh runs it (scripts/test.sh runs the short schedule)"]
fn short_schedule() {
    for &(mode, seed) in SHORT {
        run(seed, mode, Durability::Process, SHORT_SPAN);
    }
}

#[test]
#[ignore = "scripts/chaos.sh runs it, with CHAOS_MODE, CHAOS_DURABILITY, CHAOS_SEED and CHAOS_SECS"]
fn schedule_from_env() {
    let var = |name: &str| std::env::var(name).ok();
    let mode = match var("CHAOS_MODE").as_deref() {
        None | Some("single") => RedisMode::Single,
        Some("cluster") => RedisMode::Cluster,
        Some("standalone") => RedisMode::Standalone,
        Some(other) => panic!("CHAOS_MODE: {other} is not single, cluster or standalone"),
    };
    let durability = var("CHAOS_DURABILITY").map_or(Durability::Process, |d| {
        Durability::from_str(&d, false).expect("CHAOS_DURABILITY: process, host or off")
    });
    let seed = var("CHAOS_SEED").map_or_else(
        || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        },
        |s| s.parse().expect("CHAOS_SEED: a number"),
    );
    let secs = var("CHAOS_SECS").map_or(SHORT_SPAN.as_secs(), |s| {
        s.parse().expect("CHAOS_SECS: a number")
    });
    run(seed, mode, durability, Duration::from_secs(secs));
}

fn run(seed: u64, mode: RedisMode, durability: Durability, span: Duration) {
    let durability_name = value_name(&durability);
    let name = format!("{}-{durability_name}-{seed}", mode.label());
    let chaos = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    std::fs::create_dir_all(&chaos).unwrap();
    // Two runs of one seed, mode and durability would share the directory, and so the
    // instances' write-ahead logs: the second refuses (held until this run ends).
    let lock = std::fs::File::create(chaos.join(format!("{name}.lock"))).unwrap();
    assert!(
        lock.try_lock().is_ok(),
        "another chaos run of seed {seed}, {} mode, --durability {durability_name} is running \
         in {}: wait for it to end",
        mode.label(),
        chaos.join(&name).display()
    );
    let out = chaos.join(&name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    eprintln!(
        "chaos: seed {seed}, {} mode, --durability {durability_name}, {} s of load; replay: \
         scripts/chaos.sh --mode {} --durability {durability_name} --seed {seed} --secs {}; \
         kept in {}",
        mode.label(),
        span.as_secs(),
        mode.label(),
        span.as_secs(),
        out.display()
    );
    let faults = schedule(seed, mode, INSTANCES, span);
    let mut system = System::start(mode, durability, INSTANCES, &out);
    let members = members::Members::start(system.redis_ports());
    let load = Load::start(seed, system.targets(), &system.peer.url("/callback"));
    let start = SystemTime::now();
    let applied = system.run_schedule(start, &faults);
    if let Ok(left) = (start + span).duration_since(SystemTime::now()) {
        thread::sleep(left);
    }
    let batches = load.finish();
    let windows = window_of(start, WINDOW_SECS) + 1..=window_of(SystemTime::now(), WINDOW_SECS) - 1;

    // Every window loaded is reported by now, or never will be.
    let last_end = SystemTime::UNIX_EPOCH + Duration::from_secs((windows.end() + 1) * WINDOW_SECS);
    let deadline = last_end + GRACE + MAX_DELAY + Duration::from_secs(15);
    while SystemTime::now() < deadline {
        let reported: std::collections::HashSet<u64> = system
            .reports_so_far()
            .iter()
            .map(|r| r.start_secs() / WINDOW_SECS)
            .collect();
        if windows.clone().all(|w| reported.contains(&w)) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    // A moment more, for a second report of a window.
    thread::sleep(Duration::from_secs(2));
    let in_redis = members.finish();
    system.stop_all();
    let written = system.reports_so_far().len();
    let kafka: Vec<serde_json::Value> = kafka_records(
        &system.broker_bootstrap(),
        TOPIC,
        written,
        Duration::from_mins(1),
    )
    .into_iter()
    .map(|(_, value)| value)
    .collect();
    let run = Run {
        batches: &batches,
        incarnations: &system.incarnations,
        applied: &applied,
        kafka: &kafka,
        windows,
        durability,
        standalone: mode == RedisMode::Standalone,
        in_redis: &in_redis,
    };
    let (tally, mut defects) = check(&run);
    let callbacks = check_callbacks(&run, system.peer.received().len(), &mut defects);
    let table = table(
        seed,
        &format!("{}, --durability {durability_name}", mode.label()),
        span,
        &applied,
        (&tally, &callbacks),
    );
    let mut faults_applied = String::new();
    for a in &applied {
        let _ = writeln!(
            faults_applied,
            "{} {} instance {} for {} ms {}",
            humantime::format_rfc3339_millis(a.began),
            a.kind.label(),
            a.instance,
            a.ended
                .duration_since(a.began)
                .unwrap_or_default()
                .as_millis(),
            a.detail
        );
    }
    std::fs::write(out.join("table.md"), &table).unwrap();
    std::fs::write(out.join("faults.txt"), faults_applied).unwrap();
    std::fs::write(out.join("defects.txt"), defects.join("\n")).unwrap();
    println!("{table}");
    assert!(
        defects.is_empty(),
        "seed {seed}, {} mode: {} defects:\n{}",
        mode.label(),
        defects.len(),
        defects.join("\n")
    );
}
