//! One simulated instance: its processes one after the other, each the real recorder,
//! replicator, Redis thread and write-ahead log of a verve process, its clock off the others'
//! by a skew within the grace. A kill drops the process where it stands (its Redis thread's
//! task aborted); the next process reads back its log, as after a SIGKILL. A stop (SIGTERM)
//! takes no more ids and leaves Redis as a shutdown does, a step at a time, within
//! `--shutdown-timeout-ms`. A kill can also be armed to strike inside a round of the recorder,
//! as it syncs the stats log after its next report: the report's line and the `<w>.reported`
//! beside its kept claim are written, its segments not yet deleted. (A kill between the line
//! and that file is the repeat the README admits; it is not simulated.) A pause (SIGSTOP)
//! stops the process where it stands, its Redis thread too (its connections hold what it
//! sends and what it is answered), until it resumes (SIGCONT).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clap::Parser;
use tokio::task::JoinHandle;

use super::super::client::RedisLink;
use super::super::{Leaving, RedisHealth, RedisSettings, Replicator, Topology};
use super::connection::SimConnect;
use super::servers::Servers;
use super::world::Written;
use crate::clock::Clock;
use crate::config::{Config, DistributedSettings, WalSettings};
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

tokio::task_local! {
    /// The process whose code runs (`i<instance>/<process>`): the log's lines name it.
    pub(super) static RUNNING: String;
}

/// Every report of every instance.
pub(super) type Reports = Arc<Mutex<Vec<Written>>>;

/// What every instance shares: the servers, the configuration, the reports' destination.
pub(super) struct Shared {
    pub(super) servers: Arc<Mutex<Servers>>,
    pub(super) topology: Topology,
    pub(super) distributed: DistributedSettings,
    pub(super) window: WindowClock,
    pub(super) grace: Duration,
    /// The simulation's clock, as the servers' (without an instance's skew).
    pub(super) clock: Clock,
    pub(super) reports: Reports,
}

/// The reports of one instance's processes.
struct Sink {
    instance: usize,
    /// The simulation's clock: when each report was written.
    clock: Clock,
    reports: Reports,
    /// The process dies as soon as this report is out.
    doomed: Arc<AtomicBool>,
    wal: Arc<WalDir>,
    window: WindowClock,
}

/// What unwinds a round of the recorder that a kill struck.
struct KilledMidRound;

impl ReportSink for Sink {
    fn write(&mut self, report: &WindowReport) {
        self.reports.lock().unwrap().push(Written {
            instance: self.instance,
            at: self.clock.now(),
            report: report.clone(),
        });
        if self.doomed.swap(false, Ordering::Relaxed) {
            // What the recorder does next, before the stats log's sync that the kill strikes.
            let start = humantime::parse_rfc3339(&report.window_start).expect("a window start");
            self.wal.report_written(self.window.window_of(start));
            // Without the panic hook: a kill is not a failure of the run.
            resume_unwind(Box::new(KilledMidRound));
        }
    }
}

/// How a round of the recorder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stepped {
    Ran,
    /// Killed inside the round, as it wrote a report.
    Killed,
}

/// A live process.
struct Process {
    /// `i<instance>/<process>`, its name in Redis.
    name: String,
    recorder: Recorder,
    log: WorkerLog,
    redis_thread: JoinHandle<()>,
    _ingest: Vec<IngestSender>,
    _callbacks: CallbackPool,
    /// Stopped (SIGTERM): leaving Redis.
    leaving: Option<Leaving>,
}

pub(super) struct Instance {
    index: usize,
    clock: Clock,
    window: WindowClock,
    dir: tempfile::TempDir,
    processes: u32,
    live: Option<Process>,
    /// Armed: the live process is killed as it writes its next report.
    doomed: Arc<AtomicBool>,
    /// Paused (SIGSTOP): shared with its Redis thread's connections.
    paused: Arc<AtomicBool>,
    /// Its host cut off from the servers: whichever process runs there.
    cut_off: Arc<AtomicBool>,
}

impl Instance {
    pub(super) fn new(index: usize, clock: Clock, window: WindowClock) -> Instance {
        Instance {
            index,
            clock,
            window,
            dir: tempfile::tempdir().expect("a directory"),
            processes: 0,
            live: None,
            doomed: Arc::default(),
            paused: Arc::default(),
            cut_off: Arc::default(),
        }
    }

    /// A process that takes ids: started, not stopping, not paused.
    pub(super) fn is_live(&self) -> bool {
        self.live.as_ref().is_some_and(|p| p.leaving.is_none()) && !self.is_paused()
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// A process, taking ids or stopping.
    pub(super) fn is_running(&self) -> bool {
        self.live.is_some()
    }

    /// The number of the instance's latest process (1 for the first).
    pub(super) fn process(&self) -> u32 {
        self.processes
    }

    /// The time on this instance's clock.
    pub(super) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Starts a process, reading back what the log holds.
    pub(super) fn start(&mut self, shared: &Shared) {
        let metrics = Arc::new(Metrics::new(1));
        self.processes += 1;
        self.doomed = Arc::default();
        self.paused = Arc::default();
        let wal = Arc::new(WalDir::open(self.dir.path(), Arc::clone(&metrics)).unwrap());
        let recovered = wal.recover().unwrap();
        let health = Arc::new(RedisHealth::new(self.clock.clone()));
        let name = format!("i{}/{}", self.index, self.processes);
        let settings = RedisSettings::new(
            shared.topology.clone(),
            name.clone(),
            shared.window,
            &shared.distributed,
        );
        let (link, thread) = RedisLink::new(
            settings,
            shared.window,
            health,
            Arc::clone(&metrics),
            Some(Arc::clone(&wal)),
        );
        let connect = SimConnect {
            servers: Arc::clone(&shared.servers),
            paused: Arc::clone(&self.paused),
            cut_off: Arc::clone(&self.cut_off),
        };
        let redis_thread =
            tokio::task::spawn_local(RUNNING.scope(name.clone(), thread.serve(connect)));
        let config = Config::parse_from(["verve"]);
        let (callbacks, pool) =
            CallbackPool::start(&config.settings().callbacks, &metrics).unwrap();
        let (ingest, receiver) = ingest::channel(1, 16, &Arc::new(WindowIdCounts::new(u64::MAX)));
        let sink = Sink {
            instance: self.index,
            clock: shared.clock.clone(),
            reports: Arc::clone(&shared.reports),
            doomed: Arc::clone(&self.doomed),
            wal: Arc::clone(&wal),
            window: shared.window,
        };
        let max_delay = shared.distributed.report_max_delay;
        let recorder = Recorder::new(
            shared.window,
            shared.grace,
            receiver,
            callbacks,
            metrics,
            self.now(),
        )
        .with_sink(Box::new(sink))
        .with_redis(Replicator::new(link, max_delay))
        .with_wal(Arc::clone(&wal), recovered);
        let log_settings = WalSettings {
            dir: self.dir.path().to_owned(),
            host: false,
            fsync_interval: Duration::from_secs(1),
        };
        self.live = Some(Process {
            name,
            recorder,
            log: WorkerLog::new(wal, 0, &log_settings),
            redis_thread,
            _ingest: ingest,
            _callbacks: pool,
            leaving: None,
        });
    }

    /// The process dies where it stands: what its log holds stays.
    pub(super) fn kill(&mut self) {
        if let Some(process) = self.live.take() {
            process.redis_thread.abort();
        }
    }

    /// The live process is to die as it writes its next report (none armed after a restart).
    pub(super) fn kill_at_next_report(&self) {
        self.doomed.store(true, Ordering::Relaxed);
    }

    /// No kill armed any more.
    pub(super) fn disarm(&self) {
        self.doomed.store(false, Ordering::Relaxed);
    }

    /// Cuts the instance's host off from the servers, or joins it again.
    pub(super) fn cut_off(&self, cut: bool) {
        self.cut_off.store(cut, Ordering::Relaxed);
    }

    /// SIGSTOP: nothing of the process runs until `resume`.
    pub(super) fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    /// SIGCONT.
    pub(super) fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    /// SIGTERM: the process takes no more ids and leaves Redis within `timeout`
    /// (`--shutdown-timeout-ms`) from now, then exits.
    pub(super) fn stop(&mut self, timeout: Duration) {
        let (began, now) = (self.now(), self.clock.instant());
        if let Some(process) = &mut self.live {
            process.leaving = Some(Leaving::new(began, now + timeout));
        }
    }

    /// Whether the live process has concluded `window` and every one before.
    pub(super) fn concluded(&self, window: WindowIndex) -> bool {
        self.live
            .as_ref()
            .is_some_and(|p| p.leaving.is_none() && p.recorder.next_report > window)
    }

    /// One round of the recorder, at this instance's time. `Killed` when an armed kill struck
    /// inside it: the process is gone.
    pub(super) fn step(&mut self) -> Stepped {
        let (now, instant) = (self.now(), self.clock.instant());
        if self.is_paused() {
            return Stepped::Ran;
        }
        let Some(process) = &mut self.live else {
            return Stepped::Ran;
        };
        let name = process.name.clone();
        let round = RUNNING.sync_scope(name, || {
            catch_unwind(AssertUnwindSafe(|| match &mut process.leaving {
                None => {
                    process.recorder.step(now);
                    false
                }
                Some(leaving) => process.recorder.leave_step(leaving, instant),
            }))
        });
        match round {
            Ok(exited) => {
                if exited {
                    self.live = None;
                }
                Stepped::Ran
            }
            Err(payload) if payload.is::<KilledMidRound>() => {
                self.kill();
                Stepped::Killed
            }
            Err(payload) => resume_unwind(payload),
        }
    }

    /// Takes `ids` in the current window as a worker does: logged, then counted. Returns the
    /// window they were acknowledged in, if they were.
    pub(super) fn take(&mut self, ids: &[i64]) -> Option<WindowIndex> {
        let window = self.window.window_of(self.now());
        if !self.is_live() {
            return None;
        }
        let process = self.live.as_mut()?;
        if !process.log.reserve(window, ids.len()) {
            return None;
        }
        for &id in ids {
            process.log.stage(window, id);
        }
        process.log.commit();
        let items = ids.iter().map(|&id| Ingest::Id { window, id }).collect();
        process.recorder.apply(items);
        Some(window)
    }
}
