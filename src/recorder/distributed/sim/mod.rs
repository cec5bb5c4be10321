//! The distributed protocol's deterministic simulation: several instances (the real recorder,
//! replicator, Redis thread and write-ahead log of each) against simulated Redis servers, on
//! one thread, on a clock that moves only when the simulation does, with requests, ticks,
//! replies and faults interleaved by a seeded generator. A failing seed replays exactly:
//! `scripts/simulate.sh --seed S --seconds 0`.
//!
//! Why not a simulation framework: madsim and turmoil simulate a tokio program's network and
//! time, but verve's recorder is a std thread and its Redis thread needs a simulated Redis
//! anyway; stateright checks models, not the code that runs. Here the real code runs, with
//! only the Redis connections (redis-rs's `ConnectionLike`) and the clock (`Clock`) swapped.

mod bench;
mod check;
mod connection;
mod fidelity;
mod instance;
mod keyspace;
mod recorder_rows;
mod servers;
mod transitions;
mod world;

use std::time::{Duration, Instant};

use world::{Scenario, play};

/// Seeds that find a defect put back (`scripts/sim-mutants.sh`; the README's table, "The
/// defects put back"), each checked to find it with its patch: they run with every
/// `cargo test`.
const REGRESSION_SEEDS: &[u64] = &[
    1, 2, 8, 9, 19, 27, 40, 75, 107, 292, 311, 478, 1275, 1717, 1785,
];

/// Runs one seed; what the checker found, or a panic that names the seed and the faults.
fn run_seed(seed: u64) -> check::Verdict {
    let scenario = Scenario::of(seed);
    let run = play(scenario);
    let verdict = check::check(&run);
    let faults: Vec<String> = run.faults.iter().map(ToString::to_string).collect();
    assert!(
        verdict.wrong.is_empty(),
        "seed {seed} ({scenario:?}) failed:\n{}\nfaults:\n{}\nreplay: scripts/simulate.sh \
         --seed {seed} --seconds 0 --log",
        verdict.wrong.join("\n"),
        faults.join("\n")
    );
    verdict
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Log lines carry the simulated time, not the host's, and the process that logs them.
fn log_simulated_time() {
    let _ = env_logger::builder()
        .is_test(true)
        .format(|f, record| {
            use std::io::Write;
            let at = world::SIMULATED_MILLIS.load(std::sync::atomic::Ordering::Relaxed);
            let running = instance::RUNNING.try_with(Clone::clone).unwrap_or_default();
            let (s, ms) = (at / 1000, at % 1000);
            writeln!(f, "[{s}.{ms:03}] {running} {}", record.args())
        })
        .try_init();
}

/// The same seed, the same run: every report, every fault, at the same simulated instant.
#[test]
fn a_seed_replays_exactly() {
    let trace = |run: &world::Run| {
        let faults: Vec<String> = run.faults.iter().map(ToString::to_string).collect();
        format!("{} {:?} {faults:?}", run.steps, run.reports)
    };
    let first = play(Scenario::of(5));
    assert!(!first.faults.is_empty() && !first.reports.is_empty());
    assert_eq!(trace(&first), trace(&play(Scenario::of(5))));
}

#[test]
fn the_seeds_that_found_defects_find_none() {
    log_simulated_time();
    for &seed in REGRESSION_SEEDS {
        run_seed(seed);
    }
}

/// Seeds from `VERVE_SIM_SEED` (1) on, until `VERVE_SIM_SECONDS` (60) have passed:
/// `scripts/simulate.sh`, which `scripts/test.sh` runs for a minute.
#[test]
#[ignore = "a budget of seconds: scripts/simulate.sh"]
fn simulate() {
    log_simulated_time();
    let budget = Duration::from_secs(env_or("VERVE_SIM_SECONDS", 60));
    let first = env_or("VERVE_SIM_SEED", 1);
    let started = Instant::now();
    let (mut seeds, mut steps, mut windows, mut admitted) = (0, 0, 0, 0);
    while seeds == 0 || started.elapsed() < budget {
        let seed = first + seeds;
        let verdict = std::panic::catch_unwind(|| run_seed(seed)).unwrap_or_else(|failure| {
            // How long finding it took: scripts/sim-mutants.sh reads this line.
            println!(
                "seed {seed} failed, {} seeds and {:.1} s into the run",
                seeds + 1,
                started.elapsed().as_secs_f64()
            );
            std::panic::resume_unwind(failure)
        });
        seeds += 1;
        steps += verdict.steps;
        windows += verdict.windows;
        admitted += verdict.admitted.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "simulated seeds {first} to {}: {steps} steps ({:.0} per second), {windows} windows \
         checked ({admitted} admitted, each explained by the faults applied), in {secs:.1} s",
        first + seeds - 1,
        steps as f64 / secs
    );
}
