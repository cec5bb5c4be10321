//! What this process remembers between rounds: the claims it made or took over from an
//! earlier process of this instance, the tallies of claims not settled yet, and the
//! instances it has seen live.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::instance_of;
use crate::recorder::distributed::said_once::SaidOnce;
use crate::wal::claims::{Claim, Kept};
use crate::wal::seen::Sightings;
use crate::window::WindowIndex;

/// What a process remembers between rounds.
#[derive(Default)]
pub(crate) struct Memory {
    /// The report claims made here (or by an earlier process of this instance), with whose
    /// flush marks each count had (`verve:counted:<w>`), within the keys' expiry: set again
    /// when Redis may have lost them.
    pub(super) counted: BTreeMap<WindowIndex, Claim>,
    /// Tallies of claims not settled yet: their outcome unknown (Redis failed after the
    /// count's record was written), no replica holding them yet, or taken over from an
    /// earlier process of this instance. The others may have seen the claim and forgotten
    /// their ids, so should Redis lose their ids, this instance's next tally lacks them
    /// (defect 14 of docs/reliability.md). Both tallies count ids of the window only, so the
    /// larger is reported.
    pub(super) unsure_claims: BTreeMap<WindowIndex, Tally>,
    /// Claims an earlier process of this instance was making when it died, not known yet to
    /// have been made: the first look at Redis tells.
    pub(super) claiming: BTreeMap<WindowIndex, Claim>,
    /// Windows whose amended count an earlier process of this instance may have published
    /// and died before it wrote the amended report: reported here should Redis's count equal
    /// this process's.
    pub(super) amending: BTreeSet<WindowIndex>,
    /// The instances this process, and the earlier processes of this instance, have seen
    /// live.
    pub(super) seen: SeenLive,
    /// When this process first read the live instances.
    watching_since: Option<SystemTime>,
    /// The windows said to wait for claimants to come back, so that each is said once.
    pub(super) awaiting_logged: SaidOnce,
}

impl Memory {
    /// A process's memory at its start, from what an earlier process of this instance kept
    /// in the log's directory: the claims it made (`confirmed`) and those it was making, the
    /// amendments it was publishing, and the instances it read live.
    pub(crate) fn recovered(kept: Kept, sightings: Option<Sightings>) -> Memory {
        let (made, claiming): (Vec<Claim>, Vec<Claim>) =
            kept.claims.into_iter().partition(|c| c.confirmed);
        // Claims an earlier process made and did not report, or was making when it died: it
        // may hold them, so their counts are the floor of this process's, should it report
        // those windows, and what it writes of them cut off from Redis (the simulator's seed
        // 107 found one made, its window in no report but this process's own count).
        let unsure_claims = made
            .iter()
            .chain(&claiming)
            .filter(|c| !c.report_written)
            .map(|c| (c.window, Tally::of(c)))
            .collect();
        Memory {
            counted: made.into_iter().map(|c| (c.window, c)).collect(),
            unsure_claims,
            claiming: claiming.into_iter().map(|c| (c.window, c)).collect(),
            amending: kept.amending.into_iter().collect(),
            seen: sightings.map(SeenLive::from).unwrap_or_default(),
            ..Memory::default()
        }
    }

    /// The claims this process may hold whose outcome it does not know, with the counts they
    /// were made with: the others may have left those windows to them, and forgotten their
    /// ids.
    pub(crate) fn unsure_counts(&self) -> Vec<(WindowIndex, u64)> {
        self.unsure_claims
            .iter()
            .map(|(&w, t)| (w, t.count))
            .collect()
    }

    /// Whether this process may hold the claim of `window`: one whose outcome it does not
    /// know, made here or by an earlier process of this instance and not reported.
    pub(super) fn may_hold_claim(&self, window: WindowIndex) -> bool {
        self.unsure_claims.contains_key(&window)
    }

    /// Records the instances read live at `now`, forgetting those not seen within the keys'
    /// expiry (`key_ttl`: no claim of theirs is left by then); gives what to keep beside the
    /// log for the next process. A read more than a heartbeat (`heartbeat_ttl`) after the one
    /// before (this instance's processes killed, or cut off from Redis, meanwhile) cannot
    /// tell when an instance live at that one went: it may have been live until now, and
    /// claimed a window that ended meanwhile (the simulator's seed 292 found a claimant cut
    /// off right after it reported taken for gone by then, the window reported twice).
    pub(crate) fn saw_live(
        &mut self,
        live: &[String],
        now: SystemTime,
        key_ttl: Duration,
        heartbeat_ttl: Duration,
    ) -> Sightings {
        self.watching_since.get_or_insert(now);
        let seen = &mut self.seen;
        seen.first_read_at.get_or_insert(now);
        if let Some(before) = seen.read_at
            && now.duration_since(before).unwrap_or_default() > heartbeat_ttl
        {
            for at in seen.last_seen.values_mut().filter(|at| **at == before) {
                *at = now;
            }
        }
        seen.read_at = Some(now);
        for process in live {
            seen.last_seen.insert(instance_of(process).to_owned(), now);
        }
        let horizon = now - key_ttl;
        seen.last_seen.retain(|_, &mut t| t >= horizon);
        Sightings {
            first_read_at: seen.first_read_at.unwrap_or(now),
            read_at: now,
            last_seen: seen
                .last_seen
                .iter()
                .map(|(id, &t)| (id.clone(), t))
                .collect(),
        }
    }

    /// Whether this process has read the live instances since `end` at the latest: if not, a
    /// Redis server may have lost claims made since without this process knowing.
    pub(super) fn watched_since(&self, end: SystemTime) -> bool {
        self.watching_since.is_some_and(|first| first <= end)
    }

    /// Whether `holder`, an earlier process of this instance, made the claim of `window` and
    /// kept it beside the log.
    pub(super) fn made_by(&self, window: WindowIndex, holder: &str) -> bool {
        let held = |claims: &BTreeMap<WindowIndex, Claim>| {
            claims.get(&window).is_some_and(|c| c.holder == holder)
        };
        held(&self.counted) || held(&self.claiming)
    }

    /// Whether `holder`, an earlier process of this instance, wrote the report of `window`
    /// whose claim it kept beside the log.
    pub(super) fn report_written_by(&self, window: WindowIndex, holder: &str) -> bool {
        self.counted
            .get(&window)
            .is_some_and(|c| c.holder == holder && c.report_written)
    }
}

/// Instances seen live in `verve:instances`, by instance id (a restart under the same id is
/// the same instance: its next process sets its claims again), and when.
#[derive(Debug, Clone, Default)]
pub(super) struct SeenLive {
    /// When this instance's processes first read the instances.
    first_read_at: Option<SystemTime>,
    /// When the instances were last read.
    read_at: Option<SystemTime>,
    /// Each instance id and when it was last seen live, or may have been (`saw_live`).
    last_seen: BTreeMap<String, SystemTime>,
}

impl SeenLive {
    /// The instances that could have claimed the report of a window that ended at `end`:
    /// those seen live since, and, when the instances were last read before `end` (this
    /// process was cut off from Redis), those live at that last read. `None` where this
    /// instance cannot tell: its processes first read the instances after `end`, so that one
    /// live then and gone since (stopped, or cut off from Redis) is unknown to it.
    pub(super) fn could_have_claimed(&self, end: SystemTime) -> Option<Vec<String>> {
        let read_at = self.read_at?;
        if !self.saw_at(end) {
            return None;
        }
        let since = end.min(read_at);
        Some(
            self.last_seen
                .iter()
                .filter(|&(_, &t)| t >= since)
                .map(|(id, _)| id.clone())
                .collect(),
        )
    }

    /// Whether the instances had been read by `end`.
    fn saw_at(&self, end: SystemTime) -> bool {
        self.first_read_at.is_some_and(|first| first <= end)
    }
}

impl From<Sightings> for SeenLive {
    fn from(kept: Sightings) -> SeenLive {
        SeenLive {
            first_read_at: Some(kept.first_read_at),
            read_at: Some(kept.read_at),
            last_seen: kept.last_seen.into_iter().collect(),
        }
    }
}

/// What a window's shards held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// The instances whose flush marks were on every shard: all their ids are in `count`.
    pub(super) marked: Vec<String>,
    pub(super) count: u64,
}

impl Tally {
    /// The tally a kept claim was made with.
    pub(super) fn of(claim: &Claim) -> Tally {
        Tally {
            marked: claim.marks.lines().map(str::to_owned).collect(),
            count: claim.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn seen(first_read_at: u64, read_at: u64, last_seen: &[(&str, u64)]) -> SeenLive {
        SeenLive {
            first_read_at: Some(at(first_read_at)),
            read_at: Some(at(read_at)),
            last_seen: last_seen
                .iter()
                .map(|&(id, t)| (id.to_owned(), at(t)))
                .collect(),
        }
    }

    #[test]
    fn the_instances_that_could_have_claimed_a_window_are_those_seen_since_it_ended() {
        let seen = seen(10, 200, &[("a", 200), ("b", 150), ("c", 90)]);
        assert_eq!(seen.could_have_claimed(at(100)).unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_process_cut_off_before_the_window_ended_waits_for_those_live_at_its_last_look() {
        // Last read at 80, before the window's end at 100: a and b were live then and could
        // have claimed it since; c had gone before.
        let seen = seen(10, 80, &[("a", 80), ("b", 80), ("c", 40)]);
        assert_eq!(seen.could_have_claimed(at(100)).unwrap(), ["a", "b"]);
    }

    #[test]
    fn an_instance_whose_processes_first_read_the_instances_after_the_window_ended_cannot_tell() {
        assert_eq!(SeenLive::default().could_have_claimed(at(100)), None);
        let seen = seen(120, 200, &[("a", 200)]);
        assert_eq!(seen.could_have_claimed(at(100)), None);
        assert!(seen.could_have_claimed(at(120)).is_some());
    }
}
