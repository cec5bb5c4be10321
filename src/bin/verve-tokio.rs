//! verve-tokio: the hyper-on-tokio baseline that `scripts/bench.sh` compares verve with.
//!
//! Everything behind the HTTP layer is verve's own library code (routing, query parsing,
//! first-seen sets, ingest batches, the write-ahead log, the recorder, the stats log,
//! callbacks), and so are the
//! flags. What differs is the runtime and the codec: one current-thread tokio runtime per
//! pinned core, each with its own `SO_REUSEPORT` listener, serving HTTP/1 with hyper 1 and
//! `pipeline_flush` (its best setting for pipelined clients). `--driver`, the timeouts and
//! `--max-connections` do not apply to it.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use verve::BackendSetup;
use verve::answer::Status;
use verve::config::Config;
use verve::http::request::Method;
use verve::metrics::Metrics;
use verve::shutdown::ShutdownListener;
use verve::trace::TraceHeaders;
use verve::worker::notify::{LocalBroadcast, LocalNotify};
use verve::worker::router::Router;
use verve::worker::{self, Ready, WorkerPlace, tasks};

fn main() {
    let config = Config::from_args();
    if let Err(e) = run(&config) {
        eprintln!("verve-tokio: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    verve::logs::init(&config.stats_log, &config.callback_log)?;
    let settings = config.settings();
    let workers = settings.workers.count.get();
    let (trigger, listeners) = verve::shutdown::channel(workers)?;
    trigger.on_signals()?;
    let (backend, buffers) = BackendSetup::new(&settings, workers)?;
    let clock = settings.recorder.clock;
    let setups = buffers
        .into_iter()
        .zip(listeners)
        .enumerate()
        .map(|(index, (buffer, shutdown))| Setup {
            router: Router::new(
                clock,
                buffer,
                backend.readiness(),
                backend.worker_metrics(index),
            ),
            metrics: backend.worker_metrics(index).metrics,
            shutdown,
            shutdown_timeout: settings.workers.shutdown_timeout,
        })
        .collect();
    let workers = worker::spawn_pinned(&settings.workers, setups, run_worker)?;
    let backend = backend.start(workers.local_addr)?;
    log::info!(
        "listening on {} with {} workers (tokio), stats to {}",
        workers.local_addr,
        workers.threads.len(),
        config.stats_log.display()
    );
    for w in workers.threads {
        let _ = w.join();
    }
    backend.finish();
    log::info!("stopped");
    Ok(())
}

struct Setup {
    router: Router,
    metrics: Arc<Metrics>,
    shutdown: ShutdownListener,
    shutdown_timeout: Duration,
}

/// What the connections of one worker share.
struct Worker {
    router: RefCell<Router>,
    ingest_waiting: LocalNotify,
    /// Wakes the log sync when an answer waits for it (`--durability host`).
    sync_wanted: LocalNotify,
    /// Rung after each sync of the log.
    log_synced: LocalBroadcast,
    draining: Notify,
    open: Cell<usize>,
}

fn run_worker(setup: Setup, place: WorkerPlace, ready: Ready) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, serve(setup, place, ready)),
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

fn bind(
    listen: SocketAddr,
    shutdown: ShutdownListener,
) -> io::Result<(TcpListener, tokio::net::UnixStream)> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(4096)?;
    let shutdown = shutdown.into_std();
    shutdown.set_nonblocking(true)?;
    Ok((listener, tokio::net::UnixStream::from_std(shutdown)?))
}

async fn serve(setup: Setup, place: WorkerPlace, ready: Ready) {
    let bound = bind(place.listen, setup.shutdown);
    let Some((listener, shutdown)) = worker::announce(&ready, bound, TcpListener::local_addr)
    else {
        return;
    };

    let worker = Rc::new(Worker {
        router: RefCell::new(setup.router),
        ingest_waiting: LocalNotify::default(),
        sync_wanted: LocalNotify::default(),
        log_synced: LocalBroadcast::default(),
        draining: Notify::new(),
        open: Cell::new(0),
    });
    let flusher = Rc::clone(&worker);
    tokio::task::spawn_local(async move {
        tasks::flush_when_notified(
            &flusher.ingest_waiting,
            || flusher.router.borrow_mut().ingest().flush(),
            tokio::time::sleep,
        )
        .await;
    });

    let sync_interval = worker
        .router
        .borrow_mut()
        .ingest()
        .log()
        .map(|l| l.sync_interval());
    if let Some(interval) = sync_interval {
        tokio::task::spawn_local(sync_log(Rc::clone(&worker), interval, setup.metrics));
    }

    let mut stop = pin!(shutdown.readable());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(connection(stream, Rc::clone(&worker)));
                }
                Err(e) => {
                    log::warn!("worker {}: accept failed: {e}", place.index);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    worker::stop_listening(&listener);
    drop(listener);
    worker.router.borrow_mut().start_draining();
    worker.draining.notify_waiters();
    tasks::finish_after_drain(
        place.index,
        || worker.open.get(),
        || worker.router.borrow_mut().ingest().finish(),
        tokio::time::sleep,
        setup.shutdown_timeout,
    )
    .await;
}

async fn sync_log(worker: Rc<Worker>, interval: Duration, metrics: Arc<Metrics>) {
    tasks::sync_log(
        tasks::LogSync {
            wanted: &worker.sync_wanted,
            done: &worker.log_synced,
            interval,
            metrics: &metrics,
        },
        |with| {
            if let Some(log) = worker.router.borrow_mut().ingest().log() {
                with(log);
            }
        },
        |file| async move {
            tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        },
        tokio::time::sleep,
    )
    .await;
}

async fn connection(stream: TcpStream, worker: Rc<Worker>) {
    if worker.router.borrow().is_draining() {
        return;
    }
    worker.open.set(worker.open.get() + 1);
    let _ = stream.set_nodelay(true);
    let answering = Rc::clone(&worker);
    let service = service_fn(move |request: Request<Incoming>| {
        let (response, logged) = answer(&answering, &request);
        let worker = Rc::clone(&answering);
        async move {
            if let Some(records) = logged
                && !tasks::wait_for_sync(&worker.sync_wanted, &worker.log_synced, || {
                    let mut router = worker.router.borrow_mut();
                    router.ingest().records_synced(records)
                })
                .await
            {
                return Err(io::Error::other("the log's sync failed: no answer"));
            }
            Ok(response)
        }
    });
    let conn = http1::Builder::new()
        .pipeline_flush(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = worker.draining.notified() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    worker.open.set(worker.open.get() - 1);
}

/// The answer, and (`--durability host`) the log records that must be on disk before it goes.
fn answer(worker: &Worker, request: &Request<Incoming>) -> (Response<Full<Bytes>>, Option<u64>) {
    let method = match *request.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::HEAD => Method::Head,
        _ => Method::Other,
    };
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // As verve's codec does: one traceparent, and the tracestate when there is one.
    let headers = request.headers();
    let one = |name: &str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes()),
            _ => None,
        }
    };
    let trace = one("traceparent").map(|traceparent| TraceHeaders {
        traceparent,
        tracestate: one("tracestate"),
    });
    let (routed, draining, logged) = {
        let mut worker_router = worker.router.borrow_mut();
        let window = worker_router.window_of(SystemTime::now());
        let routed = worker_router.route(method, target.as_bytes(), trace, window);
        let ingest = worker_router.ingest();
        ingest.settle();
        if !ingest.is_empty() {
            worker.ingest_waiting.notify();
        }
        let logged = ingest.records_to_await();
        (routed, worker_router.is_draining(), logged)
    };
    let body = match routed.body {
        std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(routed.status.code())
        .expect("verve's statuses are valid HTTP statuses");
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(allow) = routed.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if routed.status == Status::ServiceUnavailable && draining {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    (response, logged)
}
