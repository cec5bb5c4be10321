//! The callback pool: blocking threads sending each request's count to its `endpoint`, with a
//! bounded queue that sheds instead of slowing anyone, each destination isolated by its
//! bulkhead and circuit breaker (`destinations`), and an address policy checked after
//! DNS resolution so that a request cannot aim verve at internal services.

mod destinations;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::{Agent, RequestBuilder};

use crate::config::{CallbackMethod, CallbackSettings};
use crate::logs::CALLBACK_TARGET;
use crate::metrics::{CallbackOutcome, Metrics, ShedReason};
use crate::rate_limit::RateLimit;
use crate::trace::{SpanIds, TraceContext};
use destinations::{
    Admission, BreakerChange, Destination, Destinations, IsolationSettings, SendResult,
};

/// One callback to send.
#[derive(Debug)]
pub struct CallbackJob {
    /// Where it goes.
    pub endpoint: Uri,
    /// The window's count when the request's id was counted.
    pub count: u64,
    /// The window's start, RFC 3339.
    pub window_start: String,
    /// The window's length.
    pub window_secs: u64,
    /// The accept request's trace context: the callback is a child span of it.
    pub trace: Option<TraceContext>,
}

#[derive(Serialize)]
struct PostBody<'a> {
    count: u64,
    window_start: &'a str,
    window_secs: u64,
}

/// The recorder's handle on the pool's queue.
pub struct CallbackQueue {
    tx: Sender<CallbackJob>,
    destinations: Arc<Destinations<CallbackJob>>,
    skips: Arc<Skips>,
    metrics: Arc<Metrics>,
    drops: Drops,
}

/// Drops are logged at most once, breaker changes at most `BREAKER_LOG_BURST` times, per
/// interval, with the number held back.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
const BREAKER_LOG_BURST: u32 = 20;
/// Skipped callbacks get a line in the callback log at most this often.
const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl CallbackQueue {
    /// Jobs waiting: in the queue and behind full bulkheads.
    pub fn len(&self) -> usize {
        self.tx.len() + self.destinations.waiting()
    }

    /// No callback waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Destinations whose circuit breaker is open.
    pub fn circuits_open(&self) -> usize {
        self.destinations.open()
    }

    /// Queues a job; skips it when its destination's breaker is open (so that a dead
    /// destination costs no thread a wake-up), drops it when the queue is full.
    pub fn offer(&mut self, job: CallbackJob) {
        let now = Instant::now();
        if self
            .destinations
            .is_open(&Destination::of(&job.endpoint), now)
        {
            self.skips.record(&self.metrics, &job, now);
            return;
        }
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.tx.try_send(job)
        {
            self.drops
                .record(&self.metrics, &job.endpoint, ShedReason::QueueFull);
        }
    }

    /// Sheds a callback to `endpoint` that was never queued, for `reason`: counted and logged
    /// as the queue's own drops are.
    pub fn shed(&mut self, endpoint: &Uri, reason: ShedReason) {
        self.drops.record(&self.metrics, endpoint, reason);
    }

    /// How many jobs the queue holds at most (`--callback-queue`).
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }
}

/// Callbacks skipped because their destination's breaker is open: each counted; one line in
/// the callback log per interval says how many, so that a dead destination under full load
/// does not cost a log write per request.
struct Skips {
    log: Mutex<RateLimit>,
}

impl Skips {
    fn record(&self, metrics: &Metrics, job: &CallbackJob, now: Instant) {
        metrics.callback(CallbackOutcome::CircuitOpen);
        let allowed = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(now);
        if let Some(held_back) = allowed {
            log::info!(
                target: CALLBACK_TARGET,
                "callback {} count={} skipped: circuit open ({held_back} more skipped since the \
                 last such line)",
                job.endpoint,
                job.count
            );
        }
    }
}

/// Callbacks dropped, counted and logged at a limited rate.
struct Drops {
    total: u64,
    log: RateLimit,
}

impl Drops {
    fn new() -> Drops {
        Drops {
            total: 0,
            log: RateLimit::new(LOG_INTERVAL, 1),
        }
    }

    fn record(&mut self, metrics: &Metrics, endpoint: &Uri, reason: ShedReason) {
        metrics.callback_shed(reason);
        self.total += 1;
        if let Some(held_back) = self.log.allow(Instant::now()) {
            log::warn!(
                "{}: dropped {} callbacks ({} in all), latest to {endpoint}",
                reason.describe(),
                held_back + 1,
                self.total,
            );
        }
    }
}

/// The sending threads.
pub struct CallbackPool {
    threads: Vec<JoinHandle<()>>,
    done: Receiver<()>,
    queue: Receiver<CallbackJob>,
    destinations: Arc<Destinations<CallbackJob>>,
}

impl CallbackPool {
    /// Starts `--callback-threads` threads sharing one agent.
    pub fn start(
        settings: &CallbackSettings,
        metrics: &Arc<Metrics>,
    ) -> io::Result<(CallbackQueue, CallbackPool)> {
        let (tx, rx) = bounded(settings.queue);
        let (done_tx, done) = bounded(settings.threads);
        let destinations = Arc::new(Destinations::new(IsolationSettings {
            max_in_flight: settings.max_in_flight,
            breaker_failures: settings.breaker_failures,
            cooldown: settings.breaker_cooldown,
            max_waiting: settings.queue,
        }));
        let skips = Arc::new(Skips {
            log: Mutex::new(RateLimit::new(SKIP_LOG_INTERVAL, 1)),
        });
        let isolated = Arc::new(IsolatedSender {
            sender: CallbackSender::new(settings, Arc::clone(metrics)),
            destinations: Arc::clone(&destinations),
            skips: Arc::clone(&skips),
            drops: Mutex::new(Drops::new()),
            breaker_log: Mutex::new(RateLimit::new(LOG_INTERVAL, BREAKER_LOG_BURST)),
        });
        let threads = (0..settings.threads)
            .map(|i| {
                let rx: Receiver<CallbackJob> = rx.clone();
                let done_tx = done_tx.clone();
                let isolated = Arc::clone(&isolated);
                std::thread::Builder::new()
                    .name(format!("verve-callback-{i}"))
                    .spawn(move || {
                        let mut span_ids = SpanIds::default();
                        for job in rx {
                            isolated.take(job, &mut span_ids);
                        }
                        let _ = done_tx.send(());
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queue = CallbackQueue {
            tx,
            destinations: Arc::clone(&destinations),
            skips,
            metrics: Arc::clone(metrics),
            drops: Drops::new(),
        };
        Ok((
            queue,
            CallbackPool {
                threads,
                done,
                queue: rx,
                destinations,
            },
        ))
    }

    /// Waits, until `deadline`, for the threads to send what is queued; the queue's sender
    /// (the recorder's `CallbackQueue`) must be dropped first. What is still queued at the
    /// deadline is logged and abandoned.
    pub fn finish(self, deadline: Instant) {
        let mut running = self.threads.len();
        while running > 0 {
            match self
                .done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(()) => running -= 1,
                Err(_) => break,
            }
        }
        if running == 0 {
            for t in self.threads {
                let _ = t.join();
            }
        } else {
            log::warn!(
                "shutdown: {} callbacks left unsent, {running} still in progress",
                self.queue.len() + self.destinations.waiting()
            );
        }
    }
}

/// A pool thread's view: the sender behind the destinations' bulkheads and breakers.
struct IsolatedSender {
    sender: CallbackSender,
    destinations: Arc<Destinations<CallbackJob>>,
    skips: Arc<Skips>,
    /// Jobs with no room behind their destination's bulkhead.
    drops: Mutex<Drops>,
    breaker_log: Mutex<RateLimit>,
}

impl IsolatedSender {
    /// Sends a job taken from the queue (or parks it behind its destination's bulkhead), then
    /// whatever of that destination's line the bulkhead lets through.
    fn take(&self, job: CallbackJob, span_ids: &mut SpanIds) {
        let destination = Destination::of(&job.endpoint);
        let now = Instant::now();
        let mut next = match self.destinations.admit(job, &destination, now) {
            Admission::Send(job) => Some(job),
            Admission::Waiting => None,
            Admission::CircuitOpen(job) => {
                self.skips.record(&self.sender.metrics, &job, now);
                None
            }
            Admission::NoRoom(job) => {
                let mut drops = self
                    .drops
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                drops.record(
                    &self.sender.metrics,
                    &job.endpoint,
                    ShedReason::BulkheadsFull,
                );
                None
            }
        };
        while let Some(job) = next {
            let result = self.sender.send(&job, span_ids);
            let now = Instant::now();
            let after = self.destinations.finished(&destination, result, now);
            for job in &after.skipped {
                self.skips.record(&self.sender.metrics, job, now);
            }
            if let Some(change) = after.change {
                self.log_change(&change);
            }
            next = after.next;
        }
    }

    fn log_change(&self, change: &BreakerChange) {
        let allowed = self
            .breaker_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(Instant::now());
        let Some(held_back) = allowed else { return };
        let others = if held_back == 0 {
            String::new()
        } else {
            format!(" ({held_back} breaker changes since the last line not logged)")
        };
        match change {
            BreakerChange::Opened {
                destination,
                failures,
            } => log::warn!(
                "callbacks to {destination}: circuit open after {failures} consecutive failures; \
                 skipped for {} ms, then probed{others}",
                self.destinations.cooldown().as_millis()
            ),
            BreakerChange::Closed { destination } => {
                log::info!(
                    "callbacks to {destination}: circuit closed, the probe was answered{others}"
                );
            }
        }
    }
}

/// What a pool thread needs to send a job.
struct CallbackSender {
    agent: Agent,
    method: CallbackMethod,
    metrics: Arc<Metrics>,
}

impl CallbackSender {
    fn new(settings: &CallbackSettings, metrics: Arc<Metrics>) -> Self {
        let agent_config = Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .http_status_as_error(false)
            .user_agent(concat!("verve/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = PolicyResolver {
            allow_private: settings.allow_private,
        };
        CallbackSender {
            agent: Agent::with_parts(agent_config, DefaultConnector::default(), resolver),
            method: settings.method,
            metrics,
        }
    }

    /// Sends one callback; counts and logs its outcome.
    fn send(&self, job: &CallbackJob, span_ids: &mut SpanIds) -> SendResult {
        let trace = job
            .trace
            .as_ref()
            .map(|t| (t.child_traceparent(span_ids.next_id()), t.tracestate()));
        let result = match self.method {
            CallbackMethod::Post => {
                let body = serde_json::to_string(&PostBody {
                    count: job.count,
                    window_start: &job.window_start,
                    window_secs: job.window_secs,
                })
                .expect("a struct of numbers and a string serializes");
                traced(self.agent.post(&job.endpoint), trace.as_ref())
                    .content_type("application/json")
                    .send(body)
            }
            CallbackMethod::Get => traced(
                self.agent.get(with_count(&job.endpoint, job.count)),
                trace.as_ref(),
            )
            .call(),
        };
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                self.metrics.callback(match status {
                    200..=299 => CallbackOutcome::Status2xx,
                    300..=399 => CallbackOutcome::Status3xx,
                    400..=499 => CallbackOutcome::Status4xx,
                    _ => CallbackOutcome::Status5xx,
                });
                // Read a little of the body so the connection can be reused.
                let _ = response
                    .into_body()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec();
                log::info!(
                    target: CALLBACK_TARGET,
                    "callback {} count={} status={status}",
                    job.endpoint,
                    job.count
                );
                SendResult::Answered
            }
            Err(ureq::Error::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.metrics.callback(CallbackOutcome::Refused);
                log::warn!(target: CALLBACK_TARGET, "callback {} refused: {e}", job.endpoint);
                SendResult::NotSent
            }
            Err(e) => {
                self.metrics.callback(match e {
                    ureq::Error::Timeout(_) => CallbackOutcome::Timeout,
                    _ => CallbackOutcome::Error,
                });
                log::warn!(
                    target: CALLBACK_TARGET,
                    "callback {} count={} failed: {e}",
                    job.endpoint,
                    job.count
                );
                SendResult::Failed
            }
        }
    }
}

/// The request with the child span's `traceparent` and the `tracestate`, when traced.
fn traced<B>(
    request: RequestBuilder<B>,
    trace: Option<&(String, Option<&str>)>,
) -> RequestBuilder<B> {
    let Some((traceparent, tracestate)) = trace else {
        return request;
    };
    let request = request.header("traceparent", traceparent);
    match tracestate {
        Some(tracestate) => request.header("tracestate", *tracestate),
        None => request,
    }
}

/// The endpoint with `count=N` added to its query.
fn with_count(endpoint: &Uri, count: u64) -> String {
    let separator = if endpoint.query().is_some() { '&' } else { '?' };
    format!("{endpoint}{separator}count={count}")
}

/// Resolves like ureq does, then keeps only addresses the policy allows, so the check applies
/// to the very addresses the connection uses.
#[derive(Debug)]
struct PolicyResolver {
    allow_private: bool,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut allowed = self.empty();
        for addr in resolved
            .iter()
            .filter(|a| address_allowed(a.ip(), self.allow_private))
        {
            allowed.push(*addr);
        }
        if allowed.is_empty() {
            let addrs: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
            return Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "address {} not allowed for callbacks (see --callback-allow-private)",
                    addrs.join(", ")
                ),
            )));
        }
        Ok(allowed)
    }
}

/// The address policy: public unicast addresses are allowed; loopback, private, unique-local
/// and CGNAT ones only with `allow_private`; link-local (cloud metadata lives there),
/// multicast, broadcast and unspecified ones never.
pub fn address_allowed(ip: IpAddr, allow_private: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_private),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_allowed(v4, allow_private),
            None => v6_allowed(v6, allow_private),
        },
    }
}

fn v4_allowed(ip: Ipv4Addr, allow_private: bool) -> bool {
    let [a, b, ..] = ip.octets();
    let never = ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || a == 0
        || a >= 240;
    let private = ip.is_loopback() || ip.is_private() || (a == 100 && (64..128).contains(&b));
    !never && (allow_private || !private)
}

fn v6_allowed(ip: Ipv6Addr, allow_private: bool) -> bool {
    let first = ip.segments()[0];
    let never = ip.is_unspecified() || ip.is_multicast() || (first & 0xffc0) == 0xfe80;
    let private = ip.is_loopback() || (first & 0xfe00) == 0xfc00;
    !never && (allow_private || !private)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(s: &str, allow_private: bool) -> bool {
        address_allowed(s.parse().unwrap(), allow_private)
    }

    #[test]
    fn public_addresses_are_allowed() {
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(allowed(a, false), "{a}");
        }
    }

    #[test]
    fn private_ranges_need_the_flag() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!allowed(a, false), "{a}");
            assert!(allowed(a, true), "{a}");
        }
    }

    #[test]
    fn link_local_multicast_and_unspecified_are_always_refused() {
        for a in [
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "fe80::1",
            "ff02::1",
            "::",
            "::ffff:169.254.169.254",
        ] {
            assert!(!allowed(a, true), "{a}");
        }
    }

    #[test]
    fn get_adds_count_to_the_query() {
        let plain: Uri = "http://example.com/hook".parse().unwrap();
        assert_eq!(with_count(&plain, 3), "http://example.com/hook?count=3");
        let query: Uri = "http://example.com/hook?a=1".parse().unwrap();
        assert_eq!(with_count(&query, 3), "http://example.com/hook?a=1&count=3");
    }
}
