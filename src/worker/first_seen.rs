//! A worker's first-seen set: the ids it has handed over in its current window, so that only
//! ids new to the worker go to the recorder.

use crate::id_set::IdSet;
use crate::window::WindowIndex;

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

    /// Whether `id` was recorded in `window`.
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
    fn first_seen_resets_per_window() {
        let mut seen = FirstSeen::default();
        assert!(seen.insert(7, 1));
        assert!(!seen.insert(7, 1));
        assert!(seen.insert(8, 1));
        assert!(seen.insert(8, 2));
        assert!(!seen.insert(8, 2));
    }
}
