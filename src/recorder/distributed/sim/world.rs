//! The simulated world: instances, each the real recorder, replicator, Redis thread and
//! write-ahead log of one process, against the simulated servers, on one thread and one
//! paused tokio clock. Each step of a millisecond, a seeded generator decides which instance
//! takes which ids and which fault happens; then every live recorder runs a round and the
//! Redis threads run until they wait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::task::JoinHandle;

use super::super::client::RedisLink;
use super::super::{RedisHealth, RedisSettings, Replicator, Topology};
use super::servers::{Fault, Servers, SimConnect};
use crate::clock::Clock;
use crate::config::{Config, DistributedSettings, RedisTarget, WalSettings};
use crate::ingest::window_bound::WindowIdCounts;
use crate::ingest::{self, Ingest, IngestSender};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::report::WindowReport;
use crate::sinks::ReportSink;
use crate::sinks::callbacks::CallbackPool;
use crate::wal::WalDir;
use crate::wal::worker_log::WorkerLog;
use crate::window::{WindowClock, WindowIndex};

/// One simulated millisecond per step.
const STEP: Duration = Duration::from_millis(1);
pub(super) const WINDOW: WindowClock = WindowClock::new(1);
const GRACE: Duration = Duration::from_millis(200);
/// After the loaded windows: faults healed, every instance back, until every report settles.
const SETTLING: Duration = Duration::from_secs(70);
/// Far longer than any fault lasts (4 s at most): the simulation checks the promises verve
/// makes to instances and servers back within it.
pub(super) const REPORT_MAX_DELAY: Duration = Duration::from_secs(30);

/// The simulated milliseconds since the epoch, for the log lines of a run.
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

/// What a run did: the reports, the ids acknowledged, and the faults applied.
pub(super) struct Run {
    pub(super) steps: u64,
    pub(super) windows: std::ops::Range<WindowIndex>,
    pub(super) reports: Vec<(usize, WindowReport)>,
    pub(super) acked: BTreeMap<WindowIndex, BTreeSet<i64>>,
    pub(super) faults: Vec<Applied>,
}

/// A fault the simulation applied.
pub(super) struct Applied {
    pub(super) at: SystemTime,
    pub(super) what: String,
    /// A Redis server lost data it had acknowledged (a restart, a failover).
    pub(super) lost_data: bool,
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

/// The reports an instance writes, kept across its processes.
struct Reports {
    instance: usize,
    all: Arc<Mutex<Vec<(usize, WindowReport)>>>,
}

impl ReportSink for Reports {
    fn write(&mut self, report: &WindowReport) {
        let mut all = self.all.lock().unwrap();
        all.push((self.instance, report.clone()));
    }
}

/// A live process of an instance.
struct Process {
    recorder: Recorder,
    log: WorkerLog,
    redis_thread: JoinHandle<()>,
    _ingest: Vec<IngestSender>,
    _callbacks: CallbackPool,
}

struct Instance {
    dir: tempfile::TempDir,
    processes: u32,
    live: Option<Process>,
    /// Killed: started again at this step.
    restart_at: Option<u64>,
}

struct World {
    scenario: Scenario,
    rng: fastrand::Rng,
    clock: Clock,
    servers: Arc<Mutex<Servers>>,
    topology: Topology,
    distributed: DistributedSettings,
    instances: Vec<Instance>,
    reports: Arc<Mutex<Vec<(usize, WindowReport)>>>,
    acked: BTreeMap<WindowIndex, BTreeSet<i64>>,
    faults: Vec<Applied>,
    /// Faults to clear: (step, shard).
    healing: Vec<(u64, usize)>,
    step: u64,
    next_id: i64,
}

/// Runs the scenario on a paused clock; the same scenario runs the same way.
pub(super) fn simulate(scenario: Scenario) -> Run {
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
        let servers = Servers::new(scenario.masters, elapsed);
        let seeds = servers.seeds();
        let topology = if scenario.masters == 0 {
            Topology::single(&seeds[0]).expect("a Redis URL")
        } else {
            Topology::cluster(&seeds).expect("Redis URLs")
        };
        let distributed = DistributedSettings {
            redis: RedisTarget::Single(seeds[0].clone()),
            shards: if scenario.masters == 0 { 1 } else { 4 },
            report_max_delay: REPORT_MAX_DELAY,
            heartbeat: Duration::from_secs(1),
        };
        let instances = (0..scenario.instances)
            .map(|_| Instance {
                dir: tempfile::tempdir().expect("a directory"),
                processes: 0,
                live: None,
                restart_at: None,
            })
            .collect();
        World {
            scenario,
            rng,
            clock: Clock::driven(origin, elapsed),
            servers: Arc::new(Mutex::new(servers)),
            topology,
            distributed,
            instances,
            reports: Arc::default(),
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
        for i in 0..self.instances.len() {
            self.start(i);
        }
        // The instances find Redis, and settle nothing for a heartbeat and a backoff.
        let first = WINDOW.window_of(self.now()) + 3;
        let last = first + self.scenario.windows;
        while WINDOW.window_of(self.now()) < last {
            if WINDOW.window_of(self.now()) >= first {
                self.load();
                self.fault();
            }
            self.round().await;
        }
        self.heal();
        let settled = self.step + steps(SETTLING);
        while self.step < settled {
            self.round().await;
        }
        let reports = self.reports.lock().unwrap().clone();
        Run {
            steps: self.step,
            windows: first..last,
            reports,
            acked: self.acked,
            faults: self.faults,
        }
    }

    /// One step: every live recorder runs a round, then the clock moves a step.
    async fn round(&mut self) {
        let now = self.now();
        for instance in &mut self.instances {
            if let Some(process) = &mut instance.live {
                process.recorder.step(now);
            }
        }
        // Replicas receive the writes within a few milliseconds, now and then later.
        let shards = self.servers.lock().unwrap().shards();
        for shard in 0..shards {
            if self.rng.u8(0..4) != 0 {
                self.servers.lock().unwrap().replicate(shard, usize::MAX);
            }
        }
        let step = self.step;
        let restarts: Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].restart_at == Some(step))
            .collect();
        for i in restarts {
            self.start(i);
        }
        let heal: Vec<usize> = self
            .healing
            .extract_if(.., |(at, _)| *at <= step)
            .map(|(_, shard)| shard)
            .collect();
        for shard in heal {
            self.servers.lock().unwrap().set_fault(shard, Fault::None);
            self.note(format!("redis shard {shard} healed"), false);
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

    fn note(&mut self, what: String, lost_data: bool) {
        let at = self.now();
        self.faults.push(Applied {
            at,
            what,
            lost_data,
        });
    }

    /// Starts a process of instance `i`, reading back what its log holds.
    fn start(&mut self, i: usize) {
        let metrics = Arc::new(Metrics::new(1));
        let now = self.now();
        let instance = &mut self.instances[i];
        instance.processes += 1;
        instance.restart_at = None;
        let wal = Arc::new(WalDir::open(instance.dir.path(), Arc::clone(&metrics)).unwrap());
        let recovered = wal.recover().unwrap();
        let health = Arc::new(RedisHealth::new(self.clock.clone()));
        let process = format!("i{i}/{}", instance.processes);
        let settings =
            RedisSettings::new(self.topology.clone(), process, WINDOW, &self.distributed);
        let (link, thread) = RedisLink::new(
            settings,
            WINDOW,
            health,
            Arc::clone(&metrics),
            Some(Arc::clone(&wal)),
        );
        let redis_thread =
            tokio::task::spawn_local(thread.serve(SimConnect(Arc::clone(&self.servers))));
        let config = Config::parse_from(["verve"]);
        let (callbacks, pool) =
            CallbackPool::start(&config.settings().callbacks, &metrics).unwrap();
        let (ingest, receiver) = ingest::channel(1, 16, &Arc::new(WindowIdCounts::new(u64::MAX)));
        let reports = Reports {
            instance: i,
            all: Arc::clone(&self.reports),
        };
        let recorder = Recorder::new(WINDOW, GRACE, receiver, callbacks, metrics, now)
            .with_sink(Box::new(reports))
            .with_redis(Replicator::new(link, self.distributed.report_max_delay))
            .with_wal(Arc::clone(&wal), recovered);
        let log_settings = WalSettings {
            dir: instance.dir.path().to_owned(),
            host: false,
            fsync_interval: Duration::from_secs(1),
        };
        instance.live = Some(Process {
            recorder,
            log: WorkerLog::new(wal, 0, &log_settings),
            redis_thread,
            _ingest: ingest,
            _callbacks: pool,
        });
    }

    /// Each live instance takes a few ids now and then: some every instance sees, some its
    /// own. An id is acknowledged once its record is in the log, as a worker's `ok` is.
    fn load(&mut self) {
        let window = WINDOW.window_of(self.now());
        for i in 0..self.instances.len() {
            if self.instances[i].live.is_none() || !self.rng.bool() {
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
            let process = self.instances[i].live.as_mut().expect("live");
            if !process.log.reserve(window, ids.len()) {
                continue;
            }
            for &id in &ids {
                process.log.stage(window, id);
            }
            process.log.commit();
            process
                .recorder
                .apply(ids.iter().map(|&id| Ingest::Id { window, id }).collect());
            self.acked.entry(window).or_default().extend(ids);
        }
    }

    /// About one fault every two simulated seconds.
    fn fault(&mut self) {
        if self.rng.u32(0..2_000) != 0 {
            return;
        }
        let shards = self.servers.lock().unwrap().shards();
        let shard = self.rng.usize(0..shards);
        let lasting = steps(Duration::from_millis(self.rng.u64(200..4_000)));
        match self.rng.u8(0..6) {
            0 => {
                self.servers.lock().unwrap().restart_empty(shard);
                self.note(format!("redis shard {shard} restarted empty"), true);
            }
            1 if self.scenario.masters > 0 => {
                self.servers.lock().unwrap().fail_over(shard);
                self.note(format!("redis shard {shard} failed over"), true);
            }
            1..=3 => {
                let fault = match self.rng.u8(0..3) {
                    0 => Fault::Down,
                    1 => Fault::Hung,
                    _ => Fault::Slow(Duration::from_millis(self.rng.u64(5..300))),
                };
                self.servers.lock().unwrap().set_fault(shard, fault);
                self.healing.push((self.step + lasting, shard));
                self.note(
                    format!("redis shard {shard}: {fault:?} for {lasting} ms"),
                    false,
                );
            }
            _ => {
                let i = self.rng.usize(0..self.instances.len());
                if let Some(process) = self.instances[i].live.take() {
                    process.redis_thread.abort();
                    drop(process);
                    self.instances[i].restart_at = Some(self.step + lasting);
                    self.note(format!("instance {i} killed, back in {lasting} ms"), false);
                }
            }
        }
    }

    /// Every fault cleared and every instance started again.
    fn heal(&mut self) {
        let shards = self.servers.lock().unwrap().shards();
        for shard in 0..shards {
            self.servers.lock().unwrap().set_fault(shard, Fault::None);
        }
        self.healing.clear();
        for i in 0..self.instances.len() {
            if self.instances[i].live.is_none() {
                self.start(i);
            }
        }
    }
}

fn steps(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / STEP.as_millis()).expect("a number of steps")
}
