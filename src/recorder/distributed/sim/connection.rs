//! Connections to the simulated servers, behind redis-rs's `ConnectionLike`: the seam the
//! real connections fill, so that the instances' Redis threads run unchanged. A pipeline is
//! answered command by command, and another instance's commands may come between two of them.
//! While its process is paused (SIGSTOP) a connection sends nothing and hands back nothing;
//! while its host is cut off, every call times out.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

use super::super::connect::{Connect, RESPONSE_TIMEOUT};
use super::servers::{Fault, Servers};

fn broken(kind: io::ErrorKind, what: &str) -> RedisError {
    RedisError::from(io::Error::new(kind, what.to_owned()))
}

fn timed_out() -> RedisError {
    broken(io::ErrorKind::TimedOut, "response timed out")
}

fn lock(servers: &Mutex<Servers>) -> MutexGuard<'_, Servers> {
    servers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens connections to the simulated servers.
#[derive(Clone)]
pub(super) struct SimConnect {
    pub(super) servers: Arc<Mutex<Servers>>,
    /// The process is paused (SIGSTOP).
    pub(super) paused: Arc<AtomicBool>,
    /// The instance's host is cut off from every server (a partition).
    pub(super) cut_off: Arc<AtomicBool>,
}

/// Returns once the process is not paused.
async fn running(paused: &AtomicBool) {
    while paused.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Connect for SimConnect {
    type Connection = SimConnection;

    async fn connect(
        &self,
        node: &str,
        _info: ConnectionInfo,
    ) -> Result<SimConnection, RedisError> {
        running(&self.paused).await;
        if self.cut_off.load(Ordering::Relaxed) {
            return Err(broken(io::ErrorKind::TimedOut, "connection timed out"));
        }
        match lock(&self.servers).reach(node) {
            Some((_, Fault::Down)) | None => Err(broken(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            )),
            Some((incarnation, _)) => Ok(SimConnection {
                servers: Arc::clone(&self.servers),
                paused: Arc::clone(&self.paused),
                cut_off: Arc::clone(&self.cut_off),
                node: node.to_owned(),
                incarnation,
            }),
        }
    }
}

/// A connection to one simulated server.
#[derive(Clone)]
pub(super) struct SimConnection {
    servers: Arc<Mutex<Servers>>,
    paused: Arc<AtomicBool>,
    cut_off: Arc<AtomicBool>,
    node: String,
    /// The server's incarnation when connected: a later one has broken this connection.
    incarnation: u64,
}

impl SimConnection {
    /// How long the server takes to answer now, or the error that ends the call.
    async fn answer_delay(&self) -> Result<Duration, RedisError> {
        if self.cut_off.load(Ordering::Relaxed) {
            tokio::time::sleep(RESPONSE_TIMEOUT).await;
            return Err(timed_out());
        }
        let reach = lock(&self.servers).reach(&self.node);
        match reach {
            Some((incarnation, _)) if incarnation != self.incarnation => {
                Err(broken(io::ErrorKind::BrokenPipe, "broken pipe"))
            }
            Some((_, Fault::None)) => Ok(Duration::ZERO),
            Some((_, Fault::Slow(delay))) if delay < RESPONSE_TIMEOUT => Ok(delay),
            Some((_, Fault::Hung | Fault::Slow(_))) => {
                tokio::time::sleep(RESPONSE_TIMEOUT).await;
                Err(timed_out())
            }
            Some((_, Fault::Down)) | None => Err(broken(io::ErrorKind::BrokenPipe, "broken pipe")),
        }
    }

    async fn call(&self, cmds: Vec<Vec<Vec<u8>>>) -> Result<Vec<Value>, RedisError> {
        running(&self.paused).await;
        tokio::time::sleep(self.answer_delay().await?).await;
        let mut replies = Vec::with_capacity(cmds.len());
        for args in cmds {
            // The server may have gone since the pipeline's last command.
            self.answer_delay().await?;
            if args[0].eq_ignore_ascii_case(b"WAIT") {
                replies.push(self.wait(&args).await);
                continue;
            }
            replies.push(lock(&self.servers).run(&self.node, &args));
            tokio::task::yield_now().await;
        }
        running(&self.paused).await;
        // Cut off while the server ran them: the commands were applied, their replies are
        // lost, and the call times out (a claim whose outcome its claimant does not learn).
        if self.cut_off.load(Ordering::Relaxed) {
            tokio::time::sleep(RESPONSE_TIMEOUT).await;
            return Err(timed_out());
        }
        Ok(replies)
    }

    /// `WAIT 1 <ms>`: 1 once the replica has every write, else 0 at the timeout.
    async fn wait(&self, args: &[Vec<u8>]) -> Value {
        let timeout: u64 = std::str::from_utf8(&args[2])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
        loop {
            if lock(&self.servers).replicated(&self.node) {
                return Value::Int(1);
            }
            if tokio::time::Instant::now() >= deadline {
                return Value::Int(0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn args_of(cmd: &Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes.to_vec(),
            redis::Arg::Cursor => b"0".to_vec(),
        })
        .collect()
}

impl ConnectionLike for SimConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let cmds = vec![args_of(cmd)];
        Box::pin(async move { Ok(self.call(cmds).await?.remove(0)) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let cmds = pipeline.cmd_iter().map(args_of).collect();
        Box::pin(async move {
            let replies = self.call(cmds).await?;
            Ok(replies.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
