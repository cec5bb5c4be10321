//! Start-up wiring: the parts of the pipeline created in order (metrics, the callback pool,
//! the ingest channel, the recorder and its sinks, the workers, the watchdog), and the order
//! they stop in.

use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{RedisTarget, Settings};
use crate::health::{Health, Readiness};
use crate::ingest::{self, window_bound::WindowIdCounts};
use crate::metrics::{Bounds, Metrics, WorkerMetrics};
use crate::recorder::Recorder;
use crate::recorder::distributed::{
    RedisConfigError, RedisHealth, RedisLink, RedisSettings, Replicator, Topology,
};
use crate::shutdown::ShutdownListener;
use crate::sinks::callbacks::CallbackPool;
use crate::sinks::kafka::{KafkaSetupError, KafkaSink};
use crate::systemd::{self, Heartbeats};
use crate::wal::worker_log::WorkerLog;
use crate::wal::{Recovered, WalDir, WalDirError};
use crate::worker::batch::{IngestBuffer, ingest_buffers};
use crate::worker::{self, Driver, WorkerError, Workers, WorkersShare};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    /// A worker could not start.
    Worker(#[from] WorkerError),
    #[error(transparent)]
    /// A Redis flag cannot be used.
    Redis(#[from] RedisConfigError),
    #[error(transparent)]
    /// The Kafka client cannot be created.
    Kafka(#[from] KafkaSetupError),
    #[error(transparent)]
    /// The write-ahead log cannot be opened or read.
    Wal(#[from] WalDirError),
    #[error("cannot start a thread: {0}")]
    /// A thread could not be started.
    Thread(#[from] std::io::Error),
}

/// The parts behind the workers, whatever their runtime, before they start: the ingest
/// channel's receiving end, the callback pool, the readiness the workers report.
pub struct BackendSetup {
    recorder: Recorder,
    callbacks: CallbackPool,
    redis: Option<(Topology, Arc<RedisHealth>)>,
    kafka_health: Option<Arc<Health>>,
    /// The write-ahead log and what it held at start.
    wal: Option<(Arc<WalDir>, Recovered)>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

/// What runs behind the workers: the recorder thread and the callback pool.
pub struct Backend {
    recorder: JoinHandle<()>,
    callbacks: CallbackPool,
    shutdown_timeout: Duration,
}

impl BackendSetup {
    /// Prepares the backend and the ingest buffers of `workers` workers.
    pub fn new(
        settings: &Settings,
        workers: usize,
    ) -> Result<(BackendSetup, Vec<IngestBuffer>), StartError> {
        let recording = &settings.recorder;
        let metrics = Arc::new(Metrics::new(workers));
        metrics.set_bounds(Bounds {
            ingest_queue_batches: recording.ingest_queue,
            callback_queue_jobs: settings.callbacks.queue,
            window_secs: recording.clock.secs(),
            report_deadline: recording.grace
                + settings
                    .distributed
                    .as_ref()
                    .map_or(Duration::ZERO, |d| d.report_max_delay),
        });
        let (callback_queue, callbacks) = CallbackPool::start(&settings.callbacks, &metrics)?;
        let (senders, receiver) = ingest::channel(
            workers,
            recording.ingest_queue,
            &Arc::new(WindowIdCounts::new(recording.max_window_ids)),
        );
        let wal = match &settings.wal {
            Some(wal) => Some(open_wal(&wal.dir, &metrics)?),
            None => None,
        };
        let buffers = ingest_buffers(senders, &metrics)
            .into_iter()
            .enumerate()
            .map(|(worker, buffer)| match (&wal, &settings.wal) {
                (Some((dir, _)), Some(s)) => {
                    buffer.with_log(WorkerLog::new(Arc::clone(dir), worker, s))
                }
                _ => buffer,
            })
            .collect();
        let recorder = Recorder::new(
            recording.clock,
            recording.grace,
            receiver,
            callback_queue,
            Arc::clone(&metrics),
            SystemTime::now(),
        );
        // Checked here so that a bad URL stops start-up before anything listens.
        let topology = match settings.distributed.as_ref().map(|d| &d.redis) {
            Some(RedisTarget::Single(url)) => Some(Topology::single(url)?),
            Some(RedisTarget::Cluster(nodes)) => Some(Topology::cluster(nodes)?),
            None => None,
        };
        let setup = BackendSetup {
            recorder,
            callbacks,
            redis: topology.map(|t| (t, Arc::new(RedisHealth::new(Clock::system())))),
            kafka_health: settings.kafka.as_ref().map(|_| Arc::new(Health::default())),
            wal,
            metrics,
            settings: settings.clone(),
        };
        Ok((setup, buffers))
    }

    /// What `/readyz` checks.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            redis: self.redis.as_ref().map(|(_, health)| health.readiness()),
            kafka: self.kafka_health.clone(),
            wal: self.wal.as_ref().map(|(dir, _)| dir.health()),
        }
    }

    /// Worker `index`'s handle on the metrics.
    pub fn worker_metrics(&self, index: usize) -> WorkerMetrics {
        WorkerMetrics {
            metrics: Arc::clone(&self.metrics),
            index,
        }
    }

    /// Starts the recorder; `local_addr` names this instance unless `--instance-id` does.
    pub fn start(self, local_addr: SocketAddr) -> Result<Backend, StartError> {
        let settings = self.settings;
        let clock = settings.recorder.clock;
        let mut recorder = self.recorder;
        if let (Some((topology, health)), Some(distributed)) = (self.redis, &settings.distributed) {
            let process = process_name(&settings.instance_id(local_addr));
            let redis = RedisSettings::new(topology, process, clock, distributed);
            let kept = self.wal.as_ref().map(|(wal, _)| Arc::clone(wal));
            let link = RedisLink::start(redis, clock, health, Arc::clone(&self.metrics), kept)?;
            recorder = recorder.with_redis(Replicator::new(link, distributed.report_max_delay));
        }
        if let Some((wal, recovered)) = self.wal {
            recorder = recorder.with_wal(wal, recovered);
        }
        if let (Some(kafka), Some(health)) = (&settings.kafka, self.kafka_health) {
            let sink = KafkaSink::start(
                kafka,
                settings.instance_id(local_addr),
                health,
                Arc::clone(&self.metrics),
            )?;
            recorder = recorder.with_sink(Box::new(sink));
        }
        let shutdown_timeout = settings.recorder.shutdown_timeout;
        let recorder = std::thread::Builder::new()
            .name("verve-recorder".into())
            .spawn(move || recorder.run(shutdown_timeout))?;
        Ok(Backend {
            recorder,
            callbacks: self.callbacks,
            shutdown_timeout,
        })
    }
}

/// Opens the write-ahead log and reads what earlier processes left in it, before anything
/// listens.
fn open_wal(dir: &Path, metrics: &Arc<Metrics>) -> Result<(Arc<WalDir>, Recovered), WalDirError> {
    let wal = WalDir::open(dir, Arc::clone(metrics))?;
    let recovered = wal.recover()?;
    if !recovered.windows.is_empty() {
        let ids: usize = recovered.windows.values().map(Vec::len).sum();
        log::info!(
            "wal: read back {ids} logged ids of {} windows from {}",
            recovered.windows.len(),
            dir.display()
        );
    }
    Ok((Arc::new(wal), recovered))
}

/// This process's name in Redis: the instance id, the process id and when it started. An
/// instance started again under the same id is then never taken for the process before it,
/// whose flush marks, lease and report claims are that process's own.
fn process_name(instance: &str) -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{instance}/{}-{started}", std::process::id())
}

impl Backend {
    /// Call once every worker has ended (dropped its ingest buffer): the recorder writes the
    /// last reports or pushes the last ids, the callback pool sends what is queued (until the
    /// shutdown timeout).
    pub fn finish(self) {
        let _ = self.recorder.join();
        self.callbacks
            .finish(Instant::now() + self.shutdown_timeout);
    }
}

/// A started service: workers listening, the recorder and the callback pool running.
pub struct Service {
    workers: Workers,
    backend: Backend,
    driver: Driver,
}

/// Starts the service; it runs until the `shutdown` listeners' trigger fires.
pub fn start(settings: &Settings, shutdown: Vec<ShutdownListener>) -> Result<Service, StartError> {
    let driver = worker::resolve_driver(settings.workers.driver)?;
    let (setup, buffers) = BackendSetup::new(settings, shutdown.len())?;
    setup.metrics.set_driver_uring(driver == Driver::Uring);
    setup.metrics.set_readiness(setup.readiness());
    let shared = WorkersShare {
        clock: settings.recorder.clock,
        readiness: setup.readiness(),
        heartbeats: Heartbeats::new(shutdown.len()),
        metrics: Arc::clone(&setup.metrics),
    };
    let workers = worker::start(&settings.workers, driver, &shared, buffers, shutdown)?;
    let backend = setup.start(workers.local_addr)?;
    systemd::start_watchdog(shared.heartbeats)?;
    Ok(Service {
        workers,
        backend,
        driver,
    })
}

impl Service {
    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.workers.local_addr
    }

    /// The I/O driver the workers run on.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers.threads.len()
    }

    /// Waits for the shutdown to complete: workers drain and hand over their ids, then the
    /// backend finishes.
    pub fn wait(self) {
        for w in self.workers.threads {
            let _ = w.join();
        }
        self.backend.finish();
    }
}
