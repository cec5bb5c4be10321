//! A real redis-server on a port chosen at run time.

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
