//! What a worker does with the bytes a connection read: parse every complete request, route
//! it (which counts its id), and write all the answers into one output buffer. No sockets
//! here, so it is tested and benchmarked on its own.

use std::time::SystemTime;

use super::batch::IngestBuffer;
use super::router::{ParsedAhead, Router};
use crate::answer::Status;
use crate::http::request::{Method, Parsed, Persistence, RequestHead, parse};
use crate::http::response::{DateCache, Response};
use crate::window::unix_secs;

/// The outcome of one `process` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Bytes of the input fully handled; the rest is the start of an incomplete request.
    pub consumed: usize,
    /// Close the connection once the output is written.
    pub close: bool,
    /// Close gracefully, the peer may still be sending: after an error answer, or an answer
    /// given without reading the content announced.
    pub linger: bool,
}

/// A worker's request handling state.
pub struct Handler {
    router: Router,
    date: DateCache,
}

impl Handler {
    /// A handler answering through `router`.
    pub fn new(router: Router) -> Self {
        Handler {
            router,
            date: DateCache::default(),
        }
    }

    /// From now on, accept requests get `503 failed` and close their connection.
    pub fn start_draining(&mut self) {
        self.router.start_draining();
    }

    /// The worker's batch for the recorder.
    pub fn ingest(&mut self) -> &mut IngestBuffer {
        self.router.ingest()
    }

    /// Handles every complete request in `input`, all stamped with arrival time `now`,
    /// appending the answers to `out`. The ids they said `ok` to are logged (when the log is
    /// on) before this returns, so before the answers can go out.
    pub fn process(&mut self, input: &[u8], now: SystemTime, out: &mut Vec<u8>) -> Processed {
        let processed = self.answer_all(input, now, out);
        self.router.ingest().settle();
        processed
    }

    fn answer_all(&mut self, input: &[u8], now: SystemTime, out: &mut Vec<u8>) -> Processed {
        self.date.update(unix_secs(now));
        let window = self.router.window_of(now);
        let mut consumed = 0;
        let mut parsed = parse(input);
        // The query of `parsed`'s request, when the router parsed it ahead.
        let mut ahead = None;
        loop {
            match parsed {
                Parsed::Complete { head, len } => {
                    consumed += len;
                    let this_ahead = ahead.take();
                    // Parse the next pipelined request first and prefetch its id's place in
                    // the first-seen set: the miss overlaps this request's work.
                    parsed = parse(&input[consumed..]);
                    if let Parsed::Complete { head: next, .. } = parsed {
                        ahead = self.router.prefetch(next.target, window);
                    }
                    let persistence = self.answer(&head, window, this_ahead, out);
                    if persistence == Persistence::Close {
                        return Processed {
                            consumed,
                            close: true,
                            linger: false,
                        };
                    }
                }
                Parsed::ContentNotAwaited { head } => {
                    self.answer(&head, window, ahead.take(), out);
                    return Processed {
                        consumed: input.len(),
                        close: true,
                        linger: true,
                    };
                }
                Parsed::Partial => {
                    return Processed {
                        consumed,
                        close: false,
                        linger: false,
                    };
                }
                Parsed::Reject(status) => {
                    self.router.count_refused(status);
                    Response::plain(status, Persistence::Close).write_to(out, &self.date);
                    return Processed {
                        consumed: input.len(),
                        close: true,
                        linger: true,
                    };
                }
            }
        }
    }

    /// Writes the answer to one request and returns how the connection goes on.
    fn answer(
        &mut self,
        head: &RequestHead<'_>,
        window: u64,
        ahead: Option<ParsedAhead>,
        out: &mut Vec<u8>,
    ) -> Persistence {
        let routed = self
            .router
            .route_parsed(head.method, head.target, head.trace, window, ahead);
        let persistence =
            if routed.status == Status::ServiceUnavailable && self.router.is_draining() {
                Persistence::Close
            } else {
                head.persistence
            };
        Response {
            status: routed.status,
            body: &routed.body,
            content_type: "text/plain",
            head_only: head.method == Method::Head,
            persistence,
            allow: routed.allow,
        }
        .write_to(out, &self.date);
        persistence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Readiness;
    use crate::ingest::window_bound::WindowIdCounts;
    use crate::ingest::{Ingest, IngestReceiver, MAX_BATCH, channel};
    use crate::metrics::{Metrics, WorkerMetrics};
    use crate::window::WindowClock;
    use crate::worker::batch::IngestBuffer;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn handler(queue: usize) -> (Handler, IngestReceiver) {
        let (handler, receiver, _) = bounded_handler(queue, u64::MAX);
        (handler, receiver)
    }

    /// A handler under `--max-window-ids max_window_ids`, and its process's metrics.
    fn bounded_handler(
        queue: usize,
        max_window_ids: u64,
    ) -> (Handler, IngestReceiver, Arc<Metrics>) {
        let metrics = WorkerMetrics::single();
        let process_metrics = Arc::clone(&metrics.metrics);
        let counts = Arc::new(WindowIdCounts::new(max_window_ids));
        let (mut senders, receiver) = channel(1, queue, &counts);
        let buffer = IngestBuffer::new(senders.pop().unwrap(), Arc::clone(&metrics.metrics));
        (
            Handler::new(Router::new(
                WindowClock::new(60),
                buffer,
                Readiness::default(),
                metrics,
            )),
            receiver,
            process_metrics,
        )
    }

    const T: Duration = Duration::from_secs(1_795_501_319);

    fn run(h: &mut Handler, input: &[u8]) -> (Processed, String) {
        let mut out = Vec::new();
        let p = h.process(input, UNIX_EPOCH + T, &mut out);
        (p, String::from_utf8(out).unwrap())
    }

    fn ids(receiver: &IngestReceiver) -> Vec<i64> {
        let mut ids = Vec::new();
        while let Ok(batch) = receiver.try_recv() {
            for item in batch {
                match item {
                    Ingest::Id { id, .. } => ids.push(id),
                    Ingest::Callback(c) => ids.push(c.id),
                }
            }
        }
        ids
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_and_new_ids_forwarded_once() {
        let (mut h, receiver) = handler(8);
        let input = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\n\r\n\
                      GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\n\r\n\
                      GET /api/verve/accept?id=x HTTP/1.1\r\nHost: t\r\n\r\n\
                      GET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
                      DELETE /api/verve/accept?id=3 HTTP/1.1\r\nHost: t\r\n\r\n\
                      GET /api/verve/accept?id=4&endpoint=http%3A%2F%2Fa.example%2Fh HTTP/1.1\r\nHost: t\r\n\r\n\
                      GET /api/verve/accept?id=2 HTTP/1.1\r\nHost: t\r\n\r\nGET /api";
        let (p, out) = run(&mut h, input);
        assert_eq!(p.consumed, input.len() - 8);
        assert!(!p.close);
        let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        // Every request after the first was parsed ahead, while the one before it was answered.
        assert_eq!(statuses, ["200", "200", "400", "404", "405", "200", "200"]);
        assert!(h.ingest().flush());
        assert_eq!(ids(&receiver), [1, 4, 2]);
    }

    #[test]
    fn past_max_window_ids_new_ids_get_503_and_counted_ones_still_ok() {
        let (mut h, receiver, metrics) = bounded_handler(8, 3);
        let mut statuses = Vec::new();
        for id in [1, 2, 1, 3, 4, 5, 2, 3] {
            let request = format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n");
            let (_, out) = run(&mut h, request.as_bytes());
            statuses.push(out[9..12].to_owned());
        }
        assert_eq!(
            statuses,
            ["200", "200", "200", "200", "503", "503", "200", "200"]
        );
        assert!(h.ingest().flush());
        assert_eq!(ids(&receiver), [1, 2, 3]);
        let scrape = metrics.render();
        assert!(
            scrape.contains("verve_window_ids_refused_total 2"),
            "{scrape}"
        );
    }

    #[test]
    fn draining_answers_503_and_closes() {
        let (mut h, _receiver) = handler(8);
        h.start_draining();
        let (p, out) = run(
            &mut h,
            b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert!(p.close);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.ends_with("Connection: close\r\n\r\nfailed"), "{out}");
    }

    #[test]
    fn a_full_queue_answers_503_and_counts_nothing() {
        let (mut h, receiver) = handler(1);
        let mut answered_ok = Vec::new();
        for id in 0..(3 * MAX_BATCH as i64) {
            let req = format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n");
            let (_, out) = run(&mut h, req.as_bytes());
            if out.starts_with("HTTP/1.1 200") {
                answered_ok.push(id);
            } else {
                assert!(out.starts_with("HTTP/1.1 503"), "{out}");
            }
        }
        assert_eq!(answered_ok.len(), 2 * MAX_BATCH);
        // An id already answered `ok` needs no room: it still gets `ok`, and is not sent again.
        let (_, out) = run(
            &mut h,
            b"GET /api/verve/accept?id=0 HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // Once the recorder catches up, a refused id is forwarded on retry.
        let mut forwarded = ids(&receiver);
        let retry = 3 * MAX_BATCH as i64 - 1;
        let (_, out) = run(
            &mut h,
            format!("GET /api/verve/accept?id={retry} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        forwarded.extend(ids(&receiver));
        assert!(h.ingest().flush());
        forwarded.extend(ids(&receiver));
        answered_ok.push(retry);
        assert_eq!(forwarded, answered_ok);
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_path() {
        let (mut h, _receiver) = handler(8);
        let (_, out) = run(
            &mut h,
            b"GET http://verve.example/api/verve/accept?id=5 HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let (mut h, _receiver) = handler(8);
        let (_, out) = run(
            &mut h,
            b"DELETE /api/verve/accept?id=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        assert!(out.contains("Allow: GET, HEAD\r\n"), "{out}");
    }
}
