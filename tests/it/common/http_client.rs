//! A raw HTTP client: bytes in, answers read off the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer read off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Why a connection gave no (whole) answer: what a failed test says about the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoAnswer {
    /// End of file.
    #[error("the server closed the connection after {partial} bytes of an answer")]
    Closed { partial: usize },
    /// A reset, or no answer within the read timeout (`WouldBlock`).
    #[error("reading the answer failed after {partial} bytes: {error}")]
    Failed {
        error: std::io::Error,
        partial: usize,
    },
}

/// A keep-alive client connection that speaks raw bytes.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr).unwrap()
    }

    /// A connection, or why there is none (nothing listens, say).
    pub(crate) fn try_open(addr: SocketAddr) -> std::io::Result<Conn> {
        Conn::with_stream(TcpStream::connect(addr)?)
    }

    /// A connection from another loopback address (`127.0.0.2`, say): another client as
    /// far as the server can tell.
    pub(crate) fn open_from(local: std::net::Ipv4Addr, addr: SocketAddr) -> Conn {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((local, 0)).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        Conn::with_stream(socket.into()).unwrap()
    }

    fn with_stream(stream: TcpStream) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub(crate) fn send(&mut self, raw: &[u8]) {
        self.try_send(raw).unwrap();
    }

    pub(crate) fn try_send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Sends a GET of `target` over HTTP/1.1 and reads its answer.
    pub(crate) fn get(&mut self, target: &str) -> Answer {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_answer(false)
            .unwrap_or_else(|e| panic!("GET {target}: {e}"))
    }

    /// Reads one answer, or says why none came. `head_only` for HEAD.
    pub(crate) fn read_answer(&mut self, head_only: bool) -> Result<Answer, NoAnswer> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                let mut lines = head.split("\r\n");
                let status = lines.next().unwrap()[9..12].parse().unwrap();
                let headers: Vec<(String, String)> = lines
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.trim().to_owned(), v.trim().to_owned())
                    })
                    .collect();
                let len: usize = if head_only {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap())
                };
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Ok(Answer {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.read(&mut chunk) {
                Ok(0) => {
                    return Err(NoAnswer::Closed {
                        partial: self.buf.len(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(NoAnswer::Failed {
                        error: e,
                        partial: self.buf.len(),
                    });
                }
            }
        }
    }

    /// True when the server closes the connection (end of file, or a reset) within the read
    /// timeout without sending anything more.
    pub(crate) fn is_closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        self.buf.is_empty() && closed(self.read(&mut chunk))
    }

    /// True when, for `wait`, nothing more arrives and the connection stays open.
    pub(crate) fn is_idle(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 1024];
        let read = self.read(&mut chunk);
        self.buf.is_empty()
            && matches!(read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }

    /// One read, retried when a signal interrupts it (`EINTR`: a read with a timeout is not
    /// restarted by the kernel) rather than taken for a closed connection.
    fn read(&mut self, chunk: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => return read,
            }
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// Whether a read's outcome means the peer closed: end of file or a reset, not a timeout.
pub(crate) fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `raw` on a new connection and reads until the server closes it.
pub(crate) fn exchange_until_close(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Percent-encodes everything but unreserved characters, for a URL inside a query.
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
