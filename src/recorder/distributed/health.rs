//! Whether Redis answers (the `Health` `/readyz` reads) and the epoch of its failures, by
//! which the recorder knows when Redis may lack ids it once took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use redis::RedisError;

use crate::health::Health;

/// Redis's health, shared by the Redis thread (which writes it) and the recorder.
#[derive(Debug, Default)]
pub struct RedisHealth {
    health: Arc<Health>,
    /// Grows on every error and every topology change: Redis may lack ids it once took, so
    /// the recorder replays them once the epoch it saw is behind.
    epoch: AtomicU64,
    /// When a Redis server was last found restarted (its data, report claims included, may
    /// be gone).
    lost_data_at: Mutex<Option<SystemTime>>,
}

impl RedisHealth {
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
        self.health.up_since()
    }

    pub(crate) fn answered(&self) {
        if self.health.set_up() {
            log::info!("redis: connected");
        }
    }

    pub(crate) fn failed(&self, e: &RedisError) {
        let first = self.epoch.fetch_add(1, Ordering::AcqRel) == 0;
        if self.health.set_down() || first {
            log::warn!("redis: {e}; the ids stay here and are replayed once it answers");
        }
    }

    /// A server restarted: it may have lost what it held.
    pub(crate) fn lost_data(&self) {
        *self
            .lost_data_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SystemTime::now());
    }

    /// Whether a server was found restarted at or after `t`.
    pub(crate) fn lost_data_since(&self, t: SystemTime) -> bool {
        self.lost_data_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at >= t)
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
