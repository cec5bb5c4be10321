//! `--max-window-ids`: how many distinct ids this instance holds for a window, counted
//! without sharing anything per request. A worker adds the items of each batch it hands over;
//! the recorder takes back the items it found already counted (an id new to two workers). So
//! a window's count is its distinct ids in the recorder plus the items on their way there, and
//! a worker that adds its own unsent items sees everything but the other workers' unsent
//! batches: the bound is passed by at most a batch per worker.
//!
//! Past the bound a worker must still answer `ok` for an id another worker counted: the
//! recorder publishes a view of each open window's set, which workers look ids up in then
//! (only then: it takes a lock).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::id_set::IdSetView;
use crate::window::WindowIndex;

/// Windows tracked at once: the current one and those still receiving late items.
const SLOTS: usize = 4;
/// A slot packs the low bits of its window above the count.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_BITS: u32 = 64 - COUNT_BITS;

fn tag(window: WindowIndex) -> u64 {
    window & ((1 << TAG_BITS) - 1)
}

/// Whether `a` is a later window than `b`, by their tags (which wrap).
fn is_later(a: u64, b: u64) -> bool {
    let distance = a.wrapping_sub(b) & ((1 << TAG_BITS) - 1);
    distance != 0 && distance < 1 << (TAG_BITS - 1)
}

/// Every window's count of ids counted or on their way to the recorder.
pub struct WindowIdCounts {
    limit: u64,
    slots: [AtomicU64; SLOTS],
    /// The recorder's sets of the open windows.
    counted: Mutex<[Option<(WindowIndex, IdSetView)>; SLOTS]>,
}

impl std::fmt::Debug for WindowIdCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowIdCounts")
            .field("limit", &self.limit)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl WindowIdCounts {
    /// `limit`: `--max-window-ids`.
    pub fn new(limit: u64) -> WindowIdCounts {
        WindowIdCounts {
            limit: limit.min(COUNT_MASK),
            slots: Default::default(),
            counted: Mutex::new(Default::default()),
        }
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, [Option<(WindowIndex, IdSetView)>; SLOTS]> {
        self.counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The recorder's set of `window`, new or grown.
    pub fn publish(&self, window: WindowIndex, ids: IdSetView) {
        self.counted()[(window % SLOTS as u64) as usize] = Some((window, ids));
    }

    /// The recorder is done with `window`'s set (it is about to clear it for reuse).
    pub fn withdraw(&self, window: WindowIndex) {
        let mut counted = self.counted();
        let slot = &mut counted[(window % SLOTS as u64) as usize];
        if slot.as_ref().is_some_and(|(w, _)| *w == window) {
            *slot = None;
        }
    }

    /// Whether the recorder has counted `id` in `window`.
    pub fn is_counted(&self, window: WindowIndex, id: i64) -> bool {
        self.counted()[(window % SLOTS as u64) as usize]
            .as_ref()
            .is_some_and(|(w, ids)| *w == window && ids.contains(id))
    }

    /// `--max-window-ids`.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn slot(&self, window: WindowIndex) -> &AtomicU64 {
        &self.slots[(window % SLOTS as u64) as usize]
    }

    /// Distinct ids counted in `window` plus the items on their way to the recorder.
    pub fn get(&self, window: WindowIndex) -> u64 {
        let packed = self.slot(window).load(Ordering::Relaxed);
        if packed >> COUNT_BITS == tag(window) {
            packed & COUNT_MASK
        } else {
            0
        }
    }

    /// A worker handed over `items` items of `window`.
    pub fn add(&self, window: WindowIndex, items: u64) {
        let _ = self
            .slot(window)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let held = packed >> COUNT_BITS;
                if held == tag(window) {
                    Some(held << COUNT_BITS | ((packed & COUNT_MASK) + items).min(COUNT_MASK))
                } else if packed == 0 || is_later(tag(window), held) {
                    Some(tag(window) << COUNT_BITS | items.min(COUNT_MASK))
                } else {
                    // A window four or more behind the slot's: long reported.
                    None
                }
            });
    }

    /// The recorder found `items` items of `window` counted already.
    pub fn remove(&self, window: WindowIndex, items: u64) {
        let _ = self
            .slot(window)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                (packed >> COUNT_BITS == tag(window))
                    .then(|| packed - items.min(packed & COUNT_MASK))
            });
    }
}

/// Sums items per window over a run of items mostly of one window, for one update per window
/// change instead of one per item.
#[derive(Debug, Default)]
pub struct PerWindow {
    run: Option<(WindowIndex, u64)>,
}

impl PerWindow {
    /// Counts one item of `window`; hands back the previous window's sum when it changes.
    pub fn count(&mut self, window: WindowIndex) -> Option<(WindowIndex, u64)> {
        match &mut self.run {
            Some((w, n)) if *w == window => {
                *n += 1;
                None
            }
            run => run.replace((window, 1)),
        }
    }

    /// The last sum.
    pub fn finish(self) -> Option<(WindowIndex, u64)> {
        self.run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_window_and_a_later_window_takes_over_its_slot() {
        let counts = WindowIdCounts::new(100);
        counts.add(7, 10);
        counts.add(7, 5);
        counts.add(8, 3);
        counts.remove(7, 2);
        assert_eq!(counts.get(7), 13);
        assert_eq!(counts.get(8), 3);
        assert_eq!(counts.get(11), 0);
        counts.add(11, 4);
        assert_eq!(counts.get(11), 4);
        assert_eq!(counts.get(7), 0);
        // A late item of a window long gone changes nothing.
        counts.add(7, 1);
        counts.remove(7, 1);
        assert_eq!(counts.get(11), 4);
        counts.remove(11, 9);
        assert_eq!(counts.get(11), 0);
    }

    #[test]
    fn a_published_set_answers_lookups_until_withdrawn() {
        let counts = WindowIdCounts::new(100);
        let mut ids = crate::id_set::IdSet::default();
        ids.insert(5);
        counts.publish(7, ids.view());
        ids.insert(6);
        assert!(counts.is_counted(7, 5));
        assert!(counts.is_counted(7, 6));
        assert!(!counts.is_counted(7, 8));
        assert!(!counts.is_counted(11, 5));
        counts.withdraw(11);
        assert!(counts.is_counted(7, 5));
        counts.withdraw(7);
        assert!(!counts.is_counted(7, 5));
    }

    #[test]
    fn tags_compare_across_their_wrap() {
        let top = (1 << TAG_BITS) - 1;
        assert!(is_later(0, top));
        assert!(!is_later(top, 0));
        assert!(!is_later(5, 5));
    }

    #[test]
    fn per_window_sums_runs() {
        let mut sums = PerWindow::default();
        let mut out = Vec::new();
        for w in [3, 3, 3, 4, 4, 3] {
            out.extend(sums.count(w));
        }
        out.extend(sums.finish());
        assert_eq!(out, [(3, 3), (4, 2), (3, 1)]);
    }
}
