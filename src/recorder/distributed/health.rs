//! Whether Redis answers (the `Health` `/readyz` reads) and the epoch of its failures, by
//! which the recorder knows when Redis may lack ids it once took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use redis::RedisError;

use crate::clock::Clock;
use crate::health::Health;
use crate::wal::seen::Restart;

/// Redis's health, shared by the Redis thread (which writes it) and the recorder.
#[derive(Debug, Default)]
pub struct RedisHealth {
    health: Arc<Health>,
    /// What the times below are read from.
    time: Clock,
    /// Since when every call has been answered, while they are.
    up_since: Mutex<Option<Instant>>,
    /// Grows on every error and every topology change: Redis may lack ids it once took, so
    /// the recorder replays them once the epoch it saw is behind.
    epoch: AtomicU64,
    /// When a Redis server was last found restarted (its data, report claims included, may
    /// be gone).
    lost_data_at: Mutex<Option<SystemTime>>,
    /// The masters found restarted: the data set serving their slots began then, whichever
    /// node serves them since.
    restarts: Mutex<Vec<Restart>>,
}

impl RedisHealth {
    /// Redis's health, with times read from `time`.
    pub fn new(time: Clock) -> RedisHealth {
        RedisHealth {
            time,
            ..RedisHealth::default()
        }
    }

    /// The clock the Redis thread and the recorder read.
    pub(crate) fn time(&self) -> &Clock {
        &self.time
    }

    /// The health `/readyz` reads.
    pub(crate) fn readiness(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The last call to Redis was answered.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How long Redis has answered every call, if it does now.
    pub(crate) fn up_since(&self) -> Option<Instant> {
        *lock(&self.up_since)
    }

    pub(crate) fn answered(&self) {
        if self.health.set_up() {
            *lock(&self.up_since) = Some(self.time.instant());
            log::info!("redis: connected");
        }
    }

    pub(crate) fn failed(&self, e: &RedisError) {
        let first = self.epoch.fetch_add(1, Ordering::AcqRel) == 0;
        let was_up = self.health.set_down();
        if was_up {
            *lock(&self.up_since) = None;
        }
        if was_up || first {
            log::warn!("redis: {e}; the ids stay here and are replayed once it answers");
        }
    }

    /// A server restarted: it may have lost what it held.
    fn lost_data(&self) {
        *lock(&self.lost_data_at) = Some(self.time.now());
    }

    /// A master that served `slots` was found restarted, started at `started`.
    pub(crate) fn server_restarted(&self, slots: &[(u16, u16)], started: SystemTime) {
        self.lost_data();
        let mut restarts = lock(&self.restarts);
        restarts.retain(|r| !slots.contains(&r.slots));
        restarts.extend(slots.iter().map(|&slots| Restart { slots, started }));
    }

    /// The masters an earlier process of this instance found restarted (kept beside the log).
    pub(crate) fn recall_restarts(&self, kept: Vec<Restart>) {
        lock(&self.restarts).extend(kept);
    }

    /// The masters found restarted at or after `since`.
    pub(crate) fn restarts_since(&self, since: SystemTime) -> Vec<Restart> {
        let restarts = lock(&self.restarts);
        restarts
            .iter()
            .filter(|r| r.started >= since)
            .copied()
            .collect()
    }

    /// Whether a server was found restarted at or after `t`.
    pub(crate) fn lost_data_since(&self, t: SystemTime) -> bool {
        lock(&self.lost_data_at).is_some_and(|at| at >= t)
    }

    /// A flush mark of this instance is gone from Redis: the master that held it lost writes
    /// it had acknowledged (a failover, a restart) without an error here, this instance's ids
    /// with them; they are pushed again, and the report claims set again.
    pub(crate) fn marks_lost(&self) {
        self.lost_data();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn topology_changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// The value behind a lock, which a panic elsewhere does not spoil (it holds a time).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
