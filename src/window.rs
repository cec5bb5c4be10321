//! Wall-clock windows and the sets of ids seen in one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::id_set::IdSet;

/// Index of a window: window `w` covers `[w*L, (w+1)*L)` seconds since the Unix epoch.
pub type WindowIndex = u64;

/// Maps instants to aligned windows of a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowClock {
    secs: u64,
}

impl WindowClock {
    /// `secs` must be at least 1 (the configuration enforces it).
    pub fn new(secs: u64) -> Self {
        assert!(secs > 0, "window length must be positive");
        Self { secs }
    }

    pub fn secs(&self) -> u64 {
        self.secs
    }

    pub fn window_of(&self, t: SystemTime) -> WindowIndex {
        unix_secs(t) / self.secs
    }

    pub fn start(&self, w: WindowIndex) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(w * self.secs)
    }

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

/// A worker's ids of its current window: only ids new here need to go to the recorder.
#[derive(Default)]
pub struct FirstSeen {
    window: WindowIndex,
    ids: IdSet,
}

impl FirstSeen {
    /// Records `id` in `window` and says whether it is new. A different window than the last
    /// one starts a fresh set, keeping its memory for reuse.
    pub fn insert(&mut self, window: WindowIndex, id: i64) -> bool {
        if window != self.window {
            self.ids.clear();
            self.window = window;
        }
        self.ids.insert(id)
    }

    pub fn contains(&self, window: WindowIndex, id: i64) -> bool {
        window == self.window && self.ids.contains(id)
    }

    /// Starts loading where `id` goes, ahead of its insert.
    pub fn prefetch(&self, window: WindowIndex, id: i64) {
        if window == self.window {
            self.ids.prefetch(id);
        }
    }
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

    #[test]
    fn first_seen_resets_per_window() {
        let mut seen = FirstSeen::default();
        assert!(seen.insert(7, 1));
        assert!(!seen.insert(7, 1));
        assert!(seen.insert(8, 1));
        assert!(seen.insert(8, 2));
        assert!(!seen.insert(8, 2));
    }
}
