//! The real `verve` binary (or `verve-tokio`) on a port chosen at run time, its stats log read
//! back as reports, and its `/metrics` scraped.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use verve::config::{CallbackMethod, DriverChoice, Durability};

use super::http_client::Conn;
use super::redis::SharedRedis;

/// What a verve process left when it exited.
pub(crate) struct Exited {
    pub(crate) status: ExitStatus,
    pub(crate) reports: Vec<Report>,
    /// Every line it wrote to stderr.
    pub(crate) log: Vec<String>,
    /// Every line of its callback log.
    pub(crate) callback_log: Vec<String>,
}

/// A running `verve` process.
pub(crate) struct Verve {
    child: Child,
    /// How it was started, to start it again in the same directory.
    options: VerveOptions,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// The thread reading stderr: done once the process has exited and the pipe drained.
    stderr_reader: thread::JoinHandle<()>,
}

/// How to start verve: each method sets the flag of the same name, in the flag's type (a
/// flag set twice keeps the last value, as on the command line). Every instance listens on
/// 127.0.0.1 with a port the kernel picks (unless `listen` says otherwise), and logs to a
/// fresh temporary directory, where its
/// write-ahead log is too unless `wal_dir` says otherwise.
#[derive(Clone)]
pub(crate) struct VerveOptions {
    binary: &'static str,
    wrapper: Vec<String>,
    flags: BTreeMap<&'static str, Vec<String>>,
    env: Vec<(String, String)>,
}

impl VerveOptions {
    fn set(mut self, flag: &'static str, value: &impl ToString) -> Self {
        self.flags.insert(flag, vec![value.to_string()]);
        self
    }

    fn switch(mut self, flag: &'static str) -> Self {
        self.flags.insert(flag, Vec::new());
        self
    }

    fn millis(self, flag: &'static str, value: Duration) -> Self {
        self.set(flag, &value.as_millis())
    }

    /// The hyper-on-tokio baseline instead of verve (it takes the same flags).
    #[cfg(feature = "tokio-baseline")]
    pub(crate) fn baseline(mut self) -> Self {
        self.binary = env!("CARGO_BIN_EXE_verve-tokio");
        self
    }

    /// Runs verve under `wrapper`: a program and its arguments, then verve's path and flags.
    pub(crate) fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|&w| w.to_owned()).collect();
        self
    }

    /// An environment variable for the process.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Listens on `addr` instead of a port the kernel picks.
    pub(crate) fn listen(self, addr: SocketAddr) -> Self {
        self.set("--listen", &addr)
    }

    pub(crate) fn workers(self, n: u16) -> Self {
        self.set("--workers", &n)
    }

    pub(crate) fn window_secs(self, secs: u64) -> Self {
        self.set("--window-secs", &secs)
    }

    pub(crate) fn report_grace(self, grace: Duration) -> Self {
        self.millis("--report-grace-ms", grace)
    }

    pub(crate) fn report_max_delay(self, delay: Duration) -> Self {
        self.set("--report-max-delay-secs", &delay.as_secs())
    }

    pub(crate) fn driver(self, driver: DriverChoice) -> Self {
        self.set("--driver", &value_name(&driver))
    }

    pub(crate) fn idle_timeout(self, timeout: Duration) -> Self {
        self.millis("--idle-timeout-ms", timeout)
    }

    pub(crate) fn head_timeout(self, timeout: Duration) -> Self {
        self.millis("--head-timeout-ms", timeout)
    }

    pub(crate) fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.millis("--shutdown-timeout-ms", timeout)
    }

    pub(crate) fn max_connections(self, n: u32) -> Self {
        self.set("--max-connections", &n)
    }

    pub(crate) fn max_window_ids(self, n: u64) -> Self {
        self.set("--max-window-ids", &n)
    }

    pub(crate) fn instance_id(self, id: &str) -> Self {
        self.set("--instance-id", &id)
    }

    pub(crate) fn callback_allow_private(self) -> Self {
        self.switch("--callback-allow-private")
    }

    pub(crate) fn callback_method(self, method: CallbackMethod) -> Self {
        self.set("--callback-method", &value_name(&method))
    }

    pub(crate) fn callback_threads(self, n: u16) -> Self {
        self.set("--callback-threads", &n)
    }

    pub(crate) fn callback_queue(self, n: u64) -> Self {
        self.set("--callback-queue", &n)
    }

    pub(crate) fn callback_timeout(self, timeout: Duration) -> Self {
        self.millis("--callback-timeout-ms", timeout)
    }

    pub(crate) fn callback_breaker_failures(self, n: u32) -> Self {
        self.set("--callback-breaker-failures", &n)
    }

    pub(crate) fn callback_breaker_cooldown(self, cooldown: Duration) -> Self {
        self.millis("--callback-breaker-cooldown-ms", cooldown)
    }

    /// Counts through `redis` (`--redis-url` or `--redis-cluster-nodes`).
    pub(crate) fn redis(self, redis: &impl SharedRedis) -> Self {
        let (flag, value) = redis.flag();
        self.set(flag, &value)
    }

    /// Counts through the one Redis at `url` (a proxy in front of it, say).
    pub(crate) fn redis_url(self, url: &str) -> Self {
        self.set("--redis-url", &url)
    }

    pub(crate) fn redis_shards(self, n: u32) -> Self {
        self.set("--redis-shards", &n)
    }

    pub(crate) fn redis_heartbeat(self, heartbeat: Duration) -> Self {
        self.millis("--redis-heartbeat-ms", heartbeat)
    }

    pub(crate) fn kafka_brokers(self, bootstrap: &str) -> Self {
        self.set("--kafka-brokers", &bootstrap)
    }

    /// One more librdkafka setting, `key=value` (repeatable).
    pub(crate) fn kafka_option(mut self, option: &str) -> Self {
        self.flags
            .entry("--kafka-option")
            .or_default()
            .push(option.to_owned());
        self
    }

    pub(crate) fn kafka_create_topic(self) -> Self {
        self.switch("--kafka-create-topic")
    }

    pub(crate) fn durability(self, durability: Durability) -> Self {
        self.set("--durability", &value_name(&durability))
    }

    pub(crate) fn wal_dir(self, dir: &Path) -> Self {
        self.set("--wal-dir", &dir.display())
    }

    pub(crate) fn wal_fsync(self, interval: Duration) -> Self {
        self.millis("--wal-fsync-ms", interval)
    }

    /// The command: verve (under the wrapper, if any) listening on 127.0.0.1 with a port the
    /// kernel picks, logging into `dir`, with the flags and environment set.
    fn command(&self, dir: &Path) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(self.binary);
                command
            }
            None => Command::new(self.binary),
        };
        command
            .arg("--stats-log")
            .arg(dir.join("stats.log"))
            .arg("--callback-log")
            .arg(dir.join("callbacks.log"));
        if !self.flags.contains_key("--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !self.flags.contains_key("--wal-dir") {
            command.arg("--wal-dir").arg(dir.join("wal"));
        }
        for (flag, values) in &self.flags {
            if values.is_empty() {
                command.arg(flag);
            }
            for value in values {
                command.arg(flag).arg(value);
            }
        }
        command
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs verve expecting start-up to fail: its exit code and what it wrote to stderr.
    pub(crate) fn start_refused(self) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().unwrap();
        let out = self.command(dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    }

    /// Starts the process and waits until it listens.
    pub(crate) fn start(self) -> Verve {
        self.start_in(tempfile::tempdir().unwrap())
    }

    /// Starts the process with its logs (and write-ahead log) in `dir`, and waits until it
    /// listens.
    fn start_in(self, dir: tempfile::TempDir) -> Verve {
        let mut child = self
            .command(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("verve: {line}");
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        let mut verve = Verve {
            child,
            options: self,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            stderr,
            stderr_reader,
        };
        let line = verve
            .wait_for_log("listening on ", Duration::from_secs(20))
            .expect("verve did not start listening");
        let addr = line.split("listening on ").nth(1).unwrap();
        verve.addr = addr.split_whitespace().next().unwrap().parse().unwrap();
        verve
    }
}

/// A `verve` killed with SIGKILL, its directory kept.
pub(crate) struct Killed {
    options: VerveOptions,
    pub(crate) dir: tempfile::TempDir,
}

impl Killed {
    /// Its write-ahead log's directory.
    pub(crate) fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    /// The same command again in the same directory, as systemd's `Restart=` would; waits
    /// until it listens.
    pub(crate) fn restart(self) -> Verve {
        self.options.start_in(self.dir)
    }
}

/// The command-line spelling of one of verve's flag values.
pub(crate) fn value_name(value: &impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("no value is hidden")
        .get_name()
        .to_owned()
}

impl Verve {
    /// Options for starting `verve`, defaults otherwise.
    pub(crate) fn options() -> VerveOptions {
        VerveOptions {
            binary: env!("CARGO_BIN_EXE_verve"),
            wrapper: Vec::new(),
            flags: BTreeMap::new(),
            env: Vec::new(),
        }
    }

    /// Starts `verve` with the default flags.
    pub(crate) fn start() -> Verve {
        Verve::options().start()
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

    /// SIGKILL: the process dies at once, as in an OOM kill; its directory (stats log,
    /// write-ahead log) stays for `Killed::restart`.
    pub(crate) fn kill(mut self) -> Killed {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Killed {
            options: self.options.clone(),
            dir,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn terminate(self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit; returns its status and its reports.
    pub(crate) fn wait_exit(self, timeout: Duration) -> (ExitStatus, Vec<Report>) {
        let (status, reports, _) = self.wait_exit_with_log(timeout);
        (status, reports)
    }

    /// Waits for the process to exit; returns its status, its reports and every line it
    /// wrote to stderr, up to its last.
    pub(crate) fn wait_exit_with_log(
        self,
        timeout: Duration,
    ) -> (ExitStatus, Vec<Report>, Vec<String>) {
        let exited = self.wait_exit_with_logs(timeout);
        (exited.status, exited.reports, exited.log)
    }

    /// Waits for the process to exit; what it left.
    pub(crate) fn wait_exit_with_logs(mut self, timeout: Duration) -> Exited {
        let deadline = Instant::now() + timeout;
        loop {
            // Polled often: a restart test starts the next process right after the exit.
            if let Some(status) = self.child.try_wait().unwrap() {
                while !self.stderr_reader.is_finished() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
                let callback_log = std::fs::read_to_string(self.callback_log_path())
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                return Exited {
                    status,
                    reports: self.reports(),
                    log: self.log_lines(),
                    callback_log,
                };
            }
            assert!(
                Instant::now() < deadline,
                "verve did not exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(1));
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
        // Under a wrapper, verve is the wrapper's child: a killed strace leaves its tracee
        // running, so it goes first.
        if !self.options.wrapper.is_empty() {
            for pid in children_of(self.pid()) {
                // SAFETY: sending a signal to a process this test started, through its wrapper.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`: the fields after the command name's `)`.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(parent)
            })
        })
        .collect()
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
    /// Counted from the write-ahead log after a restart (`recovered=true`).
    pub(crate) recovered: bool,
    /// The window's count again, with ids its first report lacked (`amended=true`).
    pub(crate) amended: bool,
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
            recovered: fields.get("recovered").is_some_and(|r| *r == "true"),
            amended: fields.get("amended").is_some_and(|r| *r == "true"),
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
