//! The recorder's side of distributed counting: which ids Redis may still lack, the pushes in
//! flight, callbacks waiting for a global count, flush marks, and where each window's report
//! stands. Nothing here waits on Redis: requests go to the Redis thread and replies are read
//! when they have come.
//!
//! The recorder's id sets stay the buffer of everything Redis has not confirmed. Whenever
//! Redis may have lost ids (any error, a restart, a failover), the health epoch moves on and,
//! once Redis answers again, every id of every open window is pushed again (`SADD` is
//! idempotent), and the flush marks are set again after.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use super::RedisLink;
use super::client::{Counted, Reply, Request, Settlement};
use crate::id_set::IdSet;
use crate::ingest::CallbackRequest;
use crate::report::Mode;
use crate::window::WindowIndex;

/// Pushes in flight at once: enough that the round trip does not bound the id rate.
const MAX_IN_FLIGHT: usize = 4;
/// Ids in one push at most, so that a replay of millions goes in many.
const MAX_PUSH_IDS: usize = 16_384;
/// How long a callback waits for the global count at most; then it carries the larger of the
/// last global count read and this instance's own.
const CALLBACK_MAX_WAIT: Duration = Duration::from_millis(250);
/// How often an unsettled window's report is tried again.
const SETTLE_RETRY: Duration = Duration::from_millis(50);

/// A callback and when it started waiting.
struct Waiting {
    since: Instant,
    request: Box<CallbackRequest>,
}

/// What a push in flight carries.
struct InFlight {
    generation: u64,
    ids: Vec<(WindowIndex, usize)>,
}

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

/// Why an instance stopping reports its own count of a window another instance reported.
const UNAMENDED_AT_SHUTDOWN: &str = "reported by another instance without this instance's ids, \
     and not amended by --shutdown-timeout-ms";

/// What an amendment's outcome makes of a window; `None` for a settlement that is not one.
fn amended(settlement: Settlement, local: u64) -> Option<Verdict> {
    match settlement {
        Settlement::Amended(count) => Some(Verdict::Amended(count)),
        Settlement::ByOther { counted_here: true } => Some(Verdict::Skip),
        Settlement::PastAmends => Some(Verdict::Late(local)),
        Settlement::LostSinceReport => Some(Verdict::Degraded(local, LOST_SINCE_REPORT)),
        _ => None,
    }
}

/// A callback to send, with the count it carries.
pub type ReadyCallback = (Box<CallbackRequest>, u64);

/// The recorder's side of distributed counting: what Redis may lack, and the report election.
pub struct Replicator {
    link: RedisLink,
    max_delay: Duration,
    /// The health epoch that the pending ids and the confirmations belong to.
    generation: u64,
    /// Ids not yet sent, by window.
    pending: Vec<(WindowIndex, Vec<i64>)>,
    pending_ids: usize,
    /// Pushes sent and not answered; with the pending ids, what Redis has not confirmed.
    in_flight: HashMap<u64, InFlight>,
    next_seq: u64,
    /// Callbacks whose ids are still pending.
    unassigned: Vec<Waiting>,
    /// Callbacks waiting for the push (by sequence number) that carries their ids.
    assigned: Vec<(u64, Waiting)>,
    /// The largest global count read per window.
    global: BTreeMap<WindowIndex, u64>,
    flushed: BTreeSet<WindowIndex>,
    flushing: BTreeSet<WindowIndex>,
    settling: bool,
    last_settle: Option<Instant>,
    settled: Option<(WindowIndex, Settlement)>,
    /// The request in flight is an election (`Settle`), which may claim the report.
    electing: bool,
    /// A window whose election failed on the way (Redis stopped answering): this instance
    /// may hold its claim, which the others then leave the window to, so it does not write
    /// its own count until it knows (or until twice `--report-max-delay-secs`).
    claim_unknown: Option<WindowIndex>,
    /// The window reported by another instance without this instance's ids: once they are
    /// all in Redis, this instance amends the report.
    amending: Option<WindowIndex>,
    /// Windows whose report this instance has claimed, with the count it read then.
    claimed: BTreeMap<WindowIndex, u64>,
    /// Windows this instance has reported, and when they were due: until their claims
    /// expire, the claims are set again whenever Redis may have lost them.
    reported: Vec<(WindowIndex, SystemTime)>,
    /// Windows this process concluded holding none of their ids, and when they were due. Its
    /// flush mark of them (none to wait for) is true whatever Redis loses, and a reporter
    /// waits for it: set again whenever Redis may have lost it, until the marks expire (the
    /// simulator's seed 1383 found a reporter waiting past the delay for a mark so lost).
    concluded_empty: Vec<(WindowIndex, SystemTime)>,
    /// At shutdown: the answers about whether others' reports hold this instance's ids.
    checked: Vec<(WindowIndex, Option<Counted>)>,
    left: bool,
}

/// How a shutdown left Redis.
#[derive(Debug, Default)]
pub(crate) struct Departure {
    /// Redis has every id, and the flush marks.
    pub(crate) pushed: bool,
    /// Windows another instance reported without this instance's ids, and what becomes of
    /// each: amended, or this instance's own count, or late.
    pub(crate) unreported_ids: Vec<(WindowIndex, Verdict)>,
}

impl Replicator {
    /// `max_delay`: how long after a window's end its report may wait for Redis.
    pub fn new(link: RedisLink, max_delay: Duration) -> Self {
        // Claims an earlier process of this instance made: set again once Redis answers.
        let reported = link.recovered_claims().to_vec();
        Replicator {
            link,
            max_delay,
            // Behind every epoch: the ids recorded before Redis first answers are replayed
            // when it does.
            generation: u64::MAX,
            pending: Vec::new(),
            pending_ids: 0,
            in_flight: HashMap::new(),
            next_seq: 0,
            unassigned: Vec::new(),
            assigned: Vec::new(),
            global: BTreeMap::new(),
            flushed: BTreeSet::new(),
            flushing: BTreeSet::new(),
            settling: false,
            last_settle: None,
            settled: None,
            electing: false,
            claim_unknown: None,
            amending: None,
            claimed: BTreeMap::new(),
            reported,
            concluded_empty: Vec::new(),
            checked: Vec::new(),
            left: false,
        }
    }

    pub(crate) fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Redis answers and holds, or is being sent, every id of this generation.
    fn in_step(&self) -> bool {
        let health = self.link.health();
        health.is_up() && health.epoch() == self.generation
    }

    /// Ids Redis has not confirmed, all windows.
    pub fn unconfirmed_ids(&self) -> usize {
        self.pending_ids + self.in_flight_ids(|_| true)
    }

    /// Ids of one window Redis has not confirmed in this generation. A push that failed
    /// leaves nothing in flight, but then the epoch has moved on before its reply came, so
    /// nothing is marked flushed until the replay has been confirmed.
    fn unconfirmed_of(&self, window: WindowIndex) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .filter(|(w, _)| *w == window)
            .map(|(_, ids)| ids.len())
            .sum();
        pending + self.in_flight_ids(|w| w == window)
    }

    /// Ids of this generation in flight, of the windows `of` accepts.
    fn in_flight_ids(&self, of: impl Fn(WindowIndex) -> bool) -> usize {
        self.in_flight
            .values()
            .filter(|f| f.generation == self.generation)
            .flat_map(|f| &f.ids)
            .filter(|(w, _)| of(*w))
            .map(|(_, n)| n)
            .sum()
    }

    /// An id new to this instance. Out of step with Redis, the replay will carry it.
    pub fn record(&mut self, window: WindowIndex, id: i64) {
        if !self.in_step() {
            return;
        }
        match self.pending.iter_mut().rev().find(|(w, _)| *w == window) {
            Some((_, ids)) => ids.push(id),
            None => self.pending.push((window, vec![id])),
        }
        self.pending_ids += 1;
    }

    /// Callbacks waiting for a global count: bounded by the recorder, which sheds past the
    /// callback queue's size.
    pub(crate) fn waiting_callbacks(&self) -> usize {
        self.unassigned.len() + self.assigned.len()
    }

    /// A callback whose id is counted here (`local` is this instance's count): it waits for
    /// the next global count, or, out of step with Redis, goes now with what is known.
    pub(crate) fn callback(
        &mut self,
        request: Box<CallbackRequest>,
        local: u64,
    ) -> Option<ReadyCallback> {
        if !self.in_step() {
            let count = self.known_count(request.window, local);
            return Some((request, count));
        }
        self.unassigned.push(Waiting {
            since: self.link.time().instant(),
            request,
        });
        None
    }

    fn known_count(&self, window: WindowIndex, local: u64) -> u64 {
        self.global.get(&window).copied().unwrap_or(0).max(local)
    }

    /// One round: reads the replies, replays when Redis may have lost ids, sends the pending
    /// ids, and hands back the callbacks that are ready.
    pub fn step(&mut self, open: &BTreeMap<WindowIndex, IdSet>, ready: &mut Vec<ReadyCallback>) {
        let local = |w: &WindowIndex| open.get(w).map_or(0, |ids| ids.len() as u64);
        while let Some(reply) = self.link.try_reply() {
            self.take_reply(reply, &local, ready);
        }
        let health = self.link.health();
        if health.epoch() != self.generation {
            if health.is_up() {
                self.replay(open);
            } else {
                self.pending.clear();
                self.pending_ids = 0;
            }
        }
        // Out of step with Redis, no global count is coming: every waiting callback goes.
        let now = self.link.time().instant();
        let out_of_step = !self.in_step();
        let waited = |w: &Waiting| out_of_step || now.duration_since(w.since) >= CALLBACK_MAX_WAIT;
        let expired: Vec<Waiting> = self
            .unassigned
            .extract_if(.., |w| waited(w))
            .chain(
                self.assigned
                    .extract_if(.., |(_, w)| waited(w))
                    .map(|(_, w)| w),
            )
            .collect();
        for w in expired {
            let count = self.known_count(w.request.window, local(&w.request.window));
            ready.push((w.request, count));
        }
        self.send_pending();
    }

    fn take_reply(
        &mut self,
        reply: Reply,
        local: &impl Fn(&WindowIndex) -> u64,
        ready: &mut Vec<ReadyCallback>,
    ) {
        match reply {
            Reply::Pushed { seq, counts } => {
                self.in_flight.remove(&seq);
                for (w, count) in counts.into_iter().flatten() {
                    let known = self.global.entry(w).or_default();
                    *known = (*known).max(count);
                }
                let served: Vec<(u64, Waiting)> =
                    self.assigned.extract_if(.., |(s, _)| *s == seq).collect();
                for (_, w) in served {
                    let count = self.known_count(w.request.window, local(&w.request.window));
                    ready.push((w.request, count));
                }
            }
            Reply::Flushed {
                generation,
                window,
                ok,
            } => {
                self.flushing.remove(&window);
                if ok && generation == self.generation {
                    self.flushed.insert(window);
                }
            }
            Reply::Settled { window, settlement } => {
                self.settling = false;
                if settlement.is_none() && self.electing {
                    self.claim_unknown = Some(window);
                }
                self.settled = settlement.map(|s| (window, s));
            }
            Reply::Checked { window, check } => self.checked.push((window, check)),
            Reply::Left => self.left = true,
        }
    }

    /// Redis may lack any id it took before the epoch moved on: everything again; and the
    /// claims of the windows reported within the claims' expiry: an instance restarted with
    /// a window read back from its log may settle it any time until then, and without the
    /// claim would report it a second time (the 30-minute chaos run of seed 101 found it so,
    /// with the claims set again only within `--report-max-delay-secs`).
    fn replay(&mut self, open: &BTreeMap<WindowIndex, IdSet>) {
        self.generation = self.link.health().epoch();
        let horizon = self.link.time().now() - self.link.key_ttl();
        self.reported.retain(|&(_, due)| due >= horizon);
        let windows = self.reported.iter().map(|&(window, _)| window).collect();
        self.link.send(Request::Reassert { windows });
        self.concluded_empty.retain(|&(_, due)| due >= horizon);
        for &(window, _) in &self.concluded_empty {
            self.link.send(Request::MarkFlushed {
                generation: self.generation,
                window,
            });
        }
        self.pending = open
            .iter()
            .map(|(&w, ids)| (w, ids.iter().collect::<Vec<i64>>()))
            .collect();
        self.pending_ids = self.pending.iter().map(|(_, ids)| ids.len()).sum();
        self.flushed.clear();
        if self.pending_ids > 0 {
            log::info!(
                "redis: replaying {} ids of {} windows",
                self.pending_ids,
                open.len()
            );
        }
    }

    fn send_pending(&mut self) {
        while self.in_step()
            && self.in_flight.len() < MAX_IN_FLIGHT
            && (self.pending_ids > 0 || !self.unassigned.is_empty())
        {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut ids = Vec::new();
            let mut room = MAX_PUSH_IDS;
            while room > 0
                && let Some((w, window_ids)) = self.pending.last_mut()
            {
                let taken = if window_ids.len() <= room {
                    std::mem::take(window_ids)
                } else {
                    window_ids.split_off(window_ids.len() - room)
                };
                room -= taken.len();
                self.pending_ids -= taken.len();
                ids.push((*w, taken));
                if window_ids.is_empty() {
                    self.pending.pop();
                }
            }
            let mut count = Vec::new();
            if self.pending_ids == 0 {
                // This push carries every id before the waiting callbacks: its counts serve
                // them.
                for w in self.unassigned.drain(..) {
                    if !count.contains(&w.request.window) {
                        count.push(w.request.window);
                    }
                    self.assigned.push((seq, w));
                }
            }
            self.in_flight.insert(
                seq,
                InFlight {
                    generation: self.generation,
                    ids: ids.iter().map(|(w, ids)| (*w, ids.len())).collect(),
                },
            );
            self.link.send(Request::Push { seq, ids, count });
        }
    }

    /// A closed window whose ids every worker has handed over: once Redis has confirmed all of
    /// this instance's ids of it, the window is marked flushed.
    pub(crate) fn mark_flushed(&mut self, window: WindowIndex) {
        if self.in_step()
            && self.unconfirmed_of(window) == 0
            && !self.flushed.contains(&window)
            && self.flushing.insert(window)
        {
            self.link.send(Request::MarkFlushed {
                generation: self.generation,
                window,
            });
        }
    }

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
