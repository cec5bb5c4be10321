//! A shutdown's part with Redis: the claimed reports written, every id pushed and marked,
//! the reports that lacked this instance's ids amended, then leaving.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::client::{Counted, Request, Settlement};
use super::verdict::amended;
use super::{ReadyCallback, Replicator, SETTLE_RETRY, Verdict};
use crate::id_set::IdSet;
use crate::window::WindowIndex;

/// How a shutdown left Redis.
#[derive(Debug, Default)]
pub(crate) struct Departure {
    /// Redis has every id, and the flush marks.
    pub(crate) pushed: bool,
    /// Windows another instance reported without this instance's ids, and what becomes of
    /// each: amended, or this instance's own count, or late.
    pub(crate) unreported_ids: Vec<(WindowIndex, Verdict)>,
}

/// Why an instance stopping reports its own count of a window another instance reported.
const UNAMENDED_AT_SHUTDOWN: &str = "reported by another instance without this instance's ids, \
     and not amended by --shutdown-timeout-ms";

impl Replicator {
    /// At shutdown, first: the windows whose report this instance has claimed (once the
    /// settlement in flight, if any, has been answered), with the counts it read. It must
    /// write them: the others, seeing its claims, leave those windows to it.
    pub(crate) fn claimed_reports(
        &mut self,
        open: &BTreeMap<WindowIndex, IdSet>,
        deadline: Instant,
        ready: &mut Vec<ReadyCallback>,
    ) -> Vec<(WindowIndex, u64)> {
        self.until(deadline, open, ready, |r| !r.settling);
        if let Some((w, Settlement::Won(count) | Settlement::Claimed(count))) = self.settled.take()
        {
            self.claimed.insert(w, count);
        }
        std::mem::take(&mut self.claimed).into_iter().collect()
    }

    /// At shutdown: pushes every id, marks every open window flushed, finds which of the
    /// `due` windows another instance reported without this instance's ids, and leaves, until
    /// the deadline.
    pub(crate) fn finish(
        &mut self,
        open: &BTreeMap<WindowIndex, IdSet>,
        due: &[WindowIndex],
        deadline: Instant,
        ready: &mut Vec<ReadyCallback>,
    ) -> Departure {
        let pushed = self.until(deadline, open, ready, |r| {
            r.in_step() && r.pending_ids == 0 && r.in_flight.is_empty()
        });
        if !pushed {
            return Departure::default();
        }
        for &w in open.keys() {
            self.mark_flushed(w);
        }
        let marked = self.until(deadline, open, ready, |r| {
            r.flushing.is_empty() && open.keys().all(|w| r.flushed.contains(w))
        });
        let unreported_ids = if marked {
            let uncounted = self.uncounted(open, due, deadline, ready);
            self.amend_all(&uncounted, open, deadline, ready)
        } else {
            Vec::new()
        };
        self.link.send(Request::Leave);
        self.until(deadline, open, ready, |r| r.left);
        Departure {
            pushed: marked,
            unreported_ids,
        }
    }

    /// At shutdown, once every id is in Redis: amends each window another instance reported
    /// without this instance's ids, until the deadline.
    fn amend_all(
        &mut self,
        windows: &[WindowIndex],
        open: &BTreeMap<WindowIndex, IdSet>,
        deadline: Instant,
        ready: &mut Vec<ReadyCallback>,
    ) -> Vec<(WindowIndex, Verdict)> {
        let mut verdicts = Vec::new();
        for &window in windows {
            let local = open.get(&window).map_or(0, |ids| ids.len() as u64);
            let verdict = loop {
                self.settling = true;
                self.electing = false;
                self.link.send(Request::Amend { window });
                if !self.until(deadline, open, ready, |r| !r.settling) {
                    break Verdict::Degraded(local, UNAMENDED_AT_SHUTDOWN);
                }
                if let Some(verdict) = self
                    .settled
                    .take()
                    .and_then(|(_, settlement)| amended(settlement, local))
                {
                    break verdict;
                }
                std::thread::sleep(SETTLE_RETRY);
            };
            verdicts.push((window, verdict));
        }
        verdicts
    }

    /// Which of the `due` windows another instance reported without this instance's flush
    /// mark (it was cut off from Redis when the reporter counted): asked again while another
    /// instance is settling one, until the deadline.
    fn uncounted(
        &mut self,
        open: &BTreeMap<WindowIndex, IdSet>,
        due: &[WindowIndex],
        deadline: Instant,
        ready: &mut Vec<ReadyCallback>,
    ) -> Vec<WindowIndex> {
        let mut asking: Vec<WindowIndex> = due.to_vec();
        let mut uncounted = Vec::new();
        while !asking.is_empty() {
            self.checked.clear();
            for &window in &asking {
                self.link.send(Request::CheckCounted { window });
            }
            let expected = asking.len();
            if !self.until(deadline, open, ready, |r| r.checked.len() == expected) {
                break;
            }
            asking.clear();
            for (window, check) in std::mem::take(&mut self.checked) {
                match check {
                    Some(Counted::Yes) => {}
                    Some(Counted::No) => uncounted.push(window),
                    Some(Counted::Settling) | None => asking.push(window),
                }
            }
            if !asking.is_empty() {
                std::thread::sleep(SETTLE_RETRY);
            }
        }
        uncounted.sort_unstable();
        uncounted
    }

    fn until(
        &mut self,
        deadline: Instant,
        open: &BTreeMap<WindowIndex, IdSet>,
        ready: &mut Vec<ReadyCallback>,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        loop {
            self.step(open, ready);
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
