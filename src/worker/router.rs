//! A worker's answers: each route's answer, and the counting of an accept request's id into
//! the worker's batch. Independent of how the request was read: the same code answers for
//! verve's own codec and for the hyper-on-tokio baseline.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use super::batch::IngestBuffer;
use crate::answer::{Route, Status};
use crate::health::Readiness;
use crate::http::query::{AcceptQuery, QueryError, parse_accept_query};
use crate::http::request::Method;
use crate::http::route::{ALLOW, route_of};
use crate::ingest::{CallbackRequest, Ingest};
use crate::metrics::WorkerMetrics;
use crate::rate_limit::RateLimit;
use crate::trace::{TraceContext, TraceHeaders};
use crate::window::{WindowClock, WindowIndex};

/// The answer to one request, before it is written in any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The status.
    pub status: Status,
    /// The body.
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

    fn ok(body: Cow<'static, [u8]>) -> Routed {
        Routed {
            body,
            ..Routed::plain(Status::Ok)
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
    /// A router counting into `ingest`, answering `/readyz` from `readiness`.
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

    /// Whether the worker is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The worker's batch for the recorder.
    pub fn ingest(&mut self) -> &mut IngestBuffer {
        &mut self.ingest
    }

    /// The window `now` falls in.
    pub fn window_of(&self, now: SystemTime) -> WindowIndex {
        self.clock.window_of(now)
    }

    /// Answers one request that arrived in `window`; an accept request's id is counted when
    /// the answer is `200`.
    pub fn route(
        &mut self,
        method: Method,
        target: &[u8],
        trace: Option<TraceHeaders<'_>>,
        window: WindowIndex,
    ) -> Routed {
        self.route_parsed(method, target, trace, window, None)
    }

    /// Like `route`, for a request whose query `prefetch` parsed already.
    pub fn route_parsed(
        &mut self,
        method: Method,
        target: &[u8],
        trace: Option<TraceHeaders<'_>>,
        window: WindowIndex,
        ahead: Option<ParsedAhead>,
    ) -> Routed {
        let (route, routed) = self.answer(method, target, trace, window, ahead);
        self.metrics.request(route, routed.status);
        routed
    }

    /// Counts a request the parser refused before it could be routed.
    pub fn count_refused(&self, status: Status) {
        self.metrics.request(Route::Other, status);
    }

    /// Parses an accept request's query ahead (for `route_parsed`) and starts loading where
    /// its id goes in the first-seen set while the request before it is answered: measured
    /// with pipelining, that starts the set's cache and TLB misses early enough to matter.
    pub fn prefetch(&mut self, target: &[u8], window: WindowIndex) -> Option<ParsedAhead> {
        let (route, query) = route_of(target);
        if route != Route::Accept {
            return None;
        }
        let parsed = parse_accept_query(query, &mut self.scratch);
        if let Ok(AcceptQuery { id, .. }) = &parsed {
            self.ingest.prefetch(window, *id);
        }
        Some(ParsedAhead(parsed))
    }

    /// The answer and its route.
    fn answer(
        &mut self,
        method: Method,
        target: &[u8],
        trace: Option<TraceHeaders<'_>>,
        window: WindowIndex,
        ahead: Option<ParsedAhead>,
    ) -> (Route, Routed) {
        let (route, query) = route_of(target);
        let routed = match (route, method) {
            (Route::Other, _) => Routed::plain(Status::NotFound),
            (_, Method::Other) => Routed {
                allow: Some(ALLOW),
                ..Routed::plain(Status::MethodNotAllowed)
            },
            (Route::Accept, _) => Routed::plain(self.accept(query, trace, window, ahead)),
            (Route::Healthz, _) => Routed::ok(Cow::Borrowed(b"ok")),
            (Route::Readyz, _) => match self.readiness.not_ready() {
                Some(why) => Routed {
                    body: Cow::Owned(why.into_bytes()),
                    ..Routed::plain(Status::ServiceUnavailable)
                },
                None => Routed::ok(Cow::Borrowed(b"ready")),
            },
            (Route::Metrics, _) => {
                Routed::ok(Cow::Owned(self.metrics.metrics.render().into_bytes()))
            }
        };
        (route, routed)
    }

    /// Counts one accept request: `Ok` means its id is queued for its window.
    fn accept(
        &mut self,
        query: &[u8],
        trace: Option<TraceHeaders<'_>>,
        window: WindowIndex,
        ahead: Option<ParsedAhead>,
    ) -> Status {
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
        if !self.ingest.log_room(window, id) {
            return Status::ServiceUnavailable;
        }
        // With an endpoint the callback item carries the id, so one item covers both.
        self.ingest.push(match endpoint {
            Some(endpoint) => Ingest::Callback(Box::new(CallbackRequest {
                window,
                id,
                endpoint,
                // Only a request with a callback reads its trace context.
                trace: trace.and_then(TraceContext::parse),
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
