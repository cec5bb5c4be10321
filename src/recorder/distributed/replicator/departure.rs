//! A shutdown's part with Redis: the claimed reports written, every id pushed and marked,
//! the reports that lacked this instance's ids amended, then leaving. One phase after the
//! other, a step at a time on the caller's clock (the service steps it every few
//! milliseconds until `--shutdown-timeout-ms`; the simulation on its simulated clock), so
//! that nothing here sleeps or reads the time.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::super::client::Request;
use super::super::protocol::{Counted, Settlement};
use super::due::{Due, amended};
use super::{ReadyCallback, Replicator, SETTLE_RETRY, Verdict};
use crate::id_set::IdSet;
use crate::window::WindowIndex;

/// How a shutdown left Redis.
#[derive(Debug, Default)]
pub(crate) struct Departure {
    /// Redis has every id, and the flush marks.
    pub(crate) pushed: bool,
    /// Due windows nobody was reporting, reported here, with their global counts.
    pub(crate) reported: Vec<(WindowIndex, u64)>,
    /// Windows another instance reported without this instance's ids, and what becomes of
    /// each: amended, or this instance's own count, or late.
    pub(crate) unreported_ids: Vec<(WindowIndex, Verdict)>,
    /// Where Redis did not take every id: the claims this process may hold whose outcome it
    /// does not know, with their counts, which the others may have left those windows to.
    pub(crate) unsure_claims: BTreeMap<WindowIndex, u64>,
}

/// Why an instance stopping reports its own count of a window nobody reported.
const UNSETTLED_AT_SHUTDOWN: &str = "nobody reported it, and its report was not settled by \
     --shutdown-timeout-ms";

/// Why an instance stopping reports its own count of a window another instance reported.
const UNAMENDED_AT_SHUTDOWN: &str = "reported by another instance without this instance's ids, \
     and not amended by --shutdown-timeout-ms";

/// Where a shutdown stands with Redis.
pub(crate) struct Leaving {
    /// When the shutdown began: the window of that instant is the one cut short.
    pub(crate) began: SystemTime,
    deadline: Instant,
    phase: Phase,
    /// Closed windows that this instance still holds, and when their grace passes, named by
    /// the recorder once it has written the claimed reports.
    due: Vec<(WindowIndex, Instant)>,
    /// Of those, the ones still to ask about, and how many answers are awaited.
    asking: Vec<WindowIndex>,
    awaited: usize,
    /// The due windows nobody was reporting: this instance reports them before it leaves.
    /// The others may not: a process that started after such a window, holding none of its
    /// ids, does not adopt it once its claim's server has restarted since (the simulator's
    /// seed 1011 left two windows unreported so).
    unsettled: Vec<WindowIndex>,
    /// Those this shutdown has claimed, no replica holding the claim yet, with the global
    /// counts read.
    claimed: BTreeMap<WindowIndex, u64>,
    /// Those reported here, with their global counts.
    reported: Vec<(WindowIndex, u64)>,
    /// The due windows another instance reported without this instance's ids.
    uncounted: Vec<WindowIndex>,
    /// Their verdicts so far.
    verdicts: Vec<(WindowIndex, Verdict)>,
    /// A settlement or amendment of the phase is in flight.
    asked: bool,
    /// A request tried again waits until then.
    next_try: Option<Instant>,
    marked: bool,
    /// The generation (health epoch) the flush marks were asked for and set in.
    marked_in: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until the settlement in flight, if any, is answered: which reports this instance has
    /// claimed.
    Settling,
    /// Until every id is confirmed.
    Pushing,
    /// Until every open window's flush mark is set and every closed one's grace has passed.
    Marking,
    /// Asking which due windows another instance reported without this instance's ids, and
    /// which nobody is reporting.
    Checking,
    /// Reporting those nobody was, one at a time.
    Reporting,
    /// Amending those, one at a time.
    Amending,
    /// `Leave` sent.
    Leaving,
}

/// What a step of a shutdown gives the recorder.
pub(crate) enum LeaveStep {
    /// Step again.
    Pending,
    /// The reports this instance has claimed, with the counts it read: the recorder writes
    /// them now (the others, seeing the claims, leave those windows to it), then names the
    /// due windows (`Leaving::due`).
    Claimed(Vec<(WindowIndex, u64)>),
    /// Done.
    Departed(Departure),
}

impl Leaving {
    /// A shutdown that began at `began` and has until `deadline`.
    pub(crate) fn new(began: SystemTime, deadline: Instant) -> Leaving {
        Leaving {
            began,
            deadline,
            phase: Phase::Settling,
            due: Vec::new(),
            asking: Vec::new(),
            awaited: 0,
            unsettled: Vec::new(),
            claimed: BTreeMap::new(),
            reported: Vec::new(),
            uncounted: Vec::new(),
            verdicts: Vec::new(),
            asked: false,
            next_try: None,
            marked: false,
            marked_in: None,
        }
    }

    /// The closed windows that this instance still holds, and when their grace passes, once
    /// the claimed reports are written.
    pub(crate) fn due(&mut self, windows: Vec<(WindowIndex, Instant)>) {
        self.due = windows;
    }

    fn may_try(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|t| now >= t)
    }
}

impl Replicator {
    /// One step of leaving Redis at the instant `now`: past the deadline, each phase gives up
    /// where it stands.
    pub(crate) fn leave(
        &mut self,
        leaving: &mut Leaving,
        open: &BTreeMap<WindowIndex, IdSet>,
        now: Instant,
        ready: &mut Vec<ReadyCallback>,
    ) -> LeaveStep {
        self.step(open, ready);
        let late = now >= leaving.deadline;
        // Redis may have lost ids or marks since they were set, or failed to set a mark (the
        // epoch moved on): pushed and marked again first, as a running instance would (the
        // simulator's seed 114 found a shutdown asking to report, its own mark gone, until
        // its deadline; a mark that failed once left a shutdown marking until then, defect 30).
        let marks_asked = matches!(
            leaving.phase,
            Phase::Marking | Phase::Checking | Phase::Reporting | Phase::Amending
        );
        if marks_asked && (leaving.marked_in != Some(self.generation) || !self.in_step()) {
            leaving.phase = Phase::Pushing;
            (leaving.awaited, leaving.asked, leaving.next_try) = (0, false, None);
        }
        match leaving.phase {
            Phase::Settling => {
                if self.settling && !late {
                    return LeaveStep::Pending;
                }
                let due = std::mem::take(&mut self.due);
                let mut claimed: BTreeMap<WindowIndex, u64> = due
                    .iter()
                    .filter_map(|(&w, concluding)| match concluding.stage {
                        Due::Claimed(count) => Some((w, count)),
                        _ => None,
                    })
                    .collect();
                // Only a window still being concluded: the answer to a claimed window's round
                // can come after the window was reported without it.
                if let Some((w, Some(Settlement::Won(count) | Settlement::Claimed(count)))) =
                    self.settled.take()
                    && due.contains_key(&w)
                {
                    claimed.insert(w, count);
                }
                leaving.phase = Phase::Pushing;
                return LeaveStep::Claimed(claimed.into_iter().collect());
            }
            Phase::Pushing => {
                if self.in_step() && self.pending_ids == 0 && self.in_flight.is_empty() {
                    for &w in open.keys() {
                        self.mark_flushed(w);
                    }
                    leaving.marked_in = Some(self.generation);
                    leaving.phase = Phase::Marking;
                } else if late {
                    // Nothing is in Redis for sure: the recorder writes its own counts, or
                    // those of the claims it may hold (the simulator's seed 107).
                    return LeaveStep::Departed(Departure {
                        unsure_claims: self.unsure_claims.clone(),
                        ..Departure::default()
                    });
                }
            }
            Phase::Marking => {
                let graces_passed = leaving.due.iter().all(|&(_, at)| now >= at);
                if self.flushing.is_empty()
                    && open.keys().all(|w| self.flushed.contains(w))
                    && graces_passed
                {
                    leaving.marked = true;
                    let done = |w: &WindowIndex| {
                        leaving.reported.iter().any(|(r, _)| r == w)
                            || leaving.verdicts.iter().any(|(v, _)| v == w)
                    };
                    leaving.asking = leaving
                        .due
                        .iter()
                        .map(|&(w, _)| w)
                        .filter(|w| !done(w))
                        .collect();
                    leaving.unsettled.clear();
                    leaving.uncounted.clear();
                    leaving.phase = Phase::Checking;
                } else if late {
                    self.link.send(Request::Leave);
                    leaving.phase = Phase::Leaving;
                }
            }
            Phase::Checking => self.check_uncounted(leaving, now, late),
            Phase::Reporting => self.report_unsettled(leaving, open, now, late),
            Phase::Amending => self.amend_uncounted(leaving, open, now, late),
            Phase::Leaving => {
                if self.left || late {
                    return LeaveStep::Departed(Departure {
                        pushed: leaving.marked,
                        reported: std::mem::take(&mut leaving.reported),
                        unreported_ids: std::mem::take(&mut leaving.verdicts),
                        unsure_claims: BTreeMap::new(),
                    });
                }
            }
        }
        LeaveStep::Pending
    }

    /// Which of the due windows another instance reported without this instance's flush
    /// mark (it was cut off from Redis when the reporter counted): asked again while another
    /// instance is settling one.
    fn check_uncounted(&mut self, leaving: &mut Leaving, now: Instant, late: bool) {
        if leaving.awaited > 0 && self.checked.len() == leaving.awaited {
            leaving.awaited = 0;
            for (window, check) in std::mem::take(&mut self.checked) {
                match check {
                    Some(Counted::Yes) => {}
                    Some(Counted::No) => leaving.uncounted.push(window),
                    Some(Counted::Unsettled) => leaving.unsettled.push(window),
                    Some(Counted::Settling) | None => leaving.asking.push(window),
                }
            }
            leaving.next_try = Some(now + SETTLE_RETRY);
        }
        if leaving.awaited > 0 && !late {
            return;
        }
        if leaving.asking.is_empty() || late {
            leaving.unsettled.sort_unstable();
            leaving.next_try = None;
            leaving.phase = Phase::Reporting;
        } else if leaving.may_try(now) {
            self.checked.clear();
            for &window in &leaving.asking {
                self.link.send(Request::CheckCounted { window });
            }
            leaving.awaited = std::mem::take(&mut leaving.asking).len();
        }
    }

    /// Reports each due window nobody was reporting, one at a time and in turn, as an
    /// election would (waiting for the flush marks of live instances); a window another
    /// instance claims meanwhile is checked as above. Past the deadline, a window whose claim
    /// this instance holds is reported with the count it read (the others leave it to the
    /// claim); the others are this instance's own counts: a process that adopts windows leaves
    /// one whose claim's server restarted since it ended, so nobody else would report them
    /// (the simulator's seed 1374, Redis restarting through a shutdown).
    fn report_unsettled(
        &mut self,
        leaving: &mut Leaving,
        open: &BTreeMap<WindowIndex, IdSet>,
        now: Instant,
        late: bool,
    ) {
        if leaving.asked && !self.settling {
            leaving.asked = false;
            let window = leaving.unsettled[0];
            let settled = self
                .settled
                .take()
                .and_then(|(w, s)| if w == window { s } else { None });
            match settled {
                Some(Settlement::Won(count)) => {
                    leaving.claimed.remove(&window);
                    leaving.reported.push((window, count));
                    leaving.unsettled.remove(0);
                }
                Some(Settlement::ByOther { counted_here }) => {
                    leaving.claimed.remove(&window);
                    if !counted_here {
                        leaving.uncounted.push(window);
                    }
                    leaving.unsettled.remove(0);
                }
                other => {
                    if let Some(Settlement::Claimed(count)) = other {
                        leaving.claimed.insert(window, count);
                    }
                    // The next window first: one whose election waits (for claimants after a
                    // restart, for twice the delay where this process did not see who was
                    // live) holds up none of the others, which another instance may report
                    // meanwhile (the simulator's seed 435).
                    leaving.unsettled.rotate_left(1);
                    leaving.next_try = Some(now + SETTLE_RETRY);
                }
            }
        }
        if late {
            for w in leaving.unsettled.drain(..) {
                if let Some(count) = leaving.claimed.remove(&w) {
                    leaving.reported.push((w, count));
                } else {
                    let local = open.get(&w).map_or(0, |ids| ids.len() as u64);
                    let verdict = Verdict::Degraded(local, UNSETTLED_AT_SHUTDOWN);
                    leaving.verdicts.push((w, verdict));
                }
            }
        }
        if leaving.unsettled.is_empty() {
            leaving.uncounted.sort_unstable();
            leaving.next_try = None;
            leaving.phase = Phase::Amending;
        } else if !leaving.asked && !self.settling && leaving.may_try(now) {
            self.settling = true;
            leaving.asked = true;
            self.link.send(Request::Settle {
                window: leaving.unsettled[0],
                overdue: false,
                adopt: false,
            });
        }
    }

    /// Amends each window another instance reported without this instance's ids, one at a
    /// time; past the deadline, those left are this instance's own counts.
    fn amend_uncounted(
        &mut self,
        leaving: &mut Leaving,
        open: &BTreeMap<WindowIndex, IdSet>,
        now: Instant,
        late: bool,
    ) {
        let local = |w: WindowIndex| open.get(&w).map_or(0, |ids| ids.len() as u64);
        if leaving.asked && !self.settling {
            leaving.asked = false;
            let window = leaving.uncounted[0];
            if let Some(verdict) = self
                .settled
                .take()
                .and_then(|(_, settlement)| amended(settlement?, local(window)))
            {
                leaving.verdicts.push((window, verdict));
                leaving.uncounted.remove(0);
            } else {
                leaving.next_try = Some(now + SETTLE_RETRY);
            }
        }
        if late {
            for w in leaving.uncounted.drain(..) {
                let verdict = Verdict::Degraded(local(w), UNAMENDED_AT_SHUTDOWN);
                leaving.verdicts.push((w, verdict));
            }
        }
        if leaving.uncounted.is_empty() {
            self.link.send(Request::Leave);
            leaving.phase = Phase::Leaving;
        } else if !leaving.asked && !self.settling && leaving.may_try(now) {
            self.settling = true;
            leaving.asked = true;
            self.link.send(Request::Amend {
                window: leaving.uncounted[0],
            });
        }
    }
}
