//! Answers, written straight into the connection's output buffer.

use std::time::{Duration, UNIX_EPOCH};

use super::request::Persistence;
use crate::answer::Status;

/// The status line of an answer.
fn status_line(status: Status) -> &'static [u8] {
    match status {
        Status::Ok => b"HTTP/1.1 200 OK\r\n",
        Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
        Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
        Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
        Status::PayloadTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
        Status::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\n",
        Status::HeadersTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        Status::ServiceUnavailable => b"HTTP/1.1 503 Service Unavailable\r\n",
    }
}

/// Length of an IMF-fixdate such as `Tue, 24 Nov 2026 06:21:59 GMT`.
const HTTP_DATE_LEN: usize = 29;

/// The `Date` header's value, formatted once per second into a fixed buffer.
pub(crate) struct DateCache {
    unix_secs: u64,
    value: [u8; HTTP_DATE_LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        let mut cache = DateCache {
            unix_secs: 0,
            value: [b' '; HTTP_DATE_LEN],
        };
        cache.format();
        cache
    }
}

impl DateCache {
    pub(crate) fn update(&mut self, unix_secs: u64) {
        if unix_secs != self.unix_secs {
            self.unix_secs = unix_secs;
            self.format();
        }
    }

    fn format(&mut self) {
        use std::io::Write;
        let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_secs(self.unix_secs));
        let mut slot = &mut self.value[..];
        // Every date from 1970 to 9999 is exactly HTTP_DATE_LEN bytes long.
        let _ = write!(slot, "{date}");
    }

    pub(crate) fn get(&self) -> &[u8] {
        &self.value
    }
}

/// An answer to write.
pub(crate) struct Response<'a> {
    pub status: Status,
    pub body: &'a [u8],
    pub content_type: &'static str,
    /// HEAD: headers as for GET, no body.
    pub head_only: bool,
    pub persistence: Persistence,
    pub allow: Option<&'static str>,
}

impl Response<'_> {
    pub(crate) fn plain(status: Status, persistence: Persistence) -> Response<'static> {
        Response {
            status,
            body: status.default_body(),
            content_type: "text/plain",
            head_only: false,
            persistence,
            allow: None,
        }
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>, date: &DateCache) {
        out.extend_from_slice(status_line(self.status));
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.get());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        write_decimal(out, self.body.len());
        // No answer may be stored by a cache in front (RFC 9111 §4.2.2 lets one reuse a 200
        // heuristically): a repeat of an accept request must reach verve to be counted.
        out.extend_from_slice(b"\r\nCache-Control: no-store\r\n");
        match self.persistence {
            Persistence::KeepAlive => {}
            Persistence::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        if let Some(allow) = self.allow {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head_only {
            out.extend_from_slice(self.body);
        }
    }
}

fn write_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_full_answer() {
        let mut date = DateCache::default();
        date.update(1_795_501_319);
        let mut out = Vec::new();
        let mut r = Response::plain(Status::MethodNotAllowed, Persistence::Close);
        r.allow = Some("GET, HEAD");
        r.write_to(&mut out, &date);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nDate: Tue, 24 Nov 2026 06:21:59 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 18\r\nCache-Control: no-store\r\n\
             Connection: close\r\nAllow: GET, HEAD\r\n\r\nmethod not allowed"
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let mut out = Vec::new();
        let mut r = Response::plain(Status::Ok, Persistence::KeepAlive10);
        r.head_only = true;
        r.write_to(&mut out, &DateCache::default());
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.ends_with(
                "Content-Length: 2\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n"
            ),
            "{s}"
        );
    }
}
