//! Whether Redis answers, and since when; read by `/readyz` and by the recorder.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use redis::RedisError;

#[derive(Debug, Default)]
pub struct RedisHealth {
    up: AtomicBool,
    /// Grows on every error and every topology change: Redis may lack ids it once took, so
    /// the recorder replays them once the epoch it saw is behind.
    epoch: AtomicU64,
    up_since: Mutex<Option<Instant>>,
}

impl RedisHealth {
    /// The last call to Redis was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How long Redis has answered every call, if it does now.
    pub(crate) fn up_since(&self) -> Option<Instant> {
        *self.up_since.lock().expect("health lock")
    }

    pub(crate) fn answered(&self) {
        if !self.up.load(Ordering::Relaxed) {
            *self.up_since.lock().expect("health lock") = Some(Instant::now());
            self.up.store(true, Ordering::Release);
            log::info!("redis: connected");
        }
    }

    pub(crate) fn failed(&self, e: &RedisError) {
        let first = self.epoch.fetch_add(1, Ordering::AcqRel) == 0;
        if self.up.swap(false, Ordering::AcqRel) || first {
            *self.up_since.lock().expect("health lock") = None;
            log::warn!("redis: {e}; the ids stay here and are replayed once it answers");
        }
    }

    pub(crate) fn topology_changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}
