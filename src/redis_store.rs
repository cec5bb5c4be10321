//! Redis, as the recorder uses it: pipelined `SADD` batches, global counts, heartbeats, flush
//! marks and the report election. Only the recorder thread calls it; every call either
//! succeeds or drops the connection, which the next call re-opens after a backoff.
//!
//! Keys (`<w>` is the window start in RFC 3339, e.g. `2026-11-24T06:21:00Z`):
//! - `verve:w:<w>` or `verve:w:<w>:<shard>`: the ids of a window (sets, with an expiry)
//! - `verve:instances`: sorted set of instance ids scored by their last heartbeat (ms)
//! - `verve:flushed:<w>`: instances that have pushed all their ids of the window
//! - `verve:report:<w>`: the election lease of the window's reporter
//! - `verve:reported:<w>`: set once the window's report is written

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Client, Connection, Pipeline, Value};

use crate::id_set::hash_id;
use crate::metrics::Metrics;

/// Ids per `SADD` command.
const IDS_PER_COMMAND: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--redis-url: {0}")]
    Url(redis::RedisError),
}

/// Whether Redis answered the recorder's last call; read by `/readyz`.
#[derive(Debug, Default)]
pub struct RedisHealth(AtomicBool);

impl RedisHealth {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One step of a push: ids of a window, or a count of it to read after the ids before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOp {
    Ids { window: String, ids: Vec<i64> },
    Count { window: String },
}

pub struct RedisStore {
    client: Client,
    conn: Option<Connection>,
    instance: String,
    shards: u32,
    key_ttl_secs: u64,
    heartbeat_ttl: Duration,
    health: Arc<RedisHealth>,
    metrics: Arc<Metrics>,
    backoff: Duration,
    next_attempt: Instant,
    connected_since: Option<Instant>,
    /// Set on every new connection; the recorder takes it to replay what Redis may lack.
    fresh_connection: bool,
    last_heartbeat: Option<Instant>,
    /// Keys given their expiry on this connection.
    expiring: std::collections::HashSet<String>,
}

impl RedisStore {
    pub fn new(
        url: &str,
        instance: String,
        shards: u32,
        key_ttl: Duration,
        heartbeat_ttl: Duration,
        health: Arc<RedisHealth>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        Ok(RedisStore {
            client: Client::open(url).map_err(StoreError::Url)?,
            conn: None,
            instance,
            shards,
            key_ttl_secs: key_ttl.as_secs().max(1),
            heartbeat_ttl,
            health,
            metrics,
            backoff: MIN_BACKOFF,
            next_attempt: Instant::now(),
            connected_since: None,
            fresh_connection: false,
            last_heartbeat: None,
            expiring: std::collections::HashSet::new(),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connected for at least a heartbeat expiry: every live instance has had time to
    /// announce itself (again, after a Redis restart), so the set of live instances is whole.
    pub fn is_settled(&self) -> bool {
        self.connected_since
            .is_some_and(|t| t.elapsed() >= self.heartbeat_ttl)
    }

    /// True once after each new connection.
    pub fn take_fresh_connection(&mut self) -> bool {
        std::mem::take(&mut self.fresh_connection)
    }

    /// Connects if not connected and the backoff allows; returns whether connected.
    pub fn ensure_connected(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        if Instant::now() < self.next_attempt {
            return false;
        }
        let connected = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|c| {
                c.set_read_timeout(Some(IO_TIMEOUT))?;
                c.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(c)
            });
        match connected {
            Ok(conn) => {
                log::info!("redis: connected");
                self.conn = Some(conn);
                self.connected_since = Some(Instant::now());
                self.fresh_connection = true;
                self.backoff = MIN_BACKOFF;
                self.last_heartbeat = None;
                self.expiring.clear();
                self.health.0.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.metrics.redis_error();
                self.next_attempt = Instant::now() + self.backoff;
                if self.backoff == MIN_BACKOFF {
                    log::warn!("redis: cannot connect: {e}; retrying with backoff");
                }
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                false
            }
        }
    }

    /// Runs a pipeline; on any error the connection is dropped.
    fn run(&mut self, pipe: &Pipeline) -> Option<Vec<Value>> {
        if !self.ensure_connected() {
            return None;
        }
        let conn = self.conn.as_mut()?;
        let started = Instant::now();
        match pipe.query::<Vec<Value>>(conn) {
            Ok(values) => {
                self.metrics.redis_round_trip(started.elapsed());
                Some(values)
            }
            Err(e) => {
                self.metrics.redis_error();
                log::warn!("redis: {e}; reconnecting");
                self.conn = None;
                self.connected_since = None;
                self.health.0.store(false, Ordering::Relaxed);
                self.next_attempt = Instant::now() + self.backoff;
                None
            }
        }
    }

    fn shard_keys(&self, window: &str) -> Vec<String> {
        if self.shards <= 1 {
            vec![format!("verve:w:{window}")]
        } else {
            (0..self.shards)
                .map(|s| format!("verve:w:{window}:{s}"))
                .collect()
        }
    }

    fn shard_of(&self, id: i64) -> usize {
        (hash_id(id) % u64::from(self.shards.max(1))) as usize
    }

    /// Sends the ops in order, in one pipeline. Returns the count read for each `Count` op,
    /// or `None` when Redis did not take them (nothing is known to be stored then).
    pub fn push(&mut self, ops: &[PushOp]) -> Option<Vec<u64>> {
        let mut pipe = redis::pipe();
        let mut counts: Vec<usize> = Vec::new(); // number of SCARD replies per Count op
        let mut new_keys = Vec::new();
        for op in ops {
            match op {
                PushOp::Ids { window, ids } => {
                    let keys = self.shard_keys(window);
                    let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); keys.len()];
                    for &id in ids {
                        by_shard[self.shard_of(id)].push(id);
                    }
                    for (key, ids) in keys.iter().zip(by_shard) {
                        for chunk in ids.chunks(IDS_PER_COMMAND) {
                            pipe.cmd("SADD").arg(key).arg(chunk).ignore();
                        }
                        if !self.expiring.contains(key) && !new_keys.contains(key) {
                            pipe.cmd("EXPIRE").arg(key).arg(self.key_ttl_secs).ignore();
                            new_keys.push(key.clone());
                        }
                    }
                }
                PushOp::Count { window } => {
                    let keys = self.shard_keys(window);
                    for key in &keys {
                        pipe.cmd("SCARD").arg(key);
                    }
                    counts.push(keys.len());
                }
            }
        }
        let values = self.run(&pipe)?;
        // Once per key per connection: a reconnect may find Redis restarted empty. Old
        // windows' keys are forgotten now and then; re-sending their EXPIRE is harmless.
        if self.expiring.len() > 1024 {
            self.expiring.clear();
        }
        self.expiring.extend(new_keys);
        let mut values = values.into_iter();
        Some(
            counts
                .into_iter()
                .map(|n| {
                    (&mut values)
                        .take(n)
                        .map(|v| redis::from_redis_value::<u64>(&v).unwrap_or(0))
                        .sum()
                })
                .collect(),
        )
    }

    /// The window's global count: the sum of its shards' sizes.
    pub fn count(&mut self, window: &str) -> Option<u64> {
        self.push(&[PushOp::Count {
            window: window.to_owned(),
        }])
        .map(|c| c[0])
    }

    /// Announces this instance as live, at most every quarter of the heartbeat expiry.
    pub fn heartbeat(&mut self) {
        if self
            .last_heartbeat
            .is_some_and(|t| t.elapsed() < self.heartbeat_ttl / 4)
        {
            return;
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg("verve:instances")
            .arg(now)
            .arg(&self.instance)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg("verve:instances")
            .arg("-inf")
            .arg(now.saturating_sub(10 * self.heartbeat_ttl.as_millis() as u64))
            .ignore();
        if self.run(&pipe).is_some() {
            self.last_heartbeat = Some(Instant::now());
        }
    }

    /// Says this instance has gone (at shutdown), so that reporters stop waiting for it.
    pub fn leave(&mut self) {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg("verve:instances")
            .arg(&self.instance)
            .ignore();
        self.run(&pipe);
    }

    /// Marks that all of this instance's ids of the window are in Redis.
    pub fn mark_flushed(&mut self, window: &str) -> bool {
        let key = format!("verve:flushed:{window}");
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(&key).arg(&self.instance).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(self.key_ttl_secs).ignore();
        self.run(&pipe).is_some()
    }

    /// Live instances that have not marked the window flushed.
    pub fn unflushed_live_instances(&mut self, window: &str) -> Option<Vec<String>> {
        let since = now_ms().saturating_sub(self.heartbeat_ttl.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg("verve:instances")
            .arg(since)
            .arg("+inf");
        pipe.cmd("SMEMBERS").arg(format!("verve:flushed:{window}"));
        let values = self.run(&pipe)?;
        let live: Vec<String> = redis::from_redis_value(&values[0]).ok()?;
        let flushed: Vec<String> = redis::from_redis_value(&values[1]).ok()?;
        Some(live.into_iter().filter(|i| !flushed.contains(i)).collect())
    }

    /// Tries to become (or, when already, stays) the window's reporter: a lease of one
    /// heartbeat expiry, renewed while waiting, so that a reporter that dies is replaced.
    pub fn elect(&mut self, window: &str) -> Option<Election> {
        let lease = format!("verve:report:{window}");
        let ttl_ms = self.heartbeat_ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(format!("verve:reported:{window}"));
        pipe.cmd("SET")
            .arg(&lease)
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        pipe.cmd("GET").arg(&lease);
        let values = self.run(&pipe)?;
        let reported: bool = redis::from_redis_value(&values[0]).ok()?;
        let holder: Option<String> = redis::from_redis_value(&values[2]).ok()?;
        if reported {
            return Some(Election::AlreadyReported);
        }
        if holder.as_deref() == Some(self.instance.as_str()) {
            let mut renew = redis::pipe();
            renew.cmd("PEXPIRE").arg(&lease).arg(ttl_ms).ignore();
            self.run(&renew)?;
            return Some(Election::Won);
        }
        Some(Election::Lost)
    }

    /// Records that the window's report is written.
    pub fn mark_reported(&mut self, window: &str) {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("verve:reported:{window}"))
            .arg(&self.instance)
            .arg("EX")
            .arg(self.key_ttl_secs)
            .ignore();
        self.run(&pipe);
    }
}

/// The outcome of an election round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    Won,
    Lost,
    AlreadyReported,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
