//! Where the parts that decide by the time (the recorder, the Redis thread, Redis's health)
//! read it: the system's clocks in the service, or, in the protocol's simulation, a clock that
//! moves only when the simulator moves it, so that a run replays exactly from its seed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The wall clock and the monotonic clock, read together.
#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system's clocks.
    driven: Option<Driven>,
}

/// A clock moved by its driver: the time is an origin plus what the driver says has passed.
#[derive(Clone)]
struct Driven {
    wall_origin: SystemTime,
    monotonic_origin: Instant,
    elapsed: Arc<dyn Fn() -> Duration + Send + Sync>,
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that reads `wall_origin` plus `elapsed()`: the simulator's, whose `elapsed`
    /// moves only when the simulation does.
    #[cfg(test)]
    pub(crate) fn driven(
        wall_origin: SystemTime,
        elapsed: impl Fn() -> Duration + Send + Sync + 'static,
    ) -> Clock {
        Clock {
            driven: Some(Driven {
                wall_origin,
                monotonic_origin: Instant::now(),
                elapsed: Arc::new(elapsed),
            }),
        }
    }

    /// The wall-clock time.
    pub fn now(&self) -> SystemTime {
        match &self.driven {
            None => SystemTime::now(),
            Some(d) => d.wall_origin + (d.elapsed)(),
        }
    }

    /// The monotonic time, for how long something took or waited.
    pub fn instant(&self) -> Instant {
        match &self.driven {
            None => Instant::now(),
            Some(d) => d.monotonic_origin + (d.elapsed)(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.driven.is_some() {
            "Clock(driven)"
        } else {
            "Clock(system)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_driven_clock_moves_only_when_its_driver_does() {
        let millis = Arc::new(AtomicU64::new(0));
        let driver = Arc::clone(&millis);
        let origin = SystemTime::UNIX_EPOCH + Duration::from_hours(500_000);
        let clock = Clock::driven(origin, move || {
            Duration::from_millis(driver.load(Ordering::Relaxed))
        });
        let (wall, monotonic) = (clock.now(), clock.instant());
        assert_eq!(wall, origin);
        assert_eq!(clock.instant(), monotonic);
        millis.store(1_500, Ordering::Relaxed);
        assert_eq!(clock.now(), origin + Duration::from_millis(1_500));
        assert_eq!(clock.instant() - monotonic, Duration::from_millis(1_500));
    }
}
