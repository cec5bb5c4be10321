//! What becomes of a window whose grace has passed: its verdict, from where its report
//! stands in Redis.

use std::time::SystemTime;

use super::super::client::Request;
use super::super::protocol::Settlement;
use super::{Replicator, SETTLE_RETRY};
use crate::report::Mode;
use crate::window::WindowIndex;

/// Why an instance reports its own count of a window another instance reported.
const LOST_SINCE_REPORT: &str = "reported by another instance without this instance's ids, \
     and redis has lost ids of the window since";

/// What to do with a window whose grace has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Wait,
    Report(u64, Mode),
    /// The window was reported without ids of this instance: its count with them, as an
    /// amended report.
    Amended(u64),
    /// This instance's own count, as `mode=degraded`, and why.
    Degraded(u64, &'static str),
    /// Another instance reports it.
    Skip,
    /// The window was reported without this instance's ids (this many), and can no longer
    /// be amended: they are late.
    Late(u64),
}

/// What an amendment's outcome makes of a window; `None` for a settlement that is not one.
pub(super) fn amended(settlement: Settlement, local: u64) -> Option<Verdict> {
    match settlement {
        Settlement::Amended(count) => Some(Verdict::Amended(count)),
        Settlement::ByOther { counted_here: true } => Some(Verdict::Skip),
        Settlement::PastAmends => Some(Verdict::Late(local)),
        Settlement::LostSinceReport => Some(Verdict::Degraded(local, LOST_SINCE_REPORT)),
        _ => None,
    }
}

impl Replicator {
    /// Where the report of a window whose grace has passed stands; `local` is this
    /// instance's count, `[overdue, twice_overdue]` say that `--report-max-delay-secs` has
    /// passed once or twice, `due` is when its grace passed. `adopt`: a window from before
    /// this process started that it holds no id of, reported only if Redis holds ids of it
    /// and nobody has claimed it.
    pub(crate) fn settle(
        &mut self,
        window: WindowIndex,
        local: u64,
        [overdue, twice_overdue]: [bool; 2],
        due: SystemTime,
        adopt: bool,
    ) -> Verdict {
        match self.settled.take() {
            Some((w, Settlement::NotAdopted)) if w == window => return Verdict::Skip,
            Some((w, Settlement::Won(count))) if w == window => {
                self.reported.push((w, due));
                return Verdict::Report(count, Mode::Distributed);
            }
            Some((w, Settlement::ByOther { counted_here })) if w == window => {
                if counted_here || local == 0 {
                    return Verdict::Skip;
                }
                // The reporter's count may lack ids this instance pushed too late for it
                // (cut off from Redis, or read back from the log after a crash).
                self.amending = Some(window);
            }
            Some((w, Settlement::Claimed(count))) if w == window => {
                self.claimed.insert(w, count);
            }
            Some((w, settlement)) if w == window => {
                if let Some(verdict) = amended(settlement, local) {
                    self.amending = None;
                    return verdict;
                }
            }
            _ => {}
        }
        // The others may have seen this instance's claim and left the window to it: once
        // Redis may have lost the claim (a server restarted), or past the delay without
        // Redis, it reports the global count it read when it claimed.
        if let Some(&count) = self.claimed.get(&window)
            && (self.link.health().lost_data_since(due) || (overdue && !self.in_step()))
        {
            self.reported.push((window, due));
            if self.in_step() {
                self.link.send(Request::Reassert {
                    windows: vec![window],
                });
            }
            return Verdict::Report(count, Mode::Distributed);
        }
        if !self.in_step() {
            let may_hold_claim = self.claim_unknown == Some(window) && !twice_overdue;
            return if overdue && adopt {
                // Nothing of it here, and no Redis to tell whether anyone left ids of it.
                Verdict::Skip
            } else if overdue && !may_hold_claim {
                Verdict::Degraded(local, "redis unreachable for --report-max-delay-secs")
            } else {
                Verdict::Wait
            };
        }
        let request = if self.amending == Some(window) {
            // Every id of this instance is in Redis first (the flush mark is set once they
            // are), so that the count read has them.
            if !self.flushed.contains(&window) {
                return Verdict::Wait;
            }
            Request::Amend { window }
        } else {
            // This instance's own ids are in Redis before it counts the window: the election
            // waits for the flush marks of live instances only, and after a pause of Redis
            // every heartbeat, this instance's own among them, looks stale (the 30-minute
            // chaos run of seed 101 lost 779 ids so). With its marks set, a mark of its own
            // missing at the count says that Redis lost them, and its ids with them.
            if !self.flushed.contains(&window) {
                return Verdict::Wait;
            }
            Request::Settle {
                window,
                overdue,
                adopt,
            }
        };
        let now = self.link.time().instant();
        if !self.settling
            && self
                .last_settle
                .is_none_or(|t| now.saturating_duration_since(t) >= SETTLE_RETRY)
        {
            self.settling = true;
            self.electing = matches!(request, Request::Settle { .. });
            self.last_settle = Some(now);
            self.link.send(request);
        }
        Verdict::Wait
    }

    /// The window is reported (here or elsewhere): its bookkeeping goes. `local`: this
    /// instance's count of it; `due`: when its grace passed.
    pub(crate) fn forget(&mut self, window: WindowIndex, local: u64, due: SystemTime) {
        if local == 0 {
            self.concluded_empty.push((window, due));
        }
        if let Some(at) = self.pending.iter().position(|(w, _)| *w == window) {
            self.pending_ids -= self.pending.remove(at).1.len();
        }
        self.global.remove(&window);
        self.flushed.remove(&window);
        self.claimed.remove(&window);
        if self.amending == Some(window) {
            self.amending = None;
        }
        if self.claim_unknown == Some(window) {
            self.claim_unknown = None;
        }
    }
}
