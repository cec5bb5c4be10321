//! Test helpers: the real `verve` binary on a port chosen at run time, raw HTTP clients, a
//! real HTTP peer for callbacks, and the stats log read back.

#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod redis_cluster;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A running `verve` process.
pub struct Verve {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Verve {
    /// Starts verve on 127.0.0.1 with a port the kernel picks and a stats log in a fresh
    /// temporary directory; `args` come after those and can override them.
    pub fn start(args: &[&str]) -> Verve {
        Verve::start_binary(env!("CARGO_BIN_EXE_verve"), args)
    }

    /// Like `start`, for another binary taking the same flags (the tokio baseline).
    pub fn start_binary(binary: &str, args: &[&str]) -> Verve {
        Verve::start_command(Command::new(binary), args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Verve {
        Verve::start_command(Command::new(env!("CARGO_BIN_EXE_verve")), args, env)
    }

    /// Like `start`, with verve run by `wrapper` (a program and its arguments, then verve's
    /// path and arguments).
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Verve {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_verve"));
        Verve::start_command(command, args, &[])
    }

    fn start_command(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Verve {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.log");
        let callbacks = dir.path().join("callbacks.log");
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--stats-log"])
            .arg(&stats)
            .arg("--callback-log")
            .arg(&callbacks)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("verve: {line}");
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        let mut verve = Verve {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            stderr,
        };
        let line = verve
            .wait_for_log("listening on ", Duration::from_secs(20))
            .expect("verve did not start listening");
        let addr = line.split("listening on ").nth(1).unwrap();
        verve.addr = addr.split_whitespace().next().unwrap().parse().unwrap();
        verve
    }

    pub fn stats_path(&self) -> PathBuf {
        self.dir.path().join("stats.log")
    }

    pub fn callback_log_path(&self) -> PathBuf {
        self.dir.path().join("callbacks.log")
    }

    /// Waits for a line of the callback log that contains `needle`.
    pub fn wait_for_callback_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(self.callback_log_path()).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first stderr line containing `needle`, waiting up to `timeout` for it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lines, cond) = &*self.stderr;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = cond.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.0.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit; returns its status and its reports.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.reports());
            }
            assert!(
                Instant::now() < deadline,
                "verve did not exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The reports written so far.
    pub fn reports(&self) -> Vec<Report> {
        std::fs::read_to_string(self.stats_path())
            .unwrap_or_default()
            .lines()
            .map(Report::parse)
            .collect()
    }

    /// Waits until at least `n` reports are written.
    pub fn wait_for_reports(&self, n: usize, timeout: Duration) -> Vec<Report> {
        let deadline = Instant::now() + timeout;
        loop {
            let reports = self.reports();
            if reports.len() >= n {
                return reports;
            }
            assert!(
                Instant::now() < deadline,
                "only {} reports: {reports:?}",
                reports.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Verve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One stats line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// When the line was written.
    pub written_at: SystemTime,
    pub window_start: String,
    pub window_secs: u64,
    pub unique_requests: u64,
    pub mode: String,
    pub partial: bool,
}

impl Report {
    pub fn parse(line: &str) -> Report {
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let stamp = line.split_whitespace().next().unwrap();
        Report {
            written_at: humantime::parse_rfc3339(stamp).unwrap(),
            window_start: fields["window_start"].to_owned(),
            window_secs: fields["window_secs"].parse().unwrap(),
            unique_requests: fields["unique_requests"].parse().unwrap(),
            mode: fields["mode"].to_owned(),
            partial: fields["partial"].parse().unwrap(),
        }
    }

    /// Seconds since the epoch of the window's start.
    pub fn start_secs(&self) -> u64 {
        humantime::parse_rfc3339(&self.window_start)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}

/// An answer read off the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A keep-alive client connection that speaks raw bytes.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Sends a GET of `target` over HTTP/1.1 and reads its answer.
    pub fn get(&mut self, target: &str) -> Answer {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_answer(false).expect("connection closed")
    }

    /// Reads one answer; `None` if the connection closed first. `head_only` for HEAD.
    pub fn read_answer(&mut self, head_only: bool) -> Option<Answer> {
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
                    return Some(Answer {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True when the server closes the connection (end of file, or a reset) within the read
    /// timeout without sending anything more.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        self.buf.is_empty() && closed(self.stream.read(&mut chunk))
    }

    /// True when, for `wait`, nothing more arrives and the connection stays open.
    pub fn is_idle(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 1024];
        let read = self.stream.read(&mut chunk);
        self.buf.is_empty()
            && matches!(read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// Whether a read's outcome means the peer closed: end of file or a reset, not a timeout.
pub fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `raw` on a new connection and reads until the server closes it.
pub fn exchange_until_close(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
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
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every report of window `w` (of `window_secs`) across the instances, waiting up to
/// `timeout` for one, then a moment more for a second (wrong) one.
pub fn reports_of(
    instances: &[&Verve],
    w: u64,
    window_secs: u64,
    timeout: Duration,
) -> Vec<Report> {
    let of_w = || -> Vec<Report> {
        instances
            .iter()
            .flat_map(|v| v.reports())
            .filter(|r| r.start_secs() == w * window_secs)
            .collect()
    };
    let deadline = Instant::now() + timeout;
    while of_w().is_empty() && Instant::now() <= deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    of_w()
}

/// Ids answered `ok`, by the window they arrived in. A batch whose round trip crossed a
/// window boundary could have landed in either window; its ids are kept apart.
#[derive(Debug, Default, Clone)]
pub struct WindowedIds {
    pub sure: std::collections::BTreeMap<u64, std::collections::HashSet<i64>>,
    pub ambiguous: std::collections::BTreeMap<u64, std::collections::HashSet<i64>>,
    pub requests: usize,
}

impl WindowedIds {
    pub fn merge(&mut self, other: WindowedIds) {
        for (w, ids) in other.sure {
            self.sure.entry(w).or_default().extend(ids);
        }
        for (w, ids) in other.ambiguous {
            self.ambiguous.entry(w).or_default().extend(ids);
        }
        self.requests += other.requests;
    }

    /// Asserts that `count` is the number of distinct ids of window `w`: exactly, when no
    /// batch was ambiguous about it.
    pub fn assert_count(&self, w: u64, count: u64) {
        let sure = self.sure.get(&w).cloned().unwrap_or_default();
        let maybe = self.ambiguous.get(&w).cloned().unwrap_or_default();
        if maybe.is_empty() {
            assert_eq!(count, sure.len() as u64, "window {w}");
        } else {
            let upper = sure.union(&maybe).count() as u64;
            assert!(
                (sure.len() as u64..=upper).contains(&count),
                "window {w}: {count}"
            );
        }
    }
}

/// Sends `ids` pipelined on `conn`, asserts every answer is `200 ok`, and records them.
pub fn send_ids(conn: &mut Conn, ids: &[i64], window_secs: u64, seen: &mut WindowedIds) {
    let mut batch = Vec::new();
    for id in ids {
        batch.extend_from_slice(
            format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    let sent = SystemTime::now();
    conn.send(&batch);
    for _ in ids {
        let a = conn.read_answer(false).expect("an answer");
        assert_eq!((a.status, a.body_str()), (200, "ok"));
    }
    let received = SystemTime::now();
    seen.requests += ids.len();
    let (w0, w1) = (
        window_of(sent, window_secs),
        window_of(received, window_secs),
    );
    if w0 == w1 {
        seen.sure.entry(w0).or_default().extend(ids);
    } else {
        for w in [w0, w1] {
            seen.ambiguous.entry(w).or_default().extend(ids);
        }
    }
}

/// The window (of length `secs`) that `t` falls in.
pub fn window_of(t: SystemTime, secs: u64) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() / secs
}

/// Sleeps until `offset` after the start of the next window of length `secs`.
pub fn sleep_until_next_window(secs: u64, offset: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = (now.as_secs() / secs + 1) * secs;
    let target = Duration::from_secs(next) + offset;
    thread::sleep(target - now);
    next / secs
}

/// What a callback peer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub body: String,
    /// When the whole request had arrived.
    pub at: Instant,
}

/// How the callback peer answers.
#[derive(Debug, Clone, Copy)]
pub enum PeerBehaviour {
    Status(u16),
    /// Answers 200 after this long.
    Slow(Duration),
    /// Reads the request and never answers.
    Hang,
}

/// A real HTTP server on 127.0.0.1 that records every request it receives.
pub struct CallbackPeer {
    pub addr: SocketAddr,
    received: Arc<(Mutex<Vec<Received>>, Condvar)>,
    connections: Arc<Mutex<u64>>,
}

impl CallbackPeer {
    pub fn start(behaviour: PeerBehaviour) -> CallbackPeer {
        CallbackPeer::start_on(0, behaviour)
    }

    /// A peer on a given port (0: any), e.g. one callbacks already failed to reach.
    pub fn start_on(port: u16, behaviour: PeerBehaviour) -> CallbackPeer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let connections = Arc::new(Mutex::new(0));
        let (sink, count) = (Arc::clone(&received), Arc::clone(&connections));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *count.lock().unwrap() += 1;
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve_peer(stream, behaviour, &sink));
            }
        });
        CallbackPeer {
            addr,
            received,
            connections,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub fn connections(&self) -> u64 {
        *self.connections.lock().unwrap()
    }

    /// Waits until `n` requests have arrived and returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
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

fn serve_peer(stream: TcpStream, behaviour: PeerBehaviour, sink: &(Mutex<Vec<Received>>, Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap();
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
            at: Instant::now(),
        };
        sink.0.lock().unwrap().push(received);
        sink.1.notify_all();
        match behaviour {
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
                thread::sleep(Duration::from_secs(3600));
                return;
            }
        }
    }
}

/// A child process that is killed (SIGKILL) when dropped.
#[derive(Default)]
pub struct Killable(Option<Child>);

impl Killable {
    pub fn spawn(command: &mut Command, what: &str) -> Killable {
        Killable(Some(
            command.spawn().unwrap_or_else(|e| panic!("{what}: {e}")),
        ))
    }

    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the running process.
    pub fn signal(&self, sig: i32) {
        let child = self.0.as_ref().expect("a running process");
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    /// SIGKILL: whatever it held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral range:
/// a client that keeps connecting to a port in that range while nothing listens there can
/// end up connected to itself (TCP simultaneous open) and hold the port, so that the server
/// meant for it cannot bind it.
pub fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = 10_000 + (seed >> 8) as u16 % (ephemeral_low - 10_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis that verve instances share: the flags that point verve at it, and an outage of
/// all of it.
pub trait SharedRedis {
    fn flags(&self) -> Vec<String>;
    /// SIGKILL of every server: everything it held is gone.
    fn kill_all(&mut self);
    /// Starts every server again, empty, on the same ports, and waits until it serves.
    fn start_all_empty(&mut self);
}

impl SharedRedis for RedisServer {
    fn flags(&self) -> Vec<String> {
        vec!["--redis-url".into(), self.url()]
    }

    fn kill_all(&mut self) {
        self.kill();
    }

    fn start_all_empty(&mut self) {
        self.restart();
    }
}

/// A real redis-server on a port chosen at run time, which a test can kill and restart
/// (empty: nothing is saved).
pub struct RedisServer {
    pub port: u16,
    process: Killable,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            process: Killable::default(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.process = Killable::spawn(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "redis-server (scripts/test.sh installs it)",
        );
        wait_for_port(self.port, "redis-server");
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP: the process keeps its connections and answers nothing, as behind a network
    /// partition without a reset.
    pub fn pause(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.process.signal(libc::SIGCONT);
    }
}

/// A real Kafka-protocol broker (tansu) on a port chosen at run time. `scripts/test.sh`
/// installs tansu into `~/.cache/verve-test-tools` (or set `VERVE_TANSU`).
pub struct TansuBroker {
    pub port: u16,
    process: Killable,
    storage: String,
    dir: tempfile::TempDir,
}

impl TansuBroker {
    pub fn binary() -> PathBuf {
        std::env::var_os("VERVE_TANSU").map_or_else(
            || {
                let home = std::env::var_os("HOME").expect("HOME");
                PathBuf::from(home).join(".cache/verve-test-tools/bin/tansu")
            },
            PathBuf::from,
        )
    }

    /// A broker keeping everything in memory.
    pub fn start_memory() -> TansuBroker {
        TansuBroker::start_with("memory://tansu/")
    }

    /// A broker on SQLite in its own directory: it keeps topics and producer state over a
    /// kill and restart.
    pub fn start_sqlite() -> TansuBroker {
        TansuBroker::start_with("sqlite://tansu.db")
    }

    fn start_with(storage: &str) -> TansuBroker {
        let port = free_port();
        let mut broker = TansuBroker::on_port(port, storage);
        broker.restart();
        broker
    }

    /// A broker to start later, on a port chosen now.
    pub fn on_port(port: u16, storage: &str) -> TansuBroker {
        TansuBroker {
            port,
            process: Killable::default(),
            storage: storage.to_owned(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        self.process = Killable::spawn(
            Command::new(TansuBroker::binary())
                .current_dir(self.dir.path())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", &self.storage])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "tansu (scripts/test.sh installs it)",
        );
        wait_for_port(self.port, "tansu");
    }

    pub fn create_topic(&self, topic: &str) {
        let status = Command::new(TansuBroker::binary())
            .args(["topic", "create", topic, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", "1"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create failed");
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Every record of partition 0 of `topic`, as (key, value), reading until `n` have arrived
/// (and a moment more, to catch duplicates) or `timeout` passes.
pub fn kafka_records(
    bootstrap: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(String, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "verve-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|t| Instant::now() < t) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            got.push((key, value));
        }
        if got.len() >= n && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    got
}

/// A `/metrics` scrape.
pub fn scrape(addr: SocketAddr) -> String {
    let answer = Conn::open(addr).get("/metrics");
    assert_eq!(answer.status, 200);
    answer.body_str().to_owned()
}

/// The value of the sample `name{labels}` (or `name` without labels) in a scrape.
pub fn metric(scrape: &str, series: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
        .trim()
        .parse()
        .unwrap()
}
