//! The report's claim: the count and whose marks it had, recorded, kept in the log's
//! directory, set, held by a replica; then the window's keys retired.

use std::time::Duration;

use redis::FromRedisValue;

use super::super::connect::Connect;
use super::super::keys::{self, Key};
use super::super::nodes::Routed;
use super::link::Settlement;
use super::{NO_ARGS, Store, Tally, about, held_by, keyed, millis, replicas};
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// How long the winner of an election waits for a replica to hold the window's reported
/// marker before it writes the report (and tries again later when none does).
const WAIT_REPLICA_MS: u64 = 500;
/// How much longer a reported window's ids stay in Redis than its published count: an
/// amendment that finds the count finds the ids it was read with, even where the keys are
/// on masters whose expiries run a moment apart.
const AMEND_MARGIN: Duration = Duration::from_secs(5);

impl<C: Connect> Store<C> {
    /// Claims the window's report with the count read; the lease is held (or was, when the
    /// claim was made).
    pub(super) async fn report_claimed(
        &self,
        window: WindowIndex,
        start: &str,
        overdue: bool,
        tally: Tally,
    ) -> Option<Settlement> {
        // Kept until this claim's outcome is known: Redis may fail again on the way.
        let unsure = self.unsure_claims.borrow().get(&window).cloned();
        let Tally { marked, count } = match unsure {
            Some(unsure) if unsure.count > tally.count => {
                log::warn!(
                    "window {start}: counting {} ids, as when this instance last claimed its \
                     report: redis holds {} now",
                    unsure.count,
                    tally.count
                );
                unsure
            }
            _ => tally,
        };
        // Whose ids the count holds whole, written before the claim that others read it by.
        let marks = marked.join("\n");
        let counted = keyed(
            &keys::counted(start),
            "SET",
            (&marks, "EX", self.key_ttl_secs()),
        );
        self.run(vec![counted]).await?;
        self.remember_counted(window, marks, count);
        let tally = Tally { marked, count };
        self.unsure_claims.borrow_mut().insert(window, tally);
        if let (Some(wal), Some(claim)) = (&self.kept, self.counted.borrow().get(&window)) {
            wal.keep_claim(claim);
        }
        let claimed = self.claim(&keys::reported(start), overdue).await?;
        // A claim not on a replica yet is there for the others all the same: they leave the
        // window and forget their ids, so its count stays the floor of the next rounds' (the
        // simulator's seed 11 reported fewer after Redis lost ids between two rounds).
        if claimed != ClaimOutcome::NotReplicated {
            self.unsure_claims.borrow_mut().remove(&window);
        }
        if let (Some(wal), Some(claim)) = (&self.kept, self.counted.borrow().get(&window)) {
            if claimed == ClaimOutcome::Theirs {
                wal.forget_claim(window);
            } else {
                wal.keep_claim(&Claim {
                    confirmed: true,
                    ..claim.clone()
                });
            }
        }
        Some(match claimed {
            ClaimOutcome::Ours => {
                self.retire(start, count).await;
                Settlement::Won(count)
            }
            ClaimOutcome::Theirs => return self.by_other(start).await,
            ClaimOutcome::NotReplicated => Settlement::Claimed(count),
        })
    }

    fn remember_counted(&self, window: WindowIndex, marks: String, count: u64) {
        let mut counted = self.counted.borrow_mut();
        let now = self.time.now();
        let live = |w: WindowIndex| self.clock.end(w) + self.settings.key_ttl > now;
        self.unsure_claims.borrow_mut().retain(|&w, _| live(w));
        counted.retain(|&w, _| {
            let live = live(w);
            if let (false, Some(wal)) = (live, &self.kept) {
                wal.forget_claim(w);
            }
            live
        });
        counted.insert(
            window,
            Claim {
                window,
                holder: self.settings.process.clone(),
                count,
                marks,
                made_at: now,
                confirmed: false,
                report_written: false,
            },
        );
    }

    /// Claims the window's report: the marker set if absent, then (when the node has
    /// replicas) held by at least one of them. Past `--report-max-delay-secs` a claim no
    /// replica acknowledges is taken all the same (with a warning): a window must be
    /// reported, and only a failover in that moment could report it twice.
    async fn claim(&self, reported: &Key, overdue: bool) -> Option<ClaimOutcome> {
        let me = &self.settings.process;
        let cmds = vec![
            keyed(reported, "SET", (me, "NX", "EX", self.key_ttl_secs())),
            keyed(reported, "GET", NO_ARGS),
            about(reported, redis::cmd("ROLE")),
        ];
        let values = self.run(cmds).await?;
        if !held_by(&values[1], me)? {
            return Some(ClaimOutcome::Theirs);
        }
        if replicas(&values[2]) == 0 {
            return Some(ClaimOutcome::Ours);
        }
        let wait = about(
            reported,
            redis::cmd("WAIT").arg(1).arg(WAIT_REPLICA_MS).to_owned(),
        );
        let acked = self.run(vec![wait]).await?;
        Some(if i64::from_redis_value(&acked[0]).ok()? >= 1 {
            ClaimOutcome::Ours
        } else if overdue {
            log::warn!(
                "{}: no replica acknowledged the report claim within --report-max-delay-secs; \
                 reporting all the same",
                reported.name
            );
            ClaimOutcome::Ours
        } else {
            ClaimOutcome::NotReplicated
        })
    }

    /// Once a window's report is claimed its lease is read no more: it goes now. Its ids and
    /// their flush marks (which amendments read) stay for the amend horizon and then expire,
    /// rather than at the keys' expiry, so that Redis holds about one window more than the
    /// two being counted and reported; the count stays as long, for amendments to compare
    /// with. The claim stays until its expiry, so that nobody reports the window again. Best
    /// effort: what is left expires.
    async fn retire(&self, start: &str, count: u64) {
        let horizon = millis(self.settings.amend_horizon);
        let ids_ttl = horizon + millis(AMEND_MARGIN);
        let mut cmds: Vec<Routed> = keys::id_shards(start, self.settings.shards)
            .iter()
            .flat_map(|shard| {
                [
                    keyed(shard, "PEXPIRE", ids_ttl),
                    keyed(&keys::flushed(shard), "PEXPIRE", ids_ttl),
                ]
            })
            .collect();
        cmds.push(keyed(
            &keys::published(start),
            "SET",
            (count, "PX", horizon.max(1)),
        ));
        cmds.push(keyed(&keys::lease(start), "UNLINK", NO_ARGS));
        let _ = self.run(cmds).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOutcome {
    Ours,
    Theirs,
    NotReplicated,
}
