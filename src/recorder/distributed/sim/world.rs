//! The simulated world: instances against the simulated servers, on one thread and one paused
//! tokio clock. Each step of a millisecond, a seeded generator decides which instance takes
//! which ids and which fault happens (`faults`: on a schedule, or aimed at a moment the
//! servers just saw); then every live recorder runs a round, the replicas catch up (or lag),
//! and the Redis threads run until they wait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::Topology;
use super::instance::{Instance, Shared, Stepped};
use super::servers::{Fault, Servers};
use crate::clock::Clock;
use crate::config::{DistributedSettings, RedisTarget};
use crate::report::WindowReport;
use crate::window::{WindowClock, WindowIndex};

mod faults;

/// One simulated millisecond per step.
const STEP: Duration = Duration::from_millis(1);
pub(super) const WINDOW: WindowClock = WindowClock::new(1);
const GRACE: Duration = Duration::from_millis(200);
/// How far an instance's clock is off the others' at most: within the grace.
const MAX_SKEW_MS: u64 = 80;
/// After the loaded windows: faults healed, every instance back, until every report settles.
const SETTLING: Duration = Duration::from_secs(70);
/// Longer than any fault but one lasts (4 s at most): the simulation checks the promises verve
/// makes to instances and servers back within it, and, in one seed in four, to an instance
/// cut off from Redis for longer than it (faults.rs, `Cut`).
pub(super) const REPORT_MAX_DELAY: Duration = Duration::from_secs(30);

/// `--shutdown-timeout-ms`, its default: a stopped instance leaves Redis within it.
pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The simulated milliseconds since midnight, for the log lines of a run.
pub(super) static SIMULATED_MILLIS: AtomicU64 = AtomicU64::new(0);

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scenario {
    pub(super) seed: u64,
    pub(super) instances: usize,
    /// 0: one Redis server; else a cluster of this many masters.
    pub(super) masters: u16,
    /// Windows loaded with ids.
    pub(super) windows: u64,
}

impl Scenario {
    /// The scenario of a seed: 2 to 4 instances, one server for even seeds and a cluster of
    /// three masters for odd ones, 20 windows.
    pub(super) fn of(seed: u64) -> Scenario {
        Scenario {
            seed,
            instances: 2 + usize::try_from(seed % 3).expect("small"),
            masters: if seed.is_multiple_of(2) { 0 } else { 3 },
            windows: 20,
        }
    }
}

/// What a run did: the reports, the ids acknowledged, and the faults applied.
pub(super) struct Run {
    pub(super) steps: u64,
    pub(super) windows: std::ops::Range<WindowIndex>,
    pub(super) reports: Vec<Written>,
    /// Each window's acknowledged ids, and the processes that acknowledged each.
    pub(super) acked: BTreeMap<WindowIndex, BTreeMap<i64, BTreeSet<Process>>>,
    pub(super) faults: Vec<Applied>,
}

/// A report an instance wrote, and when on the simulation's clock.
#[derive(Debug, Clone)]
pub(super) struct Written {
    pub(super) instance: usize,
    pub(super) at: SystemTime,
    pub(super) report: WindowReport,
}

/// A fault the simulation applied.
pub(super) struct Applied {
    pub(super) at: SystemTime,
    pub(super) what: String,
    pub(super) kind: FaultKind,
}

/// A process: its instance and its number among the instance's processes.
pub(super) type Process = (usize, u32);

/// What a fault did, as the checker needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FaultKind {
    /// A Redis server lost data it had acknowledged (a restart, a failover).
    RedisLostData,
    /// A Redis server refused, hung or was slow for a while.
    RedisOutage,
    /// This instance's process was killed (SIGKILL).
    Killed(usize),
    /// This process was stopped (SIGTERM).
    Stopped(Process),
    /// This instance's process was paused (SIGSTOP) for a while.
    Paused(usize),
    /// This instance's host was cut off from every server for this long.
    CutOff(usize, Duration),
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            humantime::format_rfc3339_millis(self.at),
            self.what
        )
    }
}

struct World {
    scenario: Scenario,
    rng: fastrand::Rng,
    /// Whether an instance's fault is a kill or a stop (SIGTERM): a stream of its own, so that
    /// the other faults of a seed stay those it had before stops were simulated.
    stops: fastrand::Rng,
    /// Which moments faults are aimed at, and which: a stream of its own too.
    aim: fastrand::Rng,
    /// Aimed faults to apply: (step, fault).
    aimed: Vec<(u64, faults::Planned)>,
    /// No fault is aimed before this step.
    aimed_quiet_until: u64,
    /// Shards whose replica receives nothing until the fault aimed at them strikes.
    held: Vec<usize>,
    /// The seed's cut-off from Redis longer than the delay, until it strikes.
    cut: Option<faults::Cut>,
    /// The instance cut off, and the step it joins again at: `heal` leaves it be.
    rejoin: Option<(u64, usize)>,
    clock: Clock,
    shared: Shared,
    instances: Vec<Instance>,
    /// Killed or stopped instances and the step they start again at (a stopped one once it
    /// has exited).
    restarts: Vec<(u64, usize)>,
    /// Paused instances and the step they resume at.
    resumes: Vec<(u64, usize)>,
    acked: BTreeMap<WindowIndex, BTreeMap<i64, BTreeSet<Process>>>,
    faults: Vec<Applied>,
    /// Faults to clear: (step, shard).
    healing: Vec<(u64, usize)>,
    step: u64,
    next_id: i64,
}

/// Runs the scenario on a paused clock; the same scenario runs the same way.
pub(super) fn play(scenario: Scenario) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move { World::new(scenario).run().await })
}

impl World {
    fn new(scenario: Scenario) -> World {
        let base = tokio::time::Instant::now();
        let elapsed = move || tokio::time::Instant::now() - base;
        let mut rng = fastrand::Rng::with_seed(scenario.seed);
        // 2026-12-06T00:00:00Z, and a random moment within a window.
        let origin =
            UNIX_EPOCH + Duration::from_hours(499_032) + Duration::from_millis(rng.u64(0..1_000));
        let servers = Servers::new(scenario.masters, Clock::driven(origin, elapsed));
        let seeds = servers.seeds();
        let topology = if scenario.masters == 0 {
            Topology::single(&seeds[0]).expect("a Redis URL")
        } else {
            Topology::cluster(&seeds).expect("Redis URLs")
        };
        let shared = Shared {
            servers: Arc::new(Mutex::new(servers)),
            topology,
            distributed: DistributedSettings {
                redis: RedisTarget::Single(seeds[0].clone()),
                shards: if scenario.masters == 0 { 1 } else { 4 },
                report_max_delay: REPORT_MAX_DELAY,
                heartbeat: Duration::from_secs(1),
            },
            window: WINDOW,
            grace: GRACE,
            clock: Clock::driven(origin, elapsed),
            reports: Arc::default(),
        };
        let instances = (0..scenario.instances)
            .map(|i| {
                let skew = Duration::from_millis(rng.u64(0..=2 * MAX_SKEW_MS));
                let skewed = origin + skew - Duration::from_millis(MAX_SKEW_MS);
                Instance::new(i, Clock::driven(skewed, elapsed), WINDOW)
            })
            .collect();
        World {
            scenario,
            rng,
            stops: fastrand::Rng::with_seed(!scenario.seed),
            aim: fastrand::Rng::with_seed(scenario.seed.rotate_left(32) ^ 0x0b09_9f1e),
            aimed: Vec::new(),
            aimed_quiet_until: 0,
            cut: faults::Cut::of(scenario.seed),
            rejoin: None,
            held: Vec::new(),
            clock: Clock::driven(origin, elapsed),
            shared,
            instances,
            restarts: Vec::new(),
            resumes: Vec::new(),
            acked: BTreeMap::new(),
            faults: Vec::new(),
            healing: Vec::new(),
            step: 0,
            next_id: 1_000_000,
        }
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    async fn run(mut self) -> Run {
        for instance in &mut self.instances {
            instance.start(&self.shared);
        }
        // The instances find Redis, and settle nothing for a heartbeat and a backoff.
        let first = WINDOW.window_of(self.now()) + 3;
        let last = first + self.scenario.windows;
        while WINDOW.window_of(self.now()) < last {
            if WINDOW.window_of(self.now()) >= first {
                self.load();
                self.fault();
                self.aim();
            }
            self.round().await;
        }
        self.heal();
        // Until every instance has concluded every loaded window (reported it, left it to
        // another, amended it), at most SETTLING.
        let settled = self.step + steps(SETTLING);
        while self.step < settled && !self.instances.iter().all(|i| i.concluded(last - 1)) {
            self.round().await;
        }
        let reports = self.shared.reports.lock().unwrap().clone();
        Run {
            steps: self.step,
            windows: first..last,
            reports,
            acked: self.acked,
            faults: self.faults,
        }
    }

    /// One step: every live recorder runs a round, the replicas catch up (or lag), killed
    /// instances come back, paused ones resume and faults end when due, then the clock moves
    /// a step.
    async fn round(&mut self) {
        for i in 0..self.instances.len() {
            if self.instances[i].step() == Stepped::Killed {
                self.killed_mid_round(i);
            }
        }
        let shards = self.shared.servers.lock().unwrap().shards();
        for shard in 0..shards {
            if self.rng.u8(0..4) != 0 && !self.held.contains(&shard) {
                let mut servers = self.shared.servers.lock().unwrap();
                servers.replicate(shard, usize::MAX);
            }
        }
        let step = self.step;
        let instances = &self.instances;
        let due: Vec<usize> = self
            .restarts
            .extract_if(.., |&mut (at, i)| at <= step && !instances[i].is_running())
            .map(|(_, i)| i)
            .collect();
        for i in due {
            self.instances[i].start(&self.shared);
        }
        let resumed: Vec<usize> = self
            .resumes
            .extract_if(.., |(at, _)| *at <= step)
            .map(|(_, i)| i)
            .collect();
        for i in resumed {
            self.instances[i].resume();
        }
        if let Some((at, i)) = self.rejoin
            && at <= step
        {
            self.instances[i].cut_off(false);
            self.rejoin = None;
        }
        let healed: Vec<usize> = self
            .healing
            .extract_if(.., |(at, _)| *at <= step)
            .map(|(_, shard)| shard)
            .collect();
        for shard in healed {
            let mut servers = self.shared.servers.lock().unwrap();
            servers.set_fault(shard, Fault::None);
        }
        tokio::time::sleep(STEP).await;
        self.step += 1;
        let millis = self
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        SIMULATED_MILLIS.store(
            u64::try_from(millis % 86_400_000).unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    /// Each live instance takes a few ids now and then: some every instance sees, some its
    /// own. An id is acknowledged once its record is in the log, as a worker's `ok` is.
    fn load(&mut self) {
        for i in 0..self.instances.len() {
            if !self.instances[i].is_live() || !self.rng.bool() {
                continue;
            }
            let ids: Vec<i64> = (0..self.rng.usize(1..8))
                .map(|_| {
                    if self.rng.bool() {
                        self.rng.i64(0..500)
                    } else {
                        self.next_id += 1;
                        self.next_id
                    }
                })
                .collect();
            if let Some(window) = self.instances[i].take(&ids) {
                let by = (i, self.instances[i].process());
                let acked = self.acked.entry(window).or_default();
                for id in ids {
                    acked.entry(id).or_default().insert(by);
                }
            }
        }
    }
}

fn steps(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / STEP.as_millis()).expect("a number of steps")
}
