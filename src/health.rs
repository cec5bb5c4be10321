//! Whether what verve depends on answers (Redis, the Kafka topic, the write-ahead log):
//! written by the thread that talks to it, read by `/readyz` and by the recorder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One dependency's state.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
}

impl Health {
    /// The last call was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A call was answered; true when the dependency was down until now.
    pub fn set_up(&self) -> bool {
        !self.up.swap(true, Ordering::AcqRel)
    }

    /// A call failed; true when the dependency was up until now.
    pub fn set_down(&self) -> bool {
        self.up.swap(false, Ordering::AcqRel)
    }
}

/// What `/readyz` checks besides the worker listening.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// Set when verve counts through Redis.
    pub redis: Option<Arc<Health>>,
    /// Set when reports also go to Kafka.
    pub kafka: Option<Arc<Health>>,
    /// Set when ids are logged before their `ok` (`--durability`).
    pub wal: Option<Arc<Health>>,
}

impl Readiness {
    /// `None` when ready, else the body that says what is not.
    pub fn not_ready(&self) -> Option<String> {
        let down: Vec<&str> = [
            (&self.redis, "redis unreachable"),
            (&self.kafka, "kafka topic not writable"),
            (&self.wal, "write-ahead log not writable"),
        ]
        .into_iter()
        .filter(|(health, _)| health.as_ref().is_some_and(|h| !h.is_up()))
        .map(|(_, why)| why)
        .collect();
        (!down.is_empty()).then(|| format!("not ready: {}", down.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_its_changes() {
        let health = Health::default();
        assert!(!health.is_up());
        assert!(health.set_up());
        assert!(!health.set_up());
        assert!(health.is_up());
        assert!(health.set_down());
        assert!(!health.set_down());
        assert!(!health.is_up());
    }

    #[test]
    fn readiness_names_what_is_down() {
        let redis = Arc::new(Health::default());
        let kafka = Arc::new(Health::default());
        let wal = Arc::new(Health::default());
        let readiness = Readiness {
            redis: Some(Arc::clone(&redis)),
            kafka: Some(Arc::clone(&kafka)),
            wal: Some(Arc::clone(&wal)),
        };
        assert_eq!(
            readiness.not_ready().as_deref(),
            Some(
                "not ready: redis unreachable, kafka topic not writable, write-ahead log not \
                 writable"
            )
        );
        redis.set_up();
        wal.set_up();
        assert_eq!(
            readiness.not_ready().as_deref(),
            Some("not ready: kafka topic not writable")
        );
        kafka.set_up();
        assert_eq!(readiness.not_ready(), None);
        assert_eq!(Readiness::default().not_ready(), None);
    }
}
