//! The windows a condition has been logged of, so that each is logged once: the due windows
//! are concluded side by side, each asking in turn, and remembering only the last window
//! logged would log them all again at every ask.

use std::collections::BTreeSet;

use crate::window::WindowIndex;

/// How many windows are remembered: more than are ever due at once.
const REMEMBERED: usize = 1_024;

#[derive(Debug, Default)]
pub(crate) struct SaidOnce(BTreeSet<WindowIndex>);

impl SaidOnce {
    /// Whether `window` is said of for the first time.
    pub(crate) fn first(&mut self, window: WindowIndex) -> bool {
        let first = self.0.insert(window);
        if self.0.len() > REMEMBERED {
            self.0.pop_first();
        }
        first
    }
}
