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
use recorder::Recorder;
use shutdown::ShutdownListener;
use window::WindowClock;
use worker::{Driver, WorkerError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A started service: workers listening, the recorder and the callback pool running.
pub struct Service {
    workers: Vec<JoinHandle<()>>,
    recorder: JoinHandle<()>,
    callbacks: CallbackPool,
    local_addr: SocketAddr,
    driver: Driver,
    shutdown_timeout: Duration,
}

/// Starts the service; it runs until the `shutdown` listeners' trigger fires.
pub fn start(config: &Config, shutdown: Vec<ShutdownListener>) -> Result<Service, StartError> {
    let driver = worker::resolve_driver(config.driver)?;
    let clock = WindowClock::new(config.window_secs);
    let (callback_queue, callbacks) = CallbackPool::start(config)?;
    let (buffers, receiver) = ingest::channel(shutdown.len(), config.ingest_queue as usize);
    let recorder = Recorder::new(clock, config.report_grace(), receiver, callback_queue);
    let recorder = std::thread::Builder::new()
        .name("verve-recorder".into())
        .spawn(move || recorder.run())?;
    let workers = worker::start(config, driver, clock, buffers, shutdown)?;
    Ok(Service {
        workers: workers.threads,
        recorder,
        callbacks,
        local_addr: workers.local_addr,
        driver,
        shutdown_timeout: config.shutdown_timeout(),
    })
}

impl Service {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Waits for the shutdown to complete: workers drain and hand over their ids, the
    /// recorder writes the last reports, the callback pool sends what is queued (until the
    /// shutdown timeout).
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
        let _ = self.recorder.join();
        self.callbacks
            .finish(Instant::now() + self.shutdown_timeout);
    }
}
