//! verve: a thread-per-core HTTP service that counts the distinct ids it receives per
//! wall-clock window.
//!
//! Data flows one way: workers (`worker`, `http`) → the recorder (`recorder`) over `ingest`
//! → the stats log (`stats_log`) and the callback pool (`callback`).

pub mod callback;
pub mod config;
pub mod http;
pub mod ingest;
pub mod notify;
pub mod recorder;
pub mod report;
pub mod shutdown;
pub mod stats_log;
pub mod window;
pub mod worker;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callback::CallbackPool;
use config::Config;
use ingest::IngestBuffer;
use recorder::Recorder;
use shutdown::ShutdownListener;
use window::WindowClock;
use worker::{Driver, WorkerError, Workers};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What runs behind the workers, whatever their runtime: the recorder thread and the
/// callback pool.
pub struct Backend {
    recorder: JoinHandle<()>,
    callbacks: CallbackPool,
    shutdown_timeout: Duration,
}

impl Backend {
    /// Starts the recorder and the callback pool, and returns the ingest buffers of
    /// `workers` workers.
    pub fn start(
        config: &Config,
        workers: usize,
    ) -> Result<(Backend, Vec<IngestBuffer>), StartError> {
        let clock = WindowClock::new(config.window_secs);
        let (callback_queue, callbacks) = CallbackPool::start(config)?;
        let (buffers, receiver) = ingest::channel(workers, config.ingest_queue as usize);
        let recorder = Recorder::new(clock, config.report_grace(), receiver, callback_queue);
        let recorder = std::thread::Builder::new()
            .name("verve-recorder".into())
            .spawn(move || recorder.run())?;
        let backend = Backend {
            recorder,
            callbacks,
            shutdown_timeout: config.shutdown_timeout(),
        };
        Ok((backend, buffers))
    }

    /// Call once every worker has ended (dropped its ingest buffer): the recorder writes the
    /// last reports, the callback pool sends what is queued (until the shutdown timeout).
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
pub fn start(config: &Config, shutdown: Vec<ShutdownListener>) -> Result<Service, StartError> {
    let driver = worker::resolve_driver(config.driver)?;
    let (backend, buffers) = Backend::start(config, shutdown.len())?;
    let clock = WindowClock::new(config.window_secs);
    let workers = worker::start(config, driver, clock, buffers, shutdown)?;
    Ok(Service {
        workers,
        backend,
        driver,
    })
}

impl Service {
    pub fn local_addr(&self) -> SocketAddr {
        self.workers.local_addr
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

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
