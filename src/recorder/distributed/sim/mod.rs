//! The distributed protocol's deterministic simulation: several instances (the real recorder,
//! replicator, Redis thread and write-ahead log of each) against simulated Redis servers, on
//! one thread, on a clock that moves only when the simulation does, with requests, ticks,
//! replies and faults interleaved by a seeded generator. A failing seed replays exactly:
//! `scripts/simulate.sh --seed S`.

mod check;
mod fidelity;
mod keyspace;
mod servers;
mod world;

use std::time::{Duration, Instant};

use world::{Scenario, simulate};

/// Runs seeds from `first` on until `budget` has passed; panics with the failing seed.
fn simulate_for(budget: Duration, first: u64) {
    let started = Instant::now();
    let (mut seeds, mut steps, mut windows, mut admitted) = (0, 0, 0, 0);
    let mut seed = first;
    while seeds == 0 || started.elapsed() < budget {
        let scenario = Scenario {
            seed,
            instances: 2 + (seed % 3) as usize,
            masters: if seed.is_multiple_of(2) { 0 } else { 3 },
            windows: 20,
        };
        let run = simulate(scenario);
        let verdict = check::check(&run);
        let faults: Vec<String> = run.faults.iter().map(ToString::to_string).collect();
        assert!(
            verdict.wrong.is_empty(),
            "seed {seed} ({scenario:?}) failed:\n{}\nfaults:\n{}",
            verdict.wrong.join("\n"),
            faults.join("\n")
        );
        seeds += 1;
        steps += run.steps;
        windows += verdict.windows;
        admitted += verdict.admitted.len();
        seed += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "simulated {seeds} seeds from {first}: {steps} steps ({:.0} per second), {windows} \
         windows checked ({admitted} with a degraded report after redis lost data), in \
         {secs:.1} s",
        steps as f64 / secs
    );
}

/// The simulation's budget and first seed: `VERVE_SIM_SECONDS` (default 10) and
/// `VERVE_SIM_SEED` (default 1).
#[test]
fn simulated_runs_keep_every_acknowledged_id_in_one_report() {
    let _ = env_logger::builder()
        .is_test(true)
        .format(|f, record| {
            use std::io::Write;
            let at = world::SIMULATED_MILLIS.load(std::sync::atomic::Ordering::Relaxed);
            writeln!(f, "[{}.{:03}] {}", at / 1000, at % 1000, record.args())
        })
        .try_init();
    let env = |name, default| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    simulate_for(
        Duration::from_secs(env("VERVE_SIM_SECONDS", 10)),
        env("VERVE_SIM_SEED", 1),
    );
}
