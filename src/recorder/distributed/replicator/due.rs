//! The conclusion of a window whose grace has passed, on this instance, as a state machine
//! without I/O: its stage, the event (a tick of the recorder, or the answer to the election or
//! amendment it asked for), and the facts of the moment (this instance's count, whether Redis
//! answers and holds every id, how long the window has been due) give the next stage, the
//! verdict, and what to ask Redis. The replicator sends what it asks, one request at a time.

use super::verdict::Verdict;
use crate::recorder::distributed::protocol::Settlement;
use crate::report::Mode;

/// Why an instance reports its own count of a window another instance reported.
const LOST_SINCE_REPORT: &str = "reported by another instance without this instance's ids, \
     and redis has lost ids of the window since";

/// Why an instance reports its own count of a window Redis did not answer about.
const UNREACHABLE: &str = "redis unreachable for --report-max-delay-secs";

/// Why an instance reports, as its own, the count of a claim it may hold of a window Redis did
/// not answer about.
const UNREACHABLE_CLAIMED: &str = "redis unreachable for twice --report-max-delay-secs, and \
     this instance may hold the claim of its report, whose count the others may have left the \
     window to";

/// Where the conclusion of a due window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Electing the reporter; `claim_unknown`: an election failed on the way (Redis stopped
    /// answering), so this instance may hold the claim, which the others then leave the
    /// window to.
    Electing { claim_unknown: bool },
    /// This instance has claimed the report with this global count, and no replica holds the
    /// claim yet: it goes on electing until one does.
    Claimed(u64),
    /// Another instance reported the window without this instance's ids: once they are all in
    /// Redis, this instance amends the report.
    Amending,
}

/// What happened since the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The recorder's round.
    Tick,
    /// The answer to the election or amendment asked for.
    Answered(Settlement),
    /// The election or amendment asked for failed on the way.
    Failed,
}

/// The facts of the moment a step is taken at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// This instance's count of the window.
    pub(crate) local: u64,
    /// `--report-max-delay-secs` has passed since the window ended, once and twice.
    pub(crate) overdue: [bool; 2],
    /// A window from before this process started that it holds no id of: reported only if
    /// Redis holds ids of it and nobody has claimed it.
    pub(crate) adopt: bool,
    /// Where Redis stands with this instance.
    pub(crate) redis: Redis,
    /// Redis may have lost data (a server restarted or failed over) since the window was due.
    pub(crate) lost_since_due: bool,
    /// The count of a claim of the window this process may hold, its outcome not known (an
    /// earlier process's kept beside the log, or one Redis failed on the way of).
    pub(crate) unsure_claim: Option<u64>,
}

/// Where Redis stands with this instance and the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redis {
    /// It does not answer, or may have lost ids not yet sent again.
    OutOfStep,
    /// It answers and holds, or is being sent, every id: some of the window's are not
    /// confirmed yet, or its flush mark is not set.
    Unflushed,
    /// It has confirmed every id of this instance of the window, and its flush mark.
    Flushed,
}

/// What a step asks Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Elect the reporter (`protocol::Settle`).
    Settle { overdue: bool, adopt: bool },
    /// Publish the window's count grown by this instance's ids (`protocol::Amend`).
    Amend,
    /// Set the claim of the report just written again (`protocol::Reassert`).
    Reassert,
}

/// A step: the next stage, the verdict, and what to ask Redis.
pub(crate) type Step = (Due, Verdict, Option<Ask>);

impl Due {
    /// Where a window's conclusion starts.
    pub(crate) const START: Due = Due::Electing {
        claim_unknown: false,
    };

    /// The transition function.
    pub(crate) fn on(self, event: Event, facts: &Facts) -> Step {
        let due = match (self, event) {
            (Due::Electing { .. }, Event::Failed) => Due::Electing {
                claim_unknown: true,
            },
            (_, Event::Answered(settlement)) => match answered(self, settlement, facts.local) {
                Ok(due) => due,
                Err(verdict) => return (self, verdict, None),
            },
            (due, Event::Tick | Event::Failed) => due,
        };
        due.tick(facts)
    }

    fn tick(self, facts: &Facts) -> Step {
        let [overdue, twice_overdue] = facts.overdue;
        let in_step = facts.redis != Redis::OutOfStep;
        // The others may have seen this instance's claim and left the window to it: once
        // Redis may have lost the claim (a server restarted), or past the delay without
        // Redis, it reports the global count it read when it claimed.
        if let Due::Claimed(count) = self
            && (facts.lost_since_due || (overdue && !in_step))
        {
            let ask = in_step.then_some(Ask::Reassert);
            return (self, Verdict::Report(count, Mode::Distributed), ask);
        }
        if !in_step {
            let may_hold_claim = (self
                == Due::Electing {
                    claim_unknown: true,
                }
                || facts.unsure_claim.is_some())
                && !twice_overdue;
            let verdict = if overdue && facts.adopt && facts.unsure_claim.is_none() {
                // Nothing of it here, and no Redis to tell whether anyone left ids of it.
                Verdict::Skip
            } else if overdue && !may_hold_claim {
                // The others may have left the window to a claim of this instance's and
                // forgotten their ids: its count, where larger, is the window's (the
                // simulator's seed 107 found the window in no report but this instance's
                // own count).
                match facts.unsure_claim {
                    Some(count) if count > facts.local => {
                        Verdict::Degraded(count, UNREACHABLE_CLAIMED)
                    }
                    _ => Verdict::Degraded(facts.local, UNREACHABLE),
                }
            } else {
                Verdict::Wait
            };
            return (self, verdict, None);
        }
        // This instance's own ids are in Redis before it counts or amends the window: the
        // election waits for the flush marks of live instances only, and after a pause of
        // Redis every heartbeat, this instance's own among them, looks stale (the 30-minute
        // chaos run of seed 101 lost 779 ids so). With its marks set, a mark of its own
        // missing at the count says that Redis lost them, and its ids with them.
        if facts.redis == Redis::Unflushed {
            return (self, Verdict::Wait, None);
        }
        let ask = match self {
            Due::Amending => Ask::Amend,
            Due::Electing { .. } | Due::Claimed(_) => Ask::Settle {
                overdue,
                adopt: facts.adopt,
            },
        };
        (self, Verdict::Wait, Some(ask))
    }
}

/// The stage an answer leads to, or the verdict it gives.
fn answered(due: Due, settlement: Settlement, local: u64) -> Result<Due, Verdict> {
    match settlement {
        Settlement::NotAdopted => Err(Verdict::Skip),
        Settlement::Won(count) => Err(Verdict::Report(count, Mode::Distributed)),
        Settlement::ByOther { counted_here } if counted_here || local == 0 => Err(Verdict::Skip),
        Settlement::LostSinceReport if local == 0 => Err(Verdict::Skip),
        // The reporter's count may lack ids this instance pushed too late for it (cut off
        // from Redis, or read back from the log after a crash).
        Settlement::ByOther { .. } => Ok(Due::Amending),
        Settlement::Claimed(count) => Ok(Due::Claimed(count)),
        other => amended(other, local).map_or(Ok(due), Err),
    }
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

#[cfg(test)]
mod tests;
