//! Request heads: httparse over the connection's buffer, borrowing, allocating nothing.

use std::mem::MaybeUninit;

use crate::answer::Status;
use crate::trace::TraceHeaders;

/// Longest request line, and longest header line, served (CRLF not counted): a longer request
/// line gets `414`, a longer header line `431`, as nginx's `large_client_header_buffers`.
pub const MAX_LINE: usize = 8 * 1024;
/// Largest request head served (CRLFs counted); a larger one gets `431`.
pub const MAX_HEAD: usize = 32 * 1024;
/// Largest request, head and body together, a connection buffers. Bodies are skipped (no
/// route takes one), but a request carrying more than this gets `413`.
pub const MAX_REQUEST: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The request's method, as far as routing cares.
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered as `GET`, without the body.
    Head,
    /// Any other method: `405`.
    Other,
}

/// How the connection continues after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// HTTP/1.0 that asked for keep-alive: the answer must say `Connection: keep-alive`.
    KeepAlive10,
    /// Close after this answer.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A parsed request head, borrowing the connection's buffer.
pub struct RequestHead<'a> {
    /// The method.
    pub method: Method,
    /// The request target as sent: path and optional `?query`.
    pub target: &'a [u8],
    /// Whether the connection stays open after the answer.
    pub persistence: Persistence,
    /// `traceparent` and `tracestate`, when the request has exactly one `traceparent`.
    pub trace: Option<TraceHeaders<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What the parser made of the start of a buffer.
pub enum Parsed<'a> {
    /// A whole request of `len` bytes (head and body) is at the front of the buffer.
    Complete {
        /// The request head.
        head: RequestHead<'a>,
        /// The request's length in the buffer.
        len: usize,
    },
    /// A whole head whose client waits for `100 Continue` before it sends the content the
    /// head announces: RFC 9110 §10.1.1 lets a server answer with a final status at once
    /// instead, which verve does (no route takes content): the content is never read, and
    /// the connection closes after the answer.
    ContentNotAwaited {
        /// The request head (its persistence is `Close`).
        head: RequestHead<'a>,
    },
    /// More bytes are needed.
    Partial,
    /// Answer with this status and close.
    Reject(Status),
}

/// Parses the request at the front of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Only a start longer than a line can be over a limit yet.
            if buf.len() <= MAX_LINE {
                return Parsed::Partial;
            }
            return over_limits(&buf[..buf.len().min(MAX_HEAD + 1)], false)
                .map_or(Parsed::Partial, Parsed::Reject);
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(Status::HeadersTooLarge),
        Err(_) => return Parsed::Reject(Status::BadRequest),
    };
    // A head no longer than a line has no line and no size over the limits.
    if head_len > MAX_LINE
        && let Some(status) = over_limits(&buf[..head_len], true)
    {
        return Parsed::Reject(status);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    // httparse ends a line at a bare LF too; a proxy in front may not, and would then frame
    // a different request than verve executes (request smuggling). RFC 9112 §2.2.
    if !lines_end_in_crlf(&buf[..head_len]) {
        return Parsed::Reject(Status::BadRequest);
    }
    let http10 = req.version == Some(0);
    let mut close = false;
    let mut keep_alive = false;
    let mut body_len: Option<usize> = None;
    let mut hosts = 0;
    let mut expects_continue = false;
    let (mut traceparents, mut tracestates) = (0, 0);
    let (mut traceparent, mut tracestate) = (None, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 || !is_valid_host(h.value) {
                return Parsed::Reject(Status::BadRequest);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // 1*DIGIT (RFC 9112 §6.3): no sign, no list. Repeated with the same value it is
            // one length (RFC 9110 §8.6); with different values, the request is refused.
            let Some(n) = parse_content_length(h.value) else {
                return Parsed::Reject(Status::BadRequest);
            };
            if body_len.is_some_and(|m| m != n) {
                return Parsed::Reject(Status::BadRequest);
            }
            body_len = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // No route takes a body; refusing chunked bodies keeps request framing simple.
            return Parsed::Reject(Status::BadRequest);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expects_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("traceparent") {
            traceparents += 1;
            traceparent = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("tracestate") {
            tracestates += 1;
            tracestate = Some(h.value);
        }
    }
    // Two `traceparent`s are no trace context; two `tracestate`s are not passed on.
    let trace = traceparent
        .filter(|_| traceparents == 1)
        .map(|traceparent| TraceHeaders {
            traceparent,
            tracestate: tracestate.filter(|_| tracestates == 1),
        });
    // A 1.1 request carries exactly one Host (RFC 9112 §3.2); 1.0 may have none.
    if !http10 && hosts == 0 {
        return Parsed::Reject(Status::BadRequest);
    }
    let len = match head_len.checked_add(body_len.unwrap_or(0)) {
        Some(len) if len <= MAX_REQUEST => len,
        _ => return Parsed::Reject(Status::PayloadTooLarge),
    };
    let content_not_awaited = buf.len() < len && expects_continue && !http10;
    if buf.len() < len && !content_not_awaited {
        return Parsed::Partial;
    }
    let target = req.path.unwrap_or("/").as_bytes();
    if !is_request_target(target) {
        return Parsed::Reject(Status::BadRequest);
    }
    let persistence = match (http10, close || content_not_awaited, keep_alive) {
        (_, true, _) | (true, false, false) => Persistence::Close,
        (false, false, _) => Persistence::KeepAlive,
        (true, false, true) => Persistence::KeepAlive10,
    };
    let head = RequestHead {
        method,
        target,
        persistence,
        trace,
    };
    if content_not_awaited {
        return Parsed::ContentNotAwaited { head };
    }
    Parsed::Complete { head, len }
}

/// A request target verve serves (RFC 9112 §3.2): origin-form (`/path?query`), or
/// absolute-form (`scheme://authority/path?query`, which a server must accept), each of the
/// bytes RFC 3986 allows there. Authority-form (CONNECT)
/// and asterisk-form (`OPTIONS *`) name nothing verve serves; anything else (a target that
/// starts with neither `/` nor a scheme) is no target at all: another server could read it
/// differently, so all of these are refused.
fn is_request_target(target: &[u8]) -> bool {
    let path_and_query = if target.first() == Some(&b'/') {
        target
    } else {
        match absolute_form_rest(target) {
            Some(rest) => rest,
            None => return false,
        }
    };
    holds_only(path_and_query, PATH_OR_QUERY)
}

/// The path and query of an absolute-form target, once its scheme and authority are valid.
fn absolute_form_rest(target: &[u8]) -> Option<&[u8]> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let rest = target[colon + 1..].strip_prefix(b"//")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    (scheme_ok && holds_only(&rest[..end], AUTHORITY)).then_some(&rest[end..])
}

/// Where a byte may stand: bit 0 in a path or query, bit 1 in an authority (RFC 3986:
/// unreserved, sub-delims, `:` `@` and `%`; `/` `?` in a path or query, `[` `]` in an
/// authority). Everything else (controls, space, the double quote, `#`, `<`, `>`, `\`, `^`,
/// the backtick, `{`, `|`, `}`, bytes over 0x7f) must be percent-encoded.
const URI_BYTES: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let common = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'%'
            );
        if common || c == b'/' || c == b'?' {
            table[b] |= PATH_OR_QUERY;
        }
        if common || c == b'[' || c == b']' {
            table[b] |= AUTHORITY;
        }
        b += 1;
    }
    table
};
const PATH_OR_QUERY: u8 = 1;
const AUTHORITY: u8 = 2;

/// Whether every byte of `part` may stand where `place` says. A `%` is not checked for its
/// two hex digits here: the query's parser refuses a bad escape where it matters (`400`,
/// the connection kept), as hyper and nginx leave escapes to the application.
fn holds_only(part: &[u8], place: u8) -> bool {
    part.iter().all(|&b| URI_BYTES[b as usize] & place != 0)
}

/// Every CR is followed by LF and every LF follows a CR.
fn lines_end_in_crlf(head: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', head).all(|i| match head[i] {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && head[i - 1] == b'\r',
    })
}

/// A Host value per RFC 9112 §3.2 and RFC 3986: `uri-host [ ":" port ]`, where the host is
/// an IP literal in brackets or a name of unreserved characters and percent-escapes (the
/// sub-delimiters, a comma among them, are refused: a list of hosts is no host). Empty is
/// allowed (a target without an authority).
fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value {
        [b'[', rest @ ..] => match rest.iter().position(|&b| b == b']') {
            Some(close) => {
                let literal = &rest[..close];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                (&[][..], &rest[close + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let host_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// `Content-Length`: digits only, around optional whitespace.
fn parse_content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `414` when the request line does not end within the limit, else `431`.
/// The refusal of a head (`whole`), or of the start of one, over the limits: `414` for a
/// request line over `MAX_LINE`, `431` for a header line over it or a head over `MAX_HEAD`
/// (the start of a head at `MAX_HEAD` already cannot end within it).
fn over_limits(head: &[u8], whole: bool) -> Option<Status> {
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', head).chain(std::iter::once(head.len()));
    for (line, end) in ends.enumerate() {
        // A line's CR is not counted (a bare CR is refused elsewhere).
        let text = &head[start..end];
        let len = text.len() - usize::from(text.last() == Some(&b'\r'));
        if len > MAX_LINE {
            return Some(if line == 0 {
                Status::UriTooLong
            } else {
                Status::HeadersTooLarge
            });
        }
        start = end + 1;
    }
    let limit = if whole { MAX_HEAD + 1 } else { MAX_HEAD };
    (head.len() >= limit).then_some(Status::HeadersTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (RequestHead<'_>, usize) {
        match parse(raw) {
            Parsed::Complete { head, len } => (head, len),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_get() {
        let raw = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /";
        let (head, len) = complete(raw);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.target, b"/api/verve/accept?id=1");
        assert_eq!(head.persistence, Persistence::KeepAlive);
        assert_eq!(len, raw.len() - 5);
    }

    #[test]
    fn a_target_is_origin_form_or_absolute_form_of_uri_bytes_only() {
        for ok in [
            &b"/api/verve/accept?id=1&endpoint=http%3A%2F%2Fa"[..],
            b"/a?b=c://d&e=f:g@h!$'()*+,;=~._-",
            b"http://t/api/verve/accept?id=1",
            b"https://[::1]:8080/x",
            b"h2c+x.y-z://user@host:1",
            b"http://t?x",
        ] {
            assert!(is_request_target(ok), "{}", String::from_utf8_lossy(ok));
        }
        for refused in [
            &b"zz?x=http://h/api/verve/accept?id=1"[..],
            b"*",
            b"t:443",
            b"1http://t/",
            b"http:/t/",
            b"http://t t/",
            b"/a?x=caf\xc3\xa9",
            b"/a?x=a|b",
            b"/a?x=\"",
            b"/a?x=<",
            b"/a?x=>",
            b"/a?x=^",
            b"/a?x=`",
            b"/a?x={}",
            b"/a?x=\\",
            b"/a#frag",
            b"/a?x=[1]",
            b"http://t{}/",
        ] {
            assert!(
                !is_request_target(refused),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn connection_semantics() {
        assert_eq!(
            complete(b"GET / HTTP/1.0\r\n\r\n").0.persistence,
            Persistence::Close
        );
        assert_eq!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .persistence,
            Persistence::KeepAlive10
        );
        assert_eq!(
            complete(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: foo, close\r\n\r\n")
                .0
                .persistence,
            Persistence::Close
        );
    }

    #[test]
    fn bodies_are_framed_and_skipped() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab"),
            Parsed::Partial
        );
        let (head, len) =
            complete(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcdGET");
        assert_eq!(head.method, Method::Other);
        assert_eq!(len, 51);
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n"),
            Parsed::Reject(Status::PayloadTooLarge)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Reject(Status::BadRequest)
        );
    }

    #[test]
    fn each_line_and_the_whole_head_have_their_limit() {
        let line = |prefix: &str, len: usize| {
            let mut line = prefix.as_bytes().to_vec();
            line.resize(len, b'a');
            line
        };
        let request = |request_line: &[u8], headers: &[Vec<u8>]| {
            let mut raw = request_line.to_vec();
            raw.extend_from_slice(b"\r\nHost: t\r\n");
            for h in headers {
                raw.extend_from_slice(h);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            raw
        };
        // A request line of exactly MAX_LINE, then one byte more; whole, or still arriving.
        let mut longest = line("GET /?", MAX_LINE - 9);
        longest.extend_from_slice(b" HTTP/1.1");
        assert_eq!(longest.len(), MAX_LINE);
        assert!(matches!(
            parse(&request(&longest, &[])),
            Parsed::Complete { .. }
        ));
        longest.insert(6, b'a');
        assert_eq!(
            parse(&request(&longest, &[])),
            Parsed::Reject(Status::UriTooLong)
        );
        assert_eq!(
            parse(&longest[..=MAX_LINE]),
            Parsed::Reject(Status::UriTooLong)
        );
        // A request line near the limit and a header: the limits are per line (this was 431).
        let mut near = line("GET /?", 7_942 - 9);
        near.extend_from_slice(b" HTTP/1.1");
        let header = line("X-Pad: ", 300);
        assert!(matches!(
            parse(&request(&near, std::slice::from_ref(&header))),
            Parsed::Complete { .. }
        ));
        // A header line over MAX_LINE, whole or arriving.
        let long_header = line("X-Pad: ", MAX_LINE + 1);
        let raw = request(b"GET / HTTP/1.1", std::slice::from_ref(&long_header));
        assert_eq!(parse(&raw), Parsed::Reject(Status::HeadersTooLarge));
        assert_eq!(
            parse(&raw[..raw.len() - 4]),
            Parsed::Reject(Status::HeadersTooLarge)
        );
        // Many header lines under MAX_LINE: served up to MAX_HEAD, refused past it.
        let lines: Vec<Vec<u8>> = (0..3).map(|i| line(&format!("X-{i}: "), 7_000)).collect();
        assert!(matches!(
            parse(&request(b"GET / HTTP/1.1", &lines)),
            Parsed::Complete { .. }
        ));
        let lines: Vec<Vec<u8>> = (0..5).map(|i| line(&format!("X-{i}: "), 7_000)).collect();
        let raw = request(b"GET / HTTP/1.1", &lines);
        assert_eq!(parse(&raw), Parsed::Reject(Status::HeadersTooLarge));
        assert_eq!(
            parse(&raw[..MAX_HEAD]),
            Parsed::Reject(Status::HeadersTooLarge)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: t\r\nX: a"), Parsed::Partial);
    }

    #[test]
    fn a_bare_lf_or_cr_in_the_head_is_refused() {
        for raw in [
            &b"GET / HTTP/1.1\nHost: t\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nDummy: x\nContent-Length: 30\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\n\n",
            b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Parsed::Reject(Status::BadRequest), "{raw:?}");
        }
    }

    #[test]
    fn host_rules() {
        let with_host = |h: &str| parse_owned(&format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        for good in [
            "t",
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "",
        ] {
            assert!(with_host(good), "{good}");
        }
        for bad in [
            "a,b", "a/b", "user@a", "a b", "a:x", "a:123456", "[::1", "[zz]", "a:1:2",
        ] {
            assert!(!with_host(bad), "{bad}");
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Reject(Status::BadRequest)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            Parsed::Reject(Status::BadRequest)
        );
        // HTTP/1.0 may leave it out.
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\n\r\n"),
            Parsed::Complete { .. }
        ));
    }

    fn parse_owned(raw: &str) -> bool {
        matches!(parse(raw.as_bytes()), Parsed::Complete { .. })
    }

    #[test]
    fn content_length_is_digits_only() {
        let with_length = |v: &str| {
            parse_owned(&format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {v}\r\n\r\n{}",
                "x".repeat(3)
            ))
        };
        assert!(with_length("3"));
        assert!(with_length("003"));
        for bad in ["+3", "-3", "3,3", "3 3", "0x3", ""] {
            assert!(!with_length(bad), "{bad}");
        }
        let twice = |a: &str, b: &str| {
            parse_owned(&format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {a}\r\nContent-Length: {b}\r\n\r\nxxx"
            ))
        };
        assert!(twice("3", "3"));
        assert!(!twice("3", "4"));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            parse(b"\x01\x02 nonsense\r\n\r\n"),
            Parsed::Reject(Status::BadRequest)
        );
    }
}
