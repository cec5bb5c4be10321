//! A real HTTP peer for callbacks, recording every request it receives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a callback peer received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) body: String,
    /// Header names (lower case) and values, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// When the whole request had arrived.
    pub(crate) at: Instant,
}

impl Received {
    /// The value of header `name` (lower case), if it came once or more: the first.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the callback peer answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerBehaviour {
    Status(u16),
    /// Answers 200 after this long.
    Slow(Duration),
    /// Reads the request and never answers.
    Hang,
}

/// A real HTTP server on 127.0.0.1 that records every request it receives.
pub(crate) struct CallbackPeer {
    pub(crate) addr: SocketAddr,
    behaviour: Arc<Mutex<PeerBehaviour>>,
    received: Arc<(Mutex<Vec<Received>>, Condvar)>,
    connections: Arc<Mutex<u64>>,
}

impl CallbackPeer {
    pub(crate) fn start(behaviour: PeerBehaviour) -> CallbackPeer {
        CallbackPeer::start_on(0, behaviour)
    }

    /// A peer on a given port (0: any), e.g. one callbacks already failed to reach.
    pub(crate) fn start_on(port: u16, behaviour: PeerBehaviour) -> CallbackPeer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let connections = Arc::new(Mutex::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (sink, count, answer) = (
            Arc::clone(&received),
            Arc::clone(&connections),
            Arc::clone(&behaviour),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *count.lock().unwrap() += 1;
                let (sink, answer) = (Arc::clone(&sink), Arc::clone(&answer));
                thread::spawn(move || serve_peer(stream, &answer, &sink));
            }
        });
        CallbackPeer {
            addr,
            behaviour,
            received,
            connections,
        }
    }

    /// How the peer answers the requests that arrive from now on.
    pub(crate) fn set_behaviour(&self, behaviour: PeerBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Everything received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.0.lock().unwrap().clone()
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub(crate) fn connections(&self) -> u64 {
        *self.connections.lock().unwrap()
    }

    /// Waits until `n` requests have arrived and returns them.
    pub(crate) fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let (list, cond) = &*self.received;
        let mut guard = list.lock().unwrap();
        while guard.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "peer got only {:?}", *guard);
            guard = cond.wait_timeout(guard, left).unwrap().0;
        }
        guard.clone()
    }
}

fn serve_peer(
    stream: TcpStream,
    behaviour: &Mutex<PeerBehaviour>,
    sink: &(Mutex<Vec<Received>>, Condvar),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap();
                }
                headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let received = Received {
            method: parts.next().unwrap_or_default().to_owned(),
            target: parts.next().unwrap_or_default().to_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
            at: Instant::now(),
        };
        sink.0.lock().unwrap().push(received);
        sink.1.notify_all();
        let answer = *behaviour.lock().unwrap();
        match answer {
            PeerBehaviour::Status(code) => {
                let answer = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            PeerBehaviour::Slow(delay) => {
                thread::sleep(delay);
                if writer
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .is_err()
                {
                    return;
                }
            }
            PeerBehaviour::Hang => {
                thread::sleep(Duration::from_hours(1));
                return;
            }
        }
    }
}
