//! Workers: one pinned thread per core, each with its own monoio runtime, its own
//! `SO_REUSEPORT` listener and its own first-seen set; nothing shared between them on the
//! request path. A worker reads requests (`connection`), answers them (`handler`, `router`),
//! and hands the new ids over to the recorder in batches (`batch`, `tasks`).

pub mod batch;
mod connection;
pub mod first_seen;
pub mod handler;
pub mod notify;
pub mod router;
pub mod tasks;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::answer::Status;
use crate::config::{DriverChoice, WorkerSettings};
use crate::health::Readiness;
use crate::http::request::Persistence;
use crate::http::response::{DateCache, Response};
use crate::metrics::{Metrics, WorkerMetrics};
use crate::shutdown::{ShutdownListener, ShutdownWait};
use crate::systemd::{HEARTBEAT_INTERVAL, Heartbeats};
use crate::window::{WindowClock, unix_secs};
use batch::IngestBuffer;
use connection::ConnectionContext;
use handler::Handler;
use notify::{LocalBroadcast, LocalNotify};
use router::Router;

/// The I/O driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `io_uring`.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Uring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

#[derive(Debug, thiserror::Error)]
/// Why the workers could not start.
pub enum WorkerError {
    #[error("--driver uring: io_uring is not available: {0}")]
    /// `--driver uring` on a system that refuses `io_uring`.
    UringUnavailable(io::Error),
    #[error("worker {index}: {source}")]
    /// A worker could not start or bind.
    Start {
        /// The worker.
        index: usize,
        /// Why.
        source: io::Error,
    },
    #[error("worker {index} stopped during start-up")]
    /// A worker thread ended before it said whether it listens.
    Vanished {
        /// The worker.
        index: usize,
    },
}

/// Picks the driver: `auto` falls back to epoll, saying why, when `io_uring` is refused (an old
/// kernel, a seccomp profile, `io_uring_disabled`).
pub fn resolve_driver(choice: DriverChoice) -> Result<Driver, WorkerError> {
    match (choice, probe_uring()) {
        (DriverChoice::Epoll, _) => Ok(Driver::Epoll),
        (DriverChoice::Uring | DriverChoice::Auto, Ok(())) => Ok(Driver::Uring),
        (DriverChoice::Uring, Err(e)) => Err(WorkerError::UringUnavailable(e)),
        (DriverChoice::Auto, Err(e)) => {
            log::warn!("io_uring is not available ({e}); using epoll");
            Ok(Driver::Epoll)
        }
    }
}

/// `SINGLE_ISSUER` and `DEFER_TASKRUN`: completions are processed when the worker waits for them,
/// not in interrupts, which made monoio about 1.5 times faster here than its default ring.
fn uring_builder() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    builder.setup_single_issuer().setup_defer_taskrun();
    builder
}

/// Whether the kernel sets up the ring the workers use. The probe runs on a thread of its own:
/// tearing a ring down later sends its creating thread a signal-like notification, which makes
/// a blocking socket call with a timeout on that thread fail with `EINTR` (seen in a test
/// client's read after this probe); the start-up thread goes on to connect to Redis and Kafka.
pub fn probe_uring() -> io::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if !monoio::utils::detect_uring() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the kernel refuses io_uring or lacks operations monoio needs",
                ));
            }
            uring_builder().build(8).map(drop)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
    })
}

/// Everything a verve worker thread starts with.
struct WorkerSetup {
    driver: Driver,
    heartbeats: Arc<Heartbeats>,
    handler: Handler,
    idle_timeout: Duration,
    head_timeout: Duration,
    max_connections: usize,
    shutdown: ShutdownListener,
    shutdown_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// What all workers share.
pub struct WorkersShare {
    /// The windows.
    pub clock: WindowClock,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// Where workers beat for the watchdog.
    pub heartbeats: Arc<Heartbeats>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
}

/// Running workers and the address they listen on.
pub struct Workers {
    /// The worker threads.
    pub threads: Vec<JoinHandle<()>>,
    /// The address they listen on.
    pub local_addr: SocketAddr,
}

/// Where one worker runs.
pub struct WorkerPlace {
    /// The worker's index.
    pub index: usize,
    /// The address to bind (`SO_REUSEPORT`).
    pub listen: SocketAddr,
}

/// A worker reports here the address it bound, or why it could not.
pub type Ready = mpsc::Sender<io::Result<SocketAddr>>;

/// Starts one verve worker per ingest buffer and returns once every one of them listens.
pub fn start(
    settings: &WorkerSettings,
    driver: Driver,
    shared: &WorkersShare,
    buffers: Vec<IngestBuffer>,
    shutdown: Vec<ShutdownListener>,
) -> Result<Workers, WorkerError> {
    let setups = buffers
        .into_iter()
        .zip(shutdown)
        .enumerate()
        .map(|(index, (buffer, shutdown))| WorkerSetup {
            driver,
            heartbeats: Arc::clone(&shared.heartbeats),
            handler: Handler::new(Router::new(
                shared.clock,
                buffer,
                shared.readiness.clone(),
                WorkerMetrics {
                    metrics: Arc::clone(&shared.metrics),
                    index,
                },
            )),
            idle_timeout: settings.idle_timeout,
            head_timeout: settings.head_timeout,
            max_connections: settings.max_connections,
            shutdown,
            shutdown_timeout: settings.shutdown_timeout,
            metrics: Arc::clone(&shared.metrics),
        })
        .collect();
    spawn_pinned(settings, setups, run_worker)
}

/// Spawns one named thread per setup, pinned to a core when `--pin-cores`, one after
/// another: each must report that it listens before the next starts. Worker 0 binds first,
/// so that a port 0 in `--listen` becomes one port shared by all. Any runtime's workers
/// start this way.
pub fn spawn_pinned<S: Send + 'static>(
    settings: &WorkerSettings,
    setups: Vec<S>,
    run: fn(S, WorkerPlace, Ready),
) -> Result<Workers, WorkerError> {
    let cores = if settings.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut listen = settings.listen;
    await_departed_listeners(listen);
    let mut threads = Vec::with_capacity(setups.len());
    for (index, setup) in setups.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let place = WorkerPlace { index, listen };
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("verve-worker-{index}"))
            .spawn(move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    log::warn!("worker {index}: could not pin to core {}", core.id);
                }
                run(setup, place, ready_tx);
            })
            .map_err(|source| WorkerError::Start { index, source })?;
        listen = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(source)) => return Err(WorkerError::Start { index, source }),
            Err(_) => return Err(WorkerError::Vanished { index }),
        };
        threads.push(thread);
    }
    Ok(Workers {
        threads,
        local_addr: listen,
    })
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "the signature of `spawn_pinned`'s `run`: the thread owns what it starts with"
)]
fn run_worker(setup: WorkerSetup, place: WorkerPlace, ready: Ready) {
    let built = match setup.driver {
        Driver::Uring => RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(uring_builder())
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(serve(setup, place, ready.clone()))),
        Driver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(serve(setup, place, ready.clone()))),
    };
    if let Err(e) = built {
        let _ = ready.send(Err(e));
    }
}

fn bind(listen: SocketAddr, shutdown: ShutdownListener) -> io::Result<(TcpListener, ShutdownWait)> {
    let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
    let listener = TcpListener::bind_with_config(listen, &opts)?;
    Ok((listener, shutdown.register()?))
}

/// Tells the starter how binding went; the listener and the shutdown wait when it worked.
pub fn announce<L, S>(
    ready: &Ready,
    bound: io::Result<(L, S)>,
    local_addr: impl FnOnce(&L) -> io::Result<SocketAddr>,
) -> Option<(L, S)> {
    match bound {
        Ok(bound) => {
            let _ = ready.send(local_addr(&bound.0));
            Some(bound)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            None
        }
    }
}

async fn serve(setup: WorkerSetup, place: WorkerPlace, ready: Ready) {
    let bound = bind(place.listen, setup.shutdown);
    let Some((listener, shutdown)) = announce(&ready, bound, TcpListener::local_addr) else {
        return;
    };

    let ctx = Rc::new(ConnectionContext {
        handler: RefCell::new(setup.handler),
        ingest_waiting: LocalNotify::default(),
        sync_wanted: LocalNotify::default(),
        log_synced: LocalBroadcast::default(),
        idle_timeout: setup.idle_timeout,
        head_timeout: setup.head_timeout,
    });
    monoio::spawn(flush_ingest(Rc::clone(&ctx)));
    let sync_interval = ctx
        .handler
        .borrow_mut()
        .ingest()
        .log()
        .map(|l| l.sync_interval());
    if let Some(interval) = sync_interval {
        monoio::spawn(sync_log(Rc::clone(&ctx), interval, setup.metrics));
    }
    let (heartbeats, index) = (setup.heartbeats, place.index);
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(HEARTBEAT_INTERVAL).await;
            heartbeats.beat(index);
        }
    });
    let open = Rc::new(OpenConnections::default());

    let mut stop = pin!(shutdown.wait());
    loop {
        monoio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if open.len() >= setup.max_connections => {
                    monoio::spawn(refuse(stream));
                }
                Ok((stream, _)) => {
                    let fd = open.insert(&stream);
                    let ctx = Rc::clone(&ctx);
                    let open = Rc::clone(&open);
                    monoio::spawn(async move {
                        connection::serve(stream, &ctx).await;
                        open.remove(fd);
                    });
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    log::warn!("worker {}: accept failed: {e}", place.index);
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    stop_listening(&listener);
    drop(listener);
    ctx.handler.borrow_mut().start_draining();
    open.stop_reading();
    // The runtime does not drop tasks left behind, so the channel is let go of explicitly.
    tasks::finish_after_drain(
        place.index,
        || open.len(),
        || ctx.handler.borrow_mut().ingest().finish(),
        monoio::time::sleep,
        setup.shutdown_timeout,
    )
    .await;
}

async fn flush_ingest(ctx: Rc<ConnectionContext>) {
    tasks::flush_when_notified(
        &ctx.ingest_waiting,
        || ctx.handler.borrow_mut().ingest().flush(),
        monoio::time::sleep,
    )
    .await;
}

async fn sync_log(ctx: Rc<ConnectionContext>, interval: Duration, metrics: Arc<Metrics>) {
    tasks::sync_log(
        tasks::LogSync {
            wanted: &ctx.sync_wanted,
            done: &ctx.log_synced,
            interval,
            metrics: &metrics,
        },
        |with| {
            if let Some(log) = ctx.handler.borrow_mut().ingest().log() {
                with(log);
            }
        },
        |file| async move {
            // Through io_uring where the worker runs on it: the worker goes on serving.
            monoio::fs::File::from_std(file)?.sync_data().await
        },
        monoio::time::sleep,
    )
    .await;
}

/// Takes the listener out of the port's `SO_REUSEPORT` group at once. Dropping it is not
/// enough on `io_uring`: the accept in flight holds the socket open, listening, until the ring
/// is torn down after the process has exited, and the connections the kernel gives it
/// meanwhile (a restarted verve's, a load balancer's probe) are reset. A listening socket
/// shut down stops listening, whoever else holds it.
pub fn stop_listening(listener: &impl AsRawFd) {
    // SAFETY: a plain system call on a descriptor the caller borrows.
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Before binding `listen`, waits (up to `DEPARTED_LISTENER_WAIT`) until no other socket
/// listens on that address and port: a process that has just ended (killed, or crashed) on
/// `io_uring` leaves its listener in the port's `SO_REUSEPORT` group for a few milliseconds,
/// and the connections the kernel hands it are reset. A listener still there after the wait
/// belongs to a live process, with which verve shares the port (`--listen`, README).
fn await_departed_listeners(listen: SocketAddr) {
    if listen.port() == 0 {
        return;
    }
    let started = Instant::now();
    let mut others = listeners_on(listen);
    while others > 0 && started.elapsed() < DEPARTED_LISTENER_WAIT {
        std::thread::sleep(Duration::from_millis(5));
        others = listeners_on(listen);
    }
    let waited = started.elapsed().as_millis();
    if others > 0 {
        log::warn!(
            "{listen}: {others} sockets of another process listen there too (SO_REUSEPORT): \
             sharing the port with it"
        );
    } else if waited > 0 {
        log::info!("{listen}: waited {waited} ms for the listener of a process that has ended");
    }
}

/// How long a start waits for a departed process's listener to go.
const DEPARTED_LISTENER_WAIT: Duration = Duration::from_secs(1);

/// The listening TCP sockets on `addr` (its exact address and port), from `/proc/net/tcp`
/// and `/proc/net/tcp6`: none when they cannot be read.
fn listeners_on(addr: SocketAddr) -> usize {
    let (table, address) = match addr.ip() {
        IpAddr::V4(ip) => ("/proc/net/tcp", kernel_hex(&ip.octets())),
        IpAddr::V6(ip) => ("/proc/net/tcp6", kernel_hex(&ip.octets())),
    };
    let local = format!("{address}:{:04X}", addr.port());
    std::fs::read_to_string(table).map_or(0, |t| {
        t.lines()
            .skip(1)
            .filter(|l| {
                let mut fields = l.split_whitespace().skip(1);
                // `0A` is TCP_LISTEN.
                fields.next() == Some(local.as_str()) && fields.nth(1) == Some("0A")
            })
            .count()
    })
}

/// An address as the kernel's tables print it: each 32-bit word in host order, in hex.
fn kernel_hex(octets: &[u8]) -> String {
    use std::fmt::Write;
    octets.chunks_exact(4).fold(String::new(), |mut hex, w| {
        let _ = write!(hex, "{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        hex
    })
}

/// Answers a connection over with `503` and closes it.
async fn refuse(mut stream: TcpStream) {
    let mut date = DateCache::default();
    date.update(unix_secs(SystemTime::now()));
    let mut answer = Vec::new();
    Response::plain(Status::ServiceUnavailable, Persistence::Close).write_to(&mut answer, &date);
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}

/// The worker's open connections, so that shutdown can end their reads.
#[derive(Default)]
struct OpenConnections(RefCell<HashSet<RawFd>>);

impl OpenConnections {
    fn insert(&self, stream: &TcpStream) -> RawFd {
        let fd = stream.as_raw_fd();
        self.0.borrow_mut().insert(fd);
        fd
    }

    fn remove(&self, fd: RawFd) {
        self.0.borrow_mut().remove(&fd);
    }

    fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Shuts the read side of every connection: a connection waiting for its next request
    /// reads end-of-file and closes; one mid-request finishes it first.
    fn stop_reading(&self) {
        for &fd in self.0.borrow().iter() {
            // SAFETY: `fd` belongs to a connection that is still open: it leaves this set in
            // the same step as its stream is dropped.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
    }
}
