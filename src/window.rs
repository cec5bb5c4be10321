//! Wall-clock windows: which window an instant falls in, and where a window starts and ends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Index of a window: window `w` covers `[w*L, (w+1)*L)` seconds since the Unix epoch.
pub type WindowIndex = u64;

/// Maps instants to aligned windows of a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowClock {
    secs: u64,
}

impl WindowClock {
    /// Windows of `secs` seconds.
    ///
    /// # Panics
    ///
    /// When `secs` is 0 (the configuration refuses it).
    pub const fn new(secs: u64) -> Self {
        assert!(secs > 0, "window length must be positive");
        Self { secs }
    }

    /// The window length in seconds.
    pub fn secs(&self) -> u64 {
        self.secs
    }

    /// The window `t` falls in.
    pub fn window_of(&self, t: SystemTime) -> WindowIndex {
        unix_secs(t) / self.secs
    }

    /// Where window `w` starts.
    pub fn start(&self, w: WindowIndex) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(w * self.secs)
    }

    /// Where window `w` ends: the next one's start.
    pub fn end(&self, w: WindowIndex) -> SystemTime {
        self.start(w + 1)
    }

    /// The window's start as RFC 3339 in UTC, e.g. `2026-11-24T06:21:00Z`.
    pub fn start_rfc3339(&self, w: WindowIndex) -> String {
        humantime::format_rfc3339_seconds(self.start(w)).to_string()
    }
}

/// Whole seconds since the Unix epoch; instants before it count as 0.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let clock = WindowClock::new(60);
        let t = UNIX_EPOCH + Duration::from_secs(1_795_501_319); // 2026-11-24T06:21:59Z
        let w = clock.window_of(t);
        assert_eq!(clock.start_rfc3339(w), "2026-11-24T06:21:00Z");
        assert_eq!(clock.window_of(clock.end(w)), w + 1);
        assert_eq!(clock.window_of(clock.end(w) - Duration::from_nanos(1)), w);
    }
}
