//! The real `verve` binary (or `verve-tokio`) on a port chosen at run time, its stats log read
//! back as reports, and its `/metrics` scraped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http_client::Conn;

/// A running `verve` process.
pub(crate) struct Verve {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Verve {
    /// Starts verve on 127.0.0.1 with a port the kernel picks and a stats log in a fresh
    /// temporary directory; `args` come after those and can override them.
    pub(crate) fn start(args: &[&str]) -> Verve {
        Verve::start_binary(env!("CARGO_BIN_EXE_verve"), args)
    }

    /// Like `start`, for another binary taking the same flags (the tokio baseline).
    pub(crate) fn start_binary(binary: &str, args: &[&str]) -> Verve {
        Verve::start_command(Command::new(binary), args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Verve {
        Verve::start_command(Command::new(env!("CARGO_BIN_EXE_verve")), args, env)
    }

    /// Like `start`, with verve run by `wrapper` (a program and its arguments, then verve's
    /// path and arguments).
    pub(crate) fn start_under(wrapper: &[&str], args: &[&str]) -> Verve {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_verve"));
        Verve::start_command(command, args, &[])
    }

    /// Runs `verve` (under `wrapper`, when not empty) with `args`, expecting start-up to fail:
    /// its exit code and what it wrote to stderr.
    pub(crate) fn refused_start(wrapper: &[&str], args: &[&str]) -> (Option<i32>, String) {
        let binary = env!("CARGO_BIN_EXE_verve");
        let mut command = Command::new(wrapper.first().copied().unwrap_or(binary));
        if !wrapper.is_empty() {
            command.args(&wrapper[1..]).arg(binary);
        }
        let dir = tempfile::tempdir().unwrap();
        let out = command
            .args(["--listen", "127.0.0.1:0", "--stats-log"])
            .arg(dir.path().join("stats.log"))
            .arg("--callback-log")
            .arg(dir.path().join("callbacks.log"))
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
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

    pub(crate) fn stats_path(&self) -> PathBuf {
        self.dir.path().join("stats.log")
    }

    pub(crate) fn callback_log_path(&self) -> PathBuf {
        self.dir.path().join("callbacks.log")
    }

    /// Waits for a line of the callback log that contains `needle`.
    pub(crate) fn wait_for_callback_log(&self, needle: &str, timeout: Duration) -> Option<String> {
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

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first stderr line containing `needle`, waiting up to `timeout` for it.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
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

    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.stderr.0.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn terminate(self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit; returns its status and its reports.
    pub(crate) fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
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
    pub(crate) fn reports(&self) -> Vec<Report> {
        std::fs::read_to_string(self.stats_path())
            .unwrap_or_default()
            .lines()
            .map(Report::parse)
            .collect()
    }

    /// Waits until at least `n` reports are written.
    pub(crate) fn wait_for_reports(&self, n: usize, timeout: Duration) -> Vec<Report> {
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
    pub(crate) fn rss_kib(&self) -> u64 {
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
pub(crate) struct Report {
    /// When the line was written.
    pub(crate) written_at: SystemTime,
    pub(crate) window_start: String,
    pub(crate) window_secs: u64,
    pub(crate) unique_requests: u64,
    pub(crate) mode: String,
    pub(crate) partial: bool,
}

impl Report {
    pub(crate) fn parse(line: &str) -> Report {
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
    pub(crate) fn start_secs(&self) -> u64 {
        humantime::parse_rfc3339(&self.window_start)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}

/// Every report of window `w` (of `window_secs`) across the instances, waiting up to
/// `timeout` for one, then a moment more for a second (wrong) one.
pub(crate) fn reports_of(
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

/// A `/metrics` scrape.
pub(crate) fn scrape(addr: SocketAddr) -> String {
    let answer = Conn::open(addr).get("/metrics");
    assert_eq!(answer.status, 200);
    answer.body_str().to_owned()
}

/// The value of the sample `name{labels}` (or `name` without labels) in a scrape.
pub(crate) fn metric(scrape: &str, series: &str) -> u64 {
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
