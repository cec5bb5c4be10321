//! A real redis-server on a port chosen at run time.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use super::process::{Killable, free_port, wait_for_port};

/// A Redis that verve instances share: the flags that point verve at it, and an outage of
/// all of it.
pub(crate) trait SharedRedis {
    /// The flag that points verve at it, and its value.
    fn flag(&self) -> (&'static str, String);
    /// SIGKILL of every server: everything it held is gone.
    fn kill_all(&mut self);
    /// Starts every server again, empty, on the same ports, and waits until it serves.
    fn start_all_empty(&mut self);
    /// The port of the server that holds `key`.
    fn port_of_key(&self, key: &str) -> u16;
    /// Each master's port and the slot ranges it serves (`first-last`).
    fn masters_with_slots(&self) -> Vec<(u16, Vec<String>)>;

    /// The members of a sorted set, from the server that holds it.
    fn sorted_set(&self, key: &str) -> BTreeSet<String> {
        let members = redis_cli(self.port_of_key(key), &["zrange", key, "0", "-1"]);
        members
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Each master's slot ranges and start, as verve keeps a restart it found
    /// (`verve:restarted:{verve:instances}`: `<first slot>-<last slot>@<start, ms>`).
    fn masters_as_restarts(&self) -> BTreeSet<String> {
        let restart = |(port, ranges): (u16, Vec<String>)| {
            let started = server_started_ms(port);
            ranges.into_iter().map(move |r| format!("{r}@{started}"))
        };
        self.masters_with_slots()
            .into_iter()
            .flat_map(restart)
            .collect()
    }
}

/// What `redis-cli -p PORT args...` prints, or `None` when it fails.
pub(crate) fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// When the server on `port` started, to its whole second, in ms since the Unix epoch:
/// `server_time_usec` less `uptime_in_seconds` of `INFO server`.
pub(crate) fn server_started_ms(port: u16) -> u64 {
    let info = redis_cli(port, &["info", "server"]).expect("INFO server");
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO server without {name}"))
    };
    (field("server_time_usec") / 1_000_000 - field("uptime_in_seconds")) * 1_000
}

impl SharedRedis for RedisServer {
    fn flag(&self) -> (&'static str, String) {
        ("--redis-url", self.url())
    }

    fn kill_all(&mut self) {
        self.kill();
    }

    fn start_all_empty(&mut self) {
        self.restart();
    }

    fn port_of_key(&self, _key: &str) -> u16 {
        self.port
    }

    fn masters_with_slots(&self) -> Vec<(u16, Vec<String>)> {
        vec![(self.port, vec!["0-16383".to_owned()])]
    }
}

/// A real redis-server on a port chosen at run time, which a test can kill and restart
/// (empty: nothing is saved).
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    process: Killable,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            process: Killable::default(),
        };
        server.restart();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub(crate) fn restart(&mut self) {
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
    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP: the process keeps its connections and answers nothing, as behind a network
    /// partition without a reset.
    pub(crate) fn pause(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`.
    pub(crate) fn resume(&self) {
        self.process.signal(libc::SIGCONT);
    }
}
