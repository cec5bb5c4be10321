//! `/metrics`, in the Prometheus text format (prometheus-client). Each worker counts its own
//! requests in its own cache line with plain loads and stores (one writer, no locked
//! instructions); a scrape sums the workers. The recorder, the callback pool and the sinks
//! count in shared atomics off the request path.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::answer::{Route, Status};
use crate::health::Readiness;
use crate::report::Mode;

/// One counter per route and status.
const SLOTS: usize = Route::ALL.len() * Status::ALL.len();

/// The slot of a route and a status: `Route::ALL` and `Status::ALL` list them in declaration
/// order, so a discriminant is an index.
fn slot(route: Route, status: Status) -> usize {
    route as usize * Status::ALL.len() + status as usize
}

/// Callback outcomes counted apart.
#[derive(Debug, Clone, Copy)]
pub enum CallbackOutcome {
    /// The endpoint answered 2xx.
    Status2xx,
    /// The endpoint answered 3xx (redirections are not followed).
    Status3xx,
    /// The endpoint answered 4xx.
    Status4xx,
    /// The endpoint answered 5xx.
    Status5xx,
    /// No answer within `--callback-timeout-ms`.
    Timeout,
    /// Refused by the address policy.
    Refused,
    /// A connection or protocol error.
    Error,
    /// Not sent: the queue was full.
    Dropped,
    /// Skipped: the destination's circuit breaker was open.
    CircuitOpen,
}

impl CallbackOutcome {
    /// Every outcome, in declaration order: an outcome's discriminant is its index.
    pub const ALL: [CallbackOutcome; 9] = [
        CallbackOutcome::Status2xx,
        CallbackOutcome::Status3xx,
        CallbackOutcome::Status4xx,
        CallbackOutcome::Status5xx,
        CallbackOutcome::Timeout,
        CallbackOutcome::Refused,
        CallbackOutcome::Error,
        CallbackOutcome::Dropped,
        CallbackOutcome::CircuitOpen,
    ];

    /// The `outcome` label of `verve_callbacks_total`.
    pub fn label(self) -> &'static str {
        match self {
            CallbackOutcome::Status2xx => "2xx",
            CallbackOutcome::Status3xx => "3xx",
            CallbackOutcome::Status4xx => "4xx",
            CallbackOutcome::Status5xx => "5xx",
            CallbackOutcome::Timeout => "timeout",
            CallbackOutcome::Refused => "refused",
            CallbackOutcome::Error => "error",
            CallbackOutcome::Dropped => "dropped",
            CallbackOutcome::CircuitOpen => "circuit_open",
        }
    }
}

/// Why a callback was shed (not sent): counted apart, and each also as `dropped`.
#[derive(Debug, Clone, Copy)]
pub enum ShedReason {
    /// The callback queue was full.
    QueueFull,
    /// Its destination's line behind the bulkhead was full.
    BulkheadsFull,
    /// Distributed: as many callbacks as the queue holds already waited for their window's
    /// global count.
    WaitingForCount,
}

impl ShedReason {
    /// Every reason, in declaration order: a reason's discriminant is its index.
    pub const ALL: [ShedReason; 3] = [
        ShedReason::QueueFull,
        ShedReason::BulkheadsFull,
        ShedReason::WaitingForCount,
    ];

    /// The `reason` label of `verve_callbacks_shed_total`.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::BulkheadsFull => "bulkheads_full",
            ShedReason::WaitingForCount => "waiting_for_count",
        }
    }

    /// What the log line says.
    pub fn describe(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "callback queue full",
            ShedReason::BulkheadsFull => "callback bulkheads full",
            ShedReason::WaitingForCount => "too many callbacks waiting for the global count",
        }
    }
}

/// One worker's counters, written only by that worker.
#[repr(align(128))]
struct WorkerCounters {
    requests: [AtomicU64; SLOTS],
    ids_forwarded: AtomicU64,
    window_ids_refused: AtomicU64,
}

/// Adds `n` to a counter that only the calling thread writes: a plain load and store.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Every counter of the process.
pub struct Metrics {
    workers: Box<[WorkerCounters]>,
    driver: AtomicU64,
    window_distinct_ids: AtomicU64,
    reports: [AtomicU64; Mode::ALL.len()],
    callbacks: [AtomicU64; CallbackOutcome::ALL.len()],
    callbacks_shed: [AtomicU64; ShedReason::ALL.len()],
    ingest_queue_len: AtomicU64,
    callback_queue_len: AtomicU64,
    callback_circuits_open: AtomicU64,
    redis_round_trips: Timed,
    redis_nodes: Mutex<BTreeMap<String, RedisNodeCounters>>,
    redis_redirects: [AtomicU64; 2],
    redis_unconfirmed_ids: AtomicU64,
    kafka_deliveries: Timed,
    kafka_failed: AtomicU64,
    late_ids: AtomicU64,
    wal_errors: AtomicU64,
    wal_bytes: AtomicU64,
    wal_torn_bytes: AtomicU64,
    wal_recovered_ids: AtomicU64,
    wal_syncs: Timed,
    wal_late_syncs: AtomicU64,
    /// End of the last window reported here, in Unix seconds (0: none yet).
    last_report_window_end: AtomicU64,
    readiness: OnceLock<Readiness>,
    bounds: OnceLock<Bounds>,
}

/// What start-up settled, exposed so that alert rules compare with it rather than with
/// numbers copied from the flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    /// `--ingest-queue`, in batches.
    pub ingest_queue_batches: usize,
    /// `--callback-queue`, in jobs.
    pub callback_queue_jobs: usize,
    /// `--window-secs`.
    pub window_secs: u64,
    /// How long after its window's end a report is written at the latest: the grace, and
    /// `--report-max-delay-secs` when distributed.
    pub report_deadline: Duration,
}

/// What happened with one Redis node.
#[derive(Default, Clone, Copy)]
struct RedisNodeCounters {
    errors: u64,
    connects: u64,
}

/// Operations and the whole microseconds they took, for a mean over any interval.
#[derive(Default)]
struct Timed {
    count: AtomicU64,
    micros: AtomicU64,
}

impl Timed {
    fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Saturating: a u64 of microseconds is 584,000 years.
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Metrics {
    /// The counters of a process with `workers` workers, all zero.
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| WorkerCounters {
                    requests: std::array::from_fn(|_| AtomicU64::new(0)),
                    ids_forwarded: AtomicU64::new(0),
                    window_ids_refused: AtomicU64::new(0),
                })
                .collect(),
            driver: AtomicU64::new(0),
            window_distinct_ids: AtomicU64::new(0),
            reports: Default::default(),
            callbacks: Default::default(),
            callbacks_shed: Default::default(),
            ingest_queue_len: AtomicU64::new(0),
            callback_queue_len: AtomicU64::new(0),
            callback_circuits_open: AtomicU64::new(0),
            redis_round_trips: Timed::default(),
            redis_nodes: Mutex::new(BTreeMap::new()),
            redis_redirects: Default::default(),
            redis_unconfirmed_ids: AtomicU64::new(0),
            kafka_deliveries: Timed::default(),
            kafka_failed: AtomicU64::new(0),
            late_ids: AtomicU64::new(0),
            wal_errors: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(0),
            wal_torn_bytes: AtomicU64::new(0),
            wal_recovered_ids: AtomicU64::new(0),
            wal_syncs: Timed::default(),
            wal_late_syncs: AtomicU64::new(0),
            last_report_window_end: AtomicU64::new(0),
            readiness: OnceLock::new(),
            bounds: OnceLock::new(),
        }
    }

    /// What `verve_ready` reflects (once, at start-up).
    pub fn set_readiness(&self, readiness: Readiness) {
        let _ = self.readiness.set(readiness);
    }

    /// The queues' capacities and the report deadline (once, at start-up).
    pub fn set_bounds(&self, bounds: Bounds) {
        let _ = self.bounds.set(bounds);
    }

    /// Worker `worker` answered a request of `route`.
    pub fn request(&self, worker: usize, route: Route, status: Status) {
        add(&self.workers[worker].requests[slot(route, status)], 1);
    }

    /// Worker `worker` handed `ids` new to it to the recorder.
    pub fn ids_forwarded(&self, worker: usize, ids: u64) {
        add(&self.workers[worker].ids_forwarded, ids);
    }

    /// A new id was refused: its window holds `--max-window-ids` ids.
    pub fn window_id_refused(&self, worker: usize) {
        add(&self.workers[worker].window_ids_refused, 1);
    }

    /// 1 for `io_uring`, 2 for epoll.
    pub fn set_driver_uring(&self, uring: bool) {
        self.driver
            .store(if uring { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// The current window's distinct ids, on this instance.
    pub fn set_window_distinct_ids(&self, n: u64) {
        self.window_distinct_ids.store(n, Ordering::Relaxed);
    }

    /// A report of the window ending at `window_end_secs` (Unix seconds) was written.
    pub fn report(&self, mode: Mode, window_end_secs: u64) {
        self.reports[mode as usize].fetch_add(1, Ordering::Relaxed);
        self.last_report_window_end
            .fetch_max(window_end_secs, Ordering::Relaxed);
    }

    /// A callback ended with `outcome`.
    pub fn callback(&self, outcome: CallbackOutcome) {
        self.callbacks[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A callback was shed for `reason`: counted by reason and as `dropped`.
    pub fn callback_shed(&self, reason: ShedReason) {
        self.callbacks_shed[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.callback(CallbackOutcome::Dropped);
    }

    /// Batches waiting for the recorder and callbacks waiting for a sender.
    pub fn set_queue_lengths(&self, ingest_batches: usize, callback_jobs: usize) {
        self.ingest_queue_len
            .store(ingest_batches as u64, Ordering::Relaxed);
        self.callback_queue_len
            .store(callback_jobs as u64, Ordering::Relaxed);
    }

    /// Destinations whose circuit breaker is open.
    pub fn set_callback_circuits_open(&self, destinations: usize) {
        self.callback_circuits_open
            .store(destinations as u64, Ordering::Relaxed);
    }

    /// A pipeline to Redis took `took`.
    pub fn redis_round_trip(&self, took: Duration) {
        self.redis_round_trips.record(took);
    }

    /// A call to a Redis node failed (connection, timeout, error reply).
    pub fn redis_node_error(&self, node: &str) {
        self.redis_node(node, |c| c.errors += 1);
    }

    /// A connection to a Redis node was opened.
    pub fn redis_node_connected(&self, node: &str) {
        self.redis_node(node, |c| c.connects += 1);
    }

    fn redis_node(&self, node: &str, update: impl FnOnce(&mut RedisNodeCounters)) {
        let mut nodes = self.redis_nodes.lock().expect("metrics lock");
        update(nodes.entry(node.to_owned()).or_default());
    }

    /// A MOVED (`ask` false) or ASK redirection was followed.
    pub fn redis_redirect(&self, ask: bool) {
        self.redis_redirects[usize::from(ask)].fetch_add(1, Ordering::Relaxed);
    }

    /// Ids this instance holds that Redis has not confirmed.
    pub fn set_redis_unconfirmed_ids(&self, n: u64) {
        self.redis_unconfirmed_ids.store(n, Ordering::Relaxed);
    }

    /// A report reached the brokers `round_trip` after it was queued.
    pub fn kafka_delivered(&self, round_trip: Duration) {
        self.kafka_deliveries.record(round_trip);
    }

    /// A report could not be delivered to Kafka.
    pub fn kafka_failed(&self) {
        self.kafka_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Ids in no report: they arrived after their window's report, or (distributed) too late
    /// to amend it.
    pub fn late_ids(&self, ids: u64) {
        self.late_ids.fetch_add(ids, Ordering::Relaxed);
    }

    /// The write-ahead log refused a write or a sync failed.
    pub fn wal_error(&self) {
        self.wal_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The log's segments hold `delta` more bytes on disk (fewer when negative).
    pub fn wal_allocated(&self, delta: i64) {
        if delta >= 0 {
            self.wal_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.wal_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Recovery cut a torn or corrupt tail of `bytes`.
    pub fn wal_torn(&self, bytes: u64) {
        self.wal_torn_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Recovery read `ids` ids back from the log.
    pub fn wal_recovered(&self, ids: u64) {
        self.wal_recovered_ids.fetch_add(ids, Ordering::Relaxed);
    }

    /// A sync of the log took `took`.
    pub fn wal_synced(&self, took: Duration) {
        self.wal_syncs.record(took);
    }

    /// A sync of the log ended `--wal-fsync-ms` or more after its oldest record was appended.
    pub fn wal_late_sync(&self) {
        self.wal_late_syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Kafka reports delivered and failed so far.
    pub fn kafka_totals(&self) -> (u64, u64) {
        (load(&self.kafka_deliveries.count), load(&self.kafka_failed))
    }

    /// The Prometheus text exposition.
    ///
    /// # Panics
    ///
    /// Never: the text is written into a `String`.
    pub fn render(self: &std::sync::Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(std::sync::Arc::clone(self))));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A worker's handle on the metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// The process's metrics.
    pub metrics: std::sync::Arc<Metrics>,
    /// The worker's index.
    pub index: usize,
}

impl WorkerMetrics {
    /// The metrics of a process with this one worker (for tests and benchmarks).
    pub fn single() -> WorkerMetrics {
        WorkerMetrics {
            metrics: std::sync::Arc::new(Metrics::new(1)),
            index: 0,
        }
    }

    /// The worker answered a request of `route`.
    pub fn request(&self, route: Route, status: Status) {
        self.metrics.request(self.index, route, status);
    }

    /// The worker refused a new id: its window is full.
    pub fn window_id_refused(&self) {
        self.metrics.window_id_refused(self.index);
    }
}

/// Reads every counter at scrape time.
struct Scrape(std::sync::Arc<Metrics>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let g = ConstGauge::new(value as i64);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label.
fn labelled_counters<'v>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'v str, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let m = &self.0;
        let mut family = encoder.encode_descriptor(
            "verve_requests",
            "HTTP requests answered, by route and status",
            None,
            MetricType::Counter,
        )?;
        for route in Route::ALL {
            for status in Status::ALL {
                let n: u64 = m
                    .workers
                    .iter()
                    .map(|w| load(&w.requests[slot(route, status)]))
                    .sum();
                if n > 0 {
                    let code = status.code().to_string();
                    let labels = [("route", route.label()), ("status", code.as_str())];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let forwarded = m.workers.iter().map(|w| load(&w.ids_forwarded)).sum();
        counter(
            &mut encoder,
            "verve_ids_forwarded",
            "ids new to their worker, sent to the recorder",
            forwarded,
        )?;
        let refused = m.workers.iter().map(|w| load(&w.window_ids_refused)).sum();
        counter(
            &mut encoder,
            "verve_window_ids_refused",
            "new ids answered 503: their window held --max-window-ids ids",
            refused,
        )?;
        gauge(
            &mut encoder,
            "verve_window_distinct_ids",
            "distinct ids of the current window (this instance)",
            load(&m.window_distinct_ids),
        )?;
        let reports = Mode::ALL
            .into_iter()
            .map(|mode| (mode.as_str(), load(&m.reports[mode as usize])));
        labelled_counters(
            &mut encoder,
            "verve_reports",
            "window reports written, by mode",
            "mode",
            reports,
        )?;
        let callbacks = CallbackOutcome::ALL
            .into_iter()
            .map(|outcome| (outcome.label(), load(&m.callbacks[outcome as usize])));
        labelled_counters(
            &mut encoder,
            "verve_callbacks",
            "callbacks, by outcome",
            "outcome",
            callbacks,
        )?;
        let shed = ShedReason::ALL
            .into_iter()
            .map(|reason| (reason.label(), load(&m.callbacks_shed[reason as usize])));
        labelled_counters(
            &mut encoder,
            "verve_callbacks_shed",
            "callbacks not sent (each also counted as dropped), by reason",
            "reason",
            shed,
        )?;
        gauge(
            &mut encoder,
            "verve_ingest_queue_batches",
            "batches waiting for the recorder",
            load(&m.ingest_queue_len),
        )?;
        gauge(
            &mut encoder,
            "verve_callback_queue_jobs",
            "callbacks waiting for a sender",
            load(&m.callback_queue_len),
        )?;
        gauge(
            &mut encoder,
            "verve_callback_circuits_open",
            "callback destinations whose circuit breaker is open",
            load(&m.callback_circuits_open),
        )?;
        counter(
            &mut encoder,
            "verve_redis_round_trips",
            "pipelines sent to Redis",
            load(&m.redis_round_trips.count),
        )?;
        counter(
            &mut encoder,
            "verve_redis_round_trip_microseconds",
            "time spent in Redis pipelines",
            load(&m.redis_round_trips.micros),
        )?;
        let nodes: Vec<(String, RedisNodeCounters)> = m
            .redis_nodes
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(node, c)| (node.clone(), *c))
            .collect();
        labelled_counters(
            &mut encoder,
            "verve_redis_errors",
            "failed Redis calls and connections, by node",
            "node",
            nodes.iter().map(|(node, c)| (node.as_str(), c.errors)),
        )?;
        labelled_counters(
            &mut encoder,
            "verve_redis_connects",
            "connections opened to Redis, by node (more than one: reconnects)",
            "node",
            nodes.iter().map(|(node, c)| (node.as_str(), c.connects)),
        )?;
        let redirects = [
            ("moved", load(&m.redis_redirects[0])),
            ("ask", load(&m.redis_redirects[1])),
        ];
        labelled_counters(
            &mut encoder,
            "verve_redis_redirections",
            "Redis Cluster redirections followed, by kind",
            "kind",
            redirects,
        )?;
        gauge(
            &mut encoder,
            "verve_redis_unconfirmed_ids",
            "ids this instance holds that Redis has not confirmed",
            load(&m.redis_unconfirmed_ids),
        )?;
        let deliveries = [
            ("delivered", load(&m.kafka_deliveries.count)),
            ("failed", load(&m.kafka_failed)),
        ];
        labelled_counters(
            &mut encoder,
            "verve_kafka_deliveries",
            "Kafka delivery results",
            "result",
            deliveries,
        )?;
        counter(
            &mut encoder,
            "verve_kafka_delivery_microseconds",
            "time from queueing a report to its acknowledgement by the brokers, delivered reports",
            load(&m.kafka_deliveries.micros),
        )?;
        counter(
            &mut encoder,
            "verve_late_ids",
            "ids in no report: they arrived after their window's report, or too late to amend it",
            load(&m.late_ids),
        )?;
        counter(
            &mut encoder,
            "verve_wal_errors",
            "writes the write-ahead log refused (answered 503) and syncs of it that failed",
            load(&m.wal_errors),
        )?;
        gauge(
            &mut encoder,
            "verve_wal_bytes",
            "bytes the write-ahead log's segments take on disk",
            load(&m.wal_bytes),
        )?;
        counter(
            &mut encoder,
            "verve_wal_torn_bytes",
            "bytes of torn or corrupt segment tails cut at start-up",
            load(&m.wal_torn_bytes),
        )?;
        counter(
            &mut encoder,
            "verve_wal_recovered_ids",
            "ids read back from the write-ahead log at start-up",
            load(&m.wal_recovered_ids),
        )?;
        counter(
            &mut encoder,
            "verve_wal_syncs",
            "fdatasyncs of the write-ahead log",
            load(&m.wal_syncs.count),
        )?;
        counter(
            &mut encoder,
            "verve_wal_sync_microseconds",
            "time the fdatasyncs of the write-ahead log took",
            load(&m.wal_syncs.micros),
        )?;
        counter(
            &mut encoder,
            "verve_wal_late_syncs",
            "syncs of the write-ahead log that ended --wal-fsync-ms or more after their oldest \
             record (--durability process: answers waited for them)",
            load(&m.wal_late_syncs),
        )?;
        gauge(
            &mut encoder,
            "verve_last_report_window_end_seconds",
            "end of the last window this instance reported, in Unix seconds (0: none yet)",
            load(&m.last_report_window_end),
        )?;
        let bounds = m.bounds.get().copied().unwrap_or_default();
        gauge(
            &mut encoder,
            "verve_window_seconds",
            "length of a window (--window-secs)",
            bounds.window_secs,
        )?;
        let deadline = ConstGauge::new(bounds.report_deadline.as_secs_f64());
        deadline.encode(encoder.encode_descriptor(
            "verve_report_deadline_seconds",
            "how long after its window's end a report is written at the latest",
            None,
            deadline.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "verve_ingest_queue_capacity_batches",
            "batches the ingest queue holds at most (--ingest-queue)",
            bounds.ingest_queue_batches as u64,
        )?;
        gauge(
            &mut encoder,
            "verve_callback_queue_capacity_jobs",
            "callbacks the callback queue holds at most (--callback-queue)",
            bounds.callback_queue_jobs as u64,
        )?;
        let ready = m.readiness.get().is_none_or(|r| r.not_ready().is_none());
        gauge(
            &mut encoder,
            "verve_ready",
            "1 while /readyz answers 200 (Redis and the Kafka topic, where configured, answer)",
            u64::from(ready),
        )?;
        let driver = match load(&m.driver) {
            1 => "io_uring",
            2 => "epoll",
            _ => "none",
        };
        let mut family = encoder.encode_descriptor(
            "verve_io_driver",
            "the I/O driver of the workers",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(family.encode_family(&[("driver", driver)])?)?;
        let mut family = encoder.encode_descriptor(
            "verve_build_info",
            "the running build",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are indexed by discriminant: each `ALL` must list its enum in
    /// declaration order.
    fn assert_own_indexes<T: Copy + std::fmt::Debug>(all: &[T], index: fn(T) -> usize) {
        for (i, value) in all.iter().enumerate() {
            assert_eq!(index(*value), i, "{value:?}");
        }
    }

    #[test]
    fn every_counted_enum_is_its_own_index() {
        assert_own_indexes(&Route::ALL, |r| r as usize);
        assert_own_indexes(&Status::ALL, |s| s as usize);
        assert_own_indexes(&Mode::ALL, |m| m as usize);
        assert_own_indexes(&CallbackOutcome::ALL, |o| o as usize);
    }
}
