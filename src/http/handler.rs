//! What a worker does with the bytes a connection read: parse every complete request, route
//! it, count its id, and write all the answers into one output buffer. No sockets here, so it
//! is tested and benchmarked on its own.

use std::time::SystemTime;

use super::query::{AcceptQuery, parse_accept_query};
use super::request::{Method, Parsed, Persistence, RequestHead, parse};
use super::response::{DateCache, Response, Status};
use crate::ingest::{CallbackRequest, Ingest, IngestBuffer};
use crate::window::{FirstSeen, WindowClock, unix_secs};

pub const ACCEPT_PATH: &[u8] = b"/api/verve/accept";
const ALLOW: &str = "GET, HEAD";

/// The outcome of one `process` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Bytes of the input fully handled; the rest is the start of an incomplete request.
    pub consumed: usize,
    /// Close the connection once the output is written.
    pub close: bool,
    /// An error answer was written: close gracefully, the peer may still be sending.
    pub rejected: bool,
}

/// A worker's request handling state.
pub struct Handler {
    clock: WindowClock,
    first_seen: FirstSeen,
    ingest: IngestBuffer,
    date: DateCache,
    scratch: Vec<u8>,
    draining: bool,
}

impl Handler {
    pub fn new(clock: WindowClock, ingest: IngestBuffer) -> Self {
        Handler {
            clock,
            first_seen: FirstSeen::default(),
            ingest,
            date: DateCache::default(),
            scratch: Vec::new(),
            draining: false,
        }
    }

    /// From now on, accept requests get `503 failed` and close their connection.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// The worker's batch for the recorder.
    pub fn ingest(&mut self) -> &mut IngestBuffer {
        &mut self.ingest
    }

    /// Handles every complete request in `input`, all stamped with arrival time `now`,
    /// appending the answers to `out`.
    pub fn process(&mut self, input: &[u8], now: SystemTime, out: &mut Vec<u8>) -> Processed {
        let secs = unix_secs(now);
        self.date.update(secs);
        let window = self.clock.window_of(now);
        let mut consumed = 0;
        loop {
            match parse(&input[consumed..]) {
                Parsed::Complete { head, len } => {
                    consumed += len;
                    let persistence = self.answer(&head, window, out);
                    if persistence == Persistence::Close {
                        return Processed {
                            consumed,
                            close: true,
                            rejected: false,
                        };
                    }
                }
                Parsed::Partial => {
                    return Processed {
                        consumed,
                        close: false,
                        rejected: false,
                    };
                }
                Parsed::Reject(status) => {
                    Response::plain(status, Persistence::Close).write_to(out, &self.date);
                    return Processed {
                        consumed: input.len(),
                        close: true,
                        rejected: true,
                    };
                }
            }
        }
    }

    /// Writes the answer to one request and returns how the connection goes on.
    fn answer(&mut self, head: &RequestHead<'_>, window: u64, out: &mut Vec<u8>) -> Persistence {
        let target = origin_form(head.target);
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], &target[q + 1..]),
            None => (target, &target[target.len()..]),
        };
        let mut response = Response::plain(Status::Ok, head.persistence);
        response.head_only = head.method == Method::Head;
        let route_body: Option<&'static [u8]> = match path {
            ACCEPT_PATH => None,
            b"/healthz" => Some(b"ok"),
            b"/readyz" => Some(b"ready"),
            _ => {
                response.status = Status::NotFound;
                response.body = Status::NotFound.default_body();
                response.write_to(out, &self.date);
                return head.persistence;
            }
        };
        if head.method == Method::Other {
            response.status = Status::MethodNotAllowed;
            response.body = Status::MethodNotAllowed.default_body();
            response.allow = Some(ALLOW);
        } else if let Some(body) = route_body {
            response.body = body;
        } else {
            response.status = self.accept(query, window);
            response.body = response.status.default_body();
            if response.status == Status::ServiceUnavailable && self.draining {
                response.persistence = Persistence::Close;
            }
        }
        response.write_to(out, &self.date);
        response.persistence
    }

    /// Counts one accept request: `Ok` means its id is queued for its window.
    fn accept(&mut self, query: &[u8], window: u64) -> Status {
        if self.draining {
            return Status::ServiceUnavailable;
        }
        let Ok(AcceptQuery { id, endpoint }) = parse_accept_query(query, &mut self.scratch) else {
            return Status::BadRequest;
        };
        let new_here = self.first_seen.insert(window, id);
        // With an endpoint the callback item carries the id, so one item covers both.
        let item = match endpoint {
            Some(endpoint) => Ingest::Callback(Box::new(CallbackRequest {
                window,
                id,
                endpoint,
            })),
            None if new_here => Ingest::Id { window, id },
            None => return Status::Ok,
        };
        if !self.ingest.make_room() {
            if new_here {
                self.first_seen.forget(id);
            }
            return Status::ServiceUnavailable;
        }
        self.ingest.push(item);
        Status::Ok
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
    use crate::ingest::{IngestReceiver, MAX_BATCH, channel};
    use std::time::{Duration, UNIX_EPOCH};

    fn handler(queue: usize) -> (Handler, IngestReceiver) {
        let (mut buffers, receiver) = channel(1, queue);
        (
            Handler::new(WindowClock::new(60), buffers.pop().unwrap()),
            receiver,
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
        while let Some(batch) = receiver.try_recv() {
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
        let input = b"GET /api/verve/accept?id=1 HTTP/1.1\r\n\r\n\
                      GET /api/verve/accept?id=1 HTTP/1.1\r\n\r\n\
                      GET /api/verve/accept?id=x HTTP/1.1\r\n\r\n\
                      GET /nope HTTP/1.1\r\n\r\n\
                      GET /api/verve/accept?id=2 HTTP/1.1\r\n\r\nGET /api";
        let (p, out) = run(&mut h, input);
        assert_eq!(p.consumed, input.len() - 8);
        assert!(!p.close);
        let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(statuses, ["200", "200", "400", "404", "200"]);
        assert!(h.ingest().flush());
        assert_eq!(ids(&receiver), [1, 2]);
    }

    #[test]
    fn draining_answers_503_and_closes() {
        let (mut h, _receiver) = handler(8);
        h.start_draining();
        let (p, out) = run(&mut h, b"GET /api/verve/accept?id=1 HTTP/1.1\r\n\r\n");
        assert!(p.close);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.ends_with("Connection: close\r\n\r\nfailed"), "{out}");
    }

    #[test]
    fn a_full_queue_answers_503_and_counts_nothing() {
        let (mut h, receiver) = handler(1);
        let mut answered_ok = Vec::new();
        for id in 0..(3 * MAX_BATCH as i64) {
            let req = format!("GET /api/verve/accept?id={id} HTTP/1.1\r\n\r\n");
            let (_, out) = run(&mut h, req.as_bytes());
            if out.starts_with("HTTP/1.1 200") {
                answered_ok.push(id);
            } else {
                assert!(out.starts_with("HTTP/1.1 503"), "{out}");
            }
        }
        assert_eq!(answered_ok.len(), 2 * MAX_BATCH);
        // Once the recorder catches up, a refused id is forwarded on retry.
        let mut forwarded = ids(&receiver);
        let retry = 3 * MAX_BATCH as i64 - 1;
        let (_, out) = run(
            &mut h,
            format!("GET /api/verve/accept?id={retry} HTTP/1.1\r\n\r\n").as_bytes(),
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
        assert_eq!(
            origin_form(b"http://h:1/api/verve/accept?id=1"),
            b"/api/verve/accept?id=1"
        );
        assert_eq!(origin_form(b"http://h?x"), b"?x");
        assert_eq!(origin_form(b"http://h"), b"/");
        assert_eq!(origin_form(b"/a?b=c://d"), b"/a?b=c://d");
        let (mut h, _receiver) = handler(8);
        let (_, out) = run(
            &mut h,
            b"GET http://verve.example/api/verve/accept?id=5 HTTP/1.1\r\n\r\n",
        );
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let (mut h, _receiver) = handler(8);
        let (_, out) = run(&mut h, b"DELETE /api/verve/accept?id=1 HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        assert!(out.contains("Allow: GET, HEAD\r\n"), "{out}");
    }
}
