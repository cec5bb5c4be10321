//! Routing and counting, independent of how the request was read: the same code answers for
//! verve's own codec and for the hyper-on-tokio baseline.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::query::{AcceptQuery, QueryError, parse_accept_query};
use super::request::Method;
use super::response::Status;
use crate::ingest::{CallbackRequest, Ingest, IngestBuffer};
use crate::kafka_sink::KafkaHealth;
use crate::logs::RateLimit;
use crate::metrics::WorkerMetrics;
use crate::redis::RedisHealth;
use crate::window::{WindowClock, WindowIndex};

pub const ACCEPT_PATH: &[u8] = b"/api/verve/accept";
pub const ALLOW: &str = "GET, HEAD";
/// Index in `metrics::ROUTES` of requests to no known route.
const OTHER_ROUTE: usize = 4;

/// The answer to one request, before it is written in any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub status: Status,
    pub body: Cow<'static, [u8]>,
    /// The `Allow` header of a `405`.
    pub allow: Option<&'static str>,
}

impl Routed {
    fn plain(status: Status) -> Routed {
        Routed {
            status,
            body: Cow::Borrowed(status.default_body()),
            allow: None,
        }
    }
}

/// What `/readyz` checks besides the worker listening.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// Set when verve counts through Redis.
    pub redis: Option<Arc<RedisHealth>>,
    /// Set when reports also go to Kafka.
    pub kafka: Option<Arc<KafkaHealth>>,
}

impl Readiness {
    /// `None` when ready, else what is not.
    fn not_ready(&self) -> Option<&'static [u8]> {
        let redis_down = self.redis.as_ref().is_some_and(|h| !h.is_up());
        let kafka_down = self.kafka.as_ref().is_some_and(|h| !h.is_up());
        match (redis_down, kafka_down) {
            (false, false) => None,
            (true, false) => Some(b"not ready: redis unreachable"),
            (false, true) => Some(b"not ready: kafka topic not writable"),
            (true, true) => Some(b"not ready: redis unreachable, kafka topic not writable"),
        }
    }
}

/// An accept request's query, parsed by `Router::prefetch` for routing that request next.
pub struct ParsedAhead(Result<AcceptQuery, QueryError>);

/// A worker's routing and counting state: its batch for the recorder.
pub struct Router {
    clock: WindowClock,
    ingest: IngestBuffer,
    scratch: Vec<u8>,
    draining: bool,
    readiness: Readiness,
    metrics: WorkerMetrics,
    /// Ids refused under `--max-window-ids` are logged at most once per interval per worker.
    bound_log: RateLimit,
}

/// How often a worker may log that it refuses new ids of a full window.
const BOUND_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Router {
    pub fn new(
        clock: WindowClock,
        ingest: IngestBuffer,
        readiness: Readiness,
        metrics: WorkerMetrics,
    ) -> Self {
        Router {
            clock,
            ingest,
            scratch: Vec::new(),
            draining: false,
            readiness,
            metrics,
            bound_log: RateLimit::new(BOUND_LOG_INTERVAL, 1),
        }
    }

    /// From now on, accept requests get `503 failed`.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The worker's batch for the recorder.
    pub fn ingest(&mut self) -> &mut IngestBuffer {
        &mut self.ingest
    }

    pub fn window_of(&self, now: SystemTime) -> WindowIndex {
        self.clock.window_of(now)
    }

    /// Answers one request that arrived in `window`; an accept request's id is counted when
    /// the answer is `200`.
    pub fn route(&mut self, method: Method, target: &[u8], window: WindowIndex) -> Routed {
        self.route_parsed(method, target, window, None)
    }

    /// Like `route`, for a request whose query `prefetch` parsed already.
    pub fn route_parsed(
        &mut self,
        method: Method,
        target: &[u8],
        window: WindowIndex,
        ahead: Option<ParsedAhead>,
    ) -> Routed {
        let (route, routed) = self.answer(method, target, window, ahead);
        self.metrics.request(route, routed.status);
        routed
    }

    /// Counts a request the parser refused before it could be routed.
    pub fn count_refused(&self, status: Status) {
        self.metrics.request(OTHER_ROUTE, status);
    }

    /// Parses an accept request's query ahead (for `route_parsed`) and starts loading where
    /// its id goes in the first-seen set while the request before it is answered: measured
    /// with pipelining, that starts the set's cache and TLB misses early enough to matter.
    pub fn prefetch(&mut self, target: &[u8], window: WindowIndex) -> Option<ParsedAhead> {
        let (path, query) = path_and_query(target);
        if path != ACCEPT_PATH {
            return None;
        }
        let parsed = parse_accept_query(query, &mut self.scratch);
        if let Ok(AcceptQuery { id, .. }) = &parsed {
            self.ingest.prefetch(window, *id);
        }
        Some(ParsedAhead(parsed))
    }

    /// The answer and the index of its route in `metrics::ROUTES`.
    fn answer(
        &mut self,
        method: Method,
        target: &[u8],
        window: WindowIndex,
        ahead: Option<ParsedAhead>,
    ) -> (usize, Routed) {
        let (path, query) = path_and_query(target);
        let route = match path {
            ACCEPT_PATH => 0,
            b"/healthz" => 1,
            b"/readyz" => 2,
            b"/metrics" => 3,
            _ => return (OTHER_ROUTE, Routed::plain(Status::NotFound)),
        };
        if method == Method::Other {
            let routed = Routed {
                allow: Some(ALLOW),
                ..Routed::plain(Status::MethodNotAllowed)
            };
            return (route, routed);
        }
        let body: Cow<'static, [u8]> = match route {
            0 => return (0, Routed::plain(self.accept(query, window, ahead))),
            1 => Cow::Borrowed(b"ok"),
            2 => match self.readiness.not_ready() {
                Some(why) => {
                    let routed = Routed {
                        body: Cow::Borrowed(why),
                        ..Routed::plain(Status::ServiceUnavailable)
                    };
                    return (2, routed);
                }
                None => Cow::Borrowed(b"ready"),
            },
            _ => Cow::Owned(self.metrics.metrics.render().into_bytes()),
        };
        (
            route,
            Routed {
                body,
                ..Routed::plain(Status::Ok)
            },
        )
    }

    /// Counts one accept request: `Ok` means its id is queued for its window.
    fn accept(&mut self, query: &[u8], window: WindowIndex, ahead: Option<ParsedAhead>) -> Status {
        if self.draining {
            return Status::ServiceUnavailable;
        }
        let parsed = match ahead {
            Some(ParsedAhead(parsed)) => parsed,
            None => parse_accept_query(query, &mut self.scratch),
        };
        let Ok(AcceptQuery { id, endpoint }) = parsed else {
            return Status::BadRequest;
        };
        if self.ingest.window_full(window)
            && !self.ingest.has_seen(window, id)
            && !self.ingest.is_counted(window, id)
        {
            self.refuse_over_bound(window);
            return Status::ServiceUnavailable;
        }
        if !self.ingest.make_room() {
            // `make_room` checked the batch against the set: an id seen before needs no room.
            if endpoint.is_none() && self.ingest.has_seen(window, id) {
                return Status::Ok;
            }
            return Status::ServiceUnavailable;
        }
        // With an endpoint the callback item carries the id, so one item covers both.
        self.ingest.push(match endpoint {
            Some(endpoint) => Ingest::Callback(Box::new(CallbackRequest {
                window,
                id,
                endpoint,
            })),
            None => Ingest::Id { window, id },
        });
        Status::Ok
    }
}

impl Router {
    fn refuse_over_bound(&mut self, window: WindowIndex) {
        self.metrics.window_id_refused();
        if let Some(held_back) = self.bound_log.allow(Instant::now()) {
            log::warn!(
                "window {} holds --max-window-ids {} ids: new ids get 503 ({held_back} more \
                 refused by this worker since its last such line)",
                self.clock.start_rfc3339(window),
                self.ingest.window_id_limit()
            );
        }
    }
}

/// The path and the query (without `?`) of a target.
fn path_and_query(target: &[u8]) -> (&[u8], &[u8]) {
    let target = origin_form(target);
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    }
}

/// The path and query of a target; an absolute-form target (`http://host/path?q`, which
/// HTTP/1.1 servers must accept) loses its scheme and authority.
fn origin_form(target: &[u8]) -> &[u8] {
    if target.first() == Some(&b'/') {
        return target;
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return target;
    };
    let authority = &target[scheme_end + 3..];
    match authority.iter().position(|&b| b == b'/' || b == b'?') {
        Some(i) => &authority[i..],
        None => b"/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_strips_scheme_and_authority() {
        assert_eq!(
            origin_form(b"http://h:1/api/verve/accept?id=1"),
            b"/api/verve/accept?id=1"
        );
        assert_eq!(origin_form(b"http://h?x"), b"?x");
        assert_eq!(origin_form(b"http://h"), b"/");
        assert_eq!(origin_form(b"/a?b=c://d"), b"/a?b=c://d");
    }
}
