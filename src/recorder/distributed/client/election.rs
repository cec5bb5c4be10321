//! Who settles a window's report: the lease, the flush marks, the claims an earlier
//! process or a restarted Redis may have left.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::FromRedisValue;

use super::super::connect::Connect;
use super::super::keys::{self, Key};
use super::link::Settlement;
use super::{
    MAX_BACKOFF, NO_ARGS, Store, Tally, about, held_by, holder, instance_of, keyed, millis,
};
use crate::window::WindowIndex;

impl<C: Connect> Store<C> {
    /// One round of settling a window's report. Exactly one instance writes each report: the
    /// lease (`SET NX PX`) picks who waits for the flush marks and counts, and the reported
    /// marker, claimed with `SET NX` and held by a replica (`WAIT`) before the report is
    /// written, makes sure that a failover losing the lease cannot make a second reporter.
    pub(super) async fn settle(
        &self,
        window: WindowIndex,
        overdue: bool,
        adopt: bool,
    ) -> Option<Settlement> {
        // After a Redis restart, give every live instance time to find Redis again (its
        // probes back off up to MAX_BACKOFF), then a heartbeat to announce itself and set its
        // report claims again: settled sooner, a window another instance reported just before
        // the restart would be reported twice (the chaos run of seed 101, host mode, did).
        let settled = self.health.up_since().is_some_and(|t| {
            self.time.instant().saturating_duration_since(t)
                >= self.settings.heartbeat_ttl + MAX_BACKOFF
        });
        if !settled {
            return Some(Settlement::NotYet(
                "redis answers again since less than a heartbeat and a probe backoff",
            ));
        }
        let start = self.clock.start_rfc3339(window);
        let (lease, reported) = (keys::lease(&start), keys::reported(&start));
        let end = self.clock.end(window);
        // When the claim's server started, read once, where it decides something: a window
        // to adopt, or one whose claim a restart found since its end may have taken.
        let lost_since_end = self.health.lost_data_since(end);
        let started = if adopt || lost_since_end {
            Some(self.node_started(&reported).await?)
        } else {
            None
        };
        if adopt && started.is_some_and(|t| t >= end) {
            return Some(Settlement::NotAdopted);
        }
        let awaited = match started {
            Some(started) if lost_since_end => self.awaited_claimants(end, started).await?,
            _ => Vec::new(),
        };
        if !awaited.is_empty() {
            if self.awaiting_logged.replace(Some(window)) != Some(window) {
                log::info!(
                    "window {start}: redis restarted after it ended; waiting for {} to set \
                     their report claims again",
                    awaited.join(", ")
                );
            }
            return Some(Settlement::NotYet(
                "redis restarted after the window ended: waiting for instances that could \
                 have claimed its report to set their claims again",
            ));
        }
        let me = &self.settings.process;
        let ttl_ms = millis(self.settings.heartbeat_ttl);
        let elect = vec![
            keyed(&reported, "GET", NO_ARGS),
            keyed(&lease, "SET", (me, "NX", "PX", ttl_ms)),
            keyed(&lease, "GET", NO_ARGS),
        ];
        let values = self.run(elect).await?;
        match holder(&values[0])? {
            // Another instance's claim; or, of a window this process does not hold from its
            // log, an earlier process's of this instance (it wrote the report, or its log is
            // gone with it).
            Some(holder) if holder != *me && (adopt || instance_of(&holder) != instance_of(me)) => {
                self.unsure_claims.borrow_mut().remove(&window);
                return self.by_other(&start).await;
            }
            // An earlier process's of this instance that wrote the report, killed before the
            // window's segments went (the claim kept beside the log says so): reported.
            Some(holder) if self.report_written_by(window, &holder) => {
                return Some(Settlement::ByOther { counted_here: true });
            }
            // Ours, not on a replica yet when last tried: hold it again. Or an earlier
            // process's of this instance, killed before it wrote the report: the window's ids
            // are in this process's log, whose segments go only once the report is written, so
            // nobody else reports it (the simulator's seed 1 found the window unreported): this
            // process takes the claim over.
            Some(holder) => {
                if holder != *me {
                    self.take_over(window, &start, &holder).await?;
                }
                let tally = self.tally(window).await?;
                if !tally.marked.contains(me) {
                    return Some(self.own_marks_lost(&start));
                }
                return self.report_claimed(window, &start, overdue, tally).await;
            }
            None => {}
        }
        if !held_by(&values[2], me)? {
            return Some(Settlement::NotYet("another instance holds the lease"));
        }
        self.run(vec![keyed(&lease, "PEXPIRE", ttl_ms)]).await?;

        let tally = self.tally(window).await?;
        if !tally.marked.contains(me) {
            return Some(self.own_marks_lost(&start));
        }
        if adopt && tally.count == 0 {
            let _ = self.run(vec![keyed(&lease, "UNLINK", NO_ARGS)]).await;
            return Some(Settlement::NotAdopted);
        }
        let missing = self.unmarked_live_instances(&tally.marked).await?;
        if !missing.is_empty() {
            if !overdue {
                return Some(Settlement::NotYet(
                    "waiting for the flush marks of live instances",
                ));
            }
            log::warn!(
                "window {start}: reporting after --report-max-delay-secs without the flush \
                 marks of {}",
                missing.join(", ")
            );
        }
        self.report_claimed(window, &start, overdue, tally).await
    }

    /// A window's count and the instances whose flush marks are on every shard. Each shard's
    /// marks are read before its size, from the same node in the same pipeline: a mark read
    /// vouches for ids the size read after it has.
    pub(super) async fn tally(&self, window: WindowIndex) -> Option<Tally> {
        let shards = keys::id_shards(&self.clock.start_rfc3339(window), self.settings.shards);
        let cmds = shards
            .iter()
            .flat_map(|shard| {
                [
                    keyed(&keys::flushed(shard), "SMEMBERS", NO_ARGS),
                    keyed(shard, "SCARD", NO_ARGS),
                ]
            })
            .collect();
        let values = self.run(cmds).await?;
        let mut marked: Option<Vec<String>> = None;
        let mut count = 0;
        for shard in values.chunks(2) {
            let marks: Vec<String> = FromRedisValue::from_redis_value(&shard[0]).ok()?;
            count += u64::from_redis_value(&shard[1]).ok()?;
            marked = Some(match marked {
                None => marks,
                Some(everywhere) => everywhere
                    .into_iter()
                    .filter(|i| marks.contains(i))
                    .collect(),
            });
        }
        Some(Tally {
            marked: marked.unwrap_or_default(),
            count,
        })
    }

    /// Marks the window flushed by this instance on every shard, beside the ids.
    pub(super) async fn mark_flushed(&self, window: WindowIndex) -> Option<()> {
        let shards = keys::id_shards(&self.clock.start_rfc3339(window), self.settings.shards);
        let ttl = self.key_ttl_secs();
        let cmds = shards
            .iter()
            .flat_map(|shard| {
                let marks = keys::flushed(shard);
                [
                    keyed(&marks, "SADD", &self.settings.process),
                    keyed(&marks, "EXPIRE", ttl),
                ]
            })
            .collect();
        self.run(cmds).await?;
        Some(())
    }

    /// This instance's flush mark is missing from a shard, though the recorder asks to count
    /// only once its marks are set: that shard's master lost writes it had acknowledged (a
    /// failover, a restart), this instance's ids with them, and no error said so here.
    pub(super) fn own_marks_lost(&self, start: &str) -> Settlement {
        log::warn!(
            "window {start}: this instance's flush mark is gone from redis, and its ids with it; \
             pushing them again"
        );
        self.health.marks_lost();
        self.note_loss();
        Settlement::NotYet("this instance's flush mark is gone from redis: its ids go again")
    }

    /// Whether `holder`, an earlier process of this instance, wrote the report of `window`
    /// whose claim it kept beside the log.
    fn report_written_by(&self, window: WindowIndex, holder: &str) -> bool {
        self.counted
            .borrow()
            .get(&window)
            .is_some_and(|c| c.holder == holder && c.report_written)
    }

    /// Takes over the claim of an earlier process of this instance that died before it wrote
    /// the report. The others saw that claim and forgot their ids: should Redis have lost some
    /// since, its count has them (the simulator's seed 11 reported fewer), so the count
    /// reported here is at least that.
    async fn take_over(&self, window: WindowIndex, start: &str, holder: &str) -> Option<()> {
        log::warn!(
            "window {start}: claimed by {holder}, an earlier process of this instance that did \
             not write the report; reporting it here"
        );
        let me = &self.settings.process;
        let take_over = keyed(&keys::reported(start), "SET", (me, "XX", "KEEPTTL"));
        self.run(vec![take_over]).await?;
        if let Some(kept) = self.counted.borrow().get(&window)
            && kept.holder == holder
            && self
                .unsure_claims
                .borrow()
                .get(&window)
                .is_none_or(|unsure| unsure.count < kept.count)
        {
            self.unsure_claims
                .borrow_mut()
                .insert(window, Tally::of(kept));
        }
        Some(())
    }

    /// Another instance has claimed the report: whether its count had this instance's flush
    /// mark. Without the record (a restarted Redis lost it), it is taken to have.
    pub(super) async fn by_other(&self, start: &str) -> Option<Settlement> {
        let counted = self
            .run(vec![keyed(&keys::counted(start), "GET", NO_ARGS)])
            .await?;
        let counted: Option<String> = FromRedisValue::from_redis_value(&counted[0]).ok()?;
        let me = &self.settings.process;
        let counted_here = counted.is_none_or(|c| c.lines().any(|i| i == me));
        Some(Settlement::ByOther { counted_here })
    }

    /// The instances a window that ended at `end` waits for before anyone but its claimant
    /// settles it (defect 15 of docs/reliability.md): when the server of its claim, which
    /// `started` then, restarted after the window ended, the claim may have gone with it while
    /// its claimant was down, and the claimant's next process sets it again from its log's
    /// directory. Those of the instances that could have claimed it whose processes have not
    /// said since the restart that they set their claims again (`verve:returned`), until
    /// `claims_return_wait` after the restart; none otherwise.
    async fn awaited_claimants(&self, end: SystemTime, started: SystemTime) -> Option<Vec<String>> {
        if started < end || self.time.now() >= started + self.settings.claims_return_wait {
            return Some(Vec::new());
        }
        let could_have = self.seen_before_loss.borrow().could_have_claimed(end);
        if could_have.is_empty() {
            return Some(Vec::new());
        }
        // The start's whole second: a process that set its claims again in that second
        // counts, whether before or after the restart within it.
        let since = millis(started.duration_since(UNIX_EPOCH).unwrap_or_default());
        let returned = self.scored_since(&keys::returned(), since).await?;
        Some(
            could_have
                .into_iter()
                .filter(|id| !returned.iter().any(|p| instance_of(p) == id))
                .collect(),
        )
    }

    /// Live instances whose flush marks are not on every shard.
    async fn unmarked_live_instances(&self, marked: &[String]) -> Option<Vec<String>> {
        let since = self
            .now_ms()
            .saturating_sub(millis(self.settings.heartbeat_ttl));
        let live = self.scored_since(&keys::instances(), since).await?;
        Some(live.into_iter().filter(|i| !marked.contains(i)).collect())
    }

    /// The members of a sorted set of processes scored by a time (ms) at or after `since`.
    async fn scored_since(&self, key: &Key, since: u64) -> Option<Vec<String>> {
        let members = self
            .run(vec![keyed(key, "ZRANGEBYSCORE", (since, "+inf"))])
            .await?;
        FromRedisValue::from_redis_value(&members[0]).ok()
    }

    /// When the node that holds `key` started, to the whole second: it holds every claim set
    /// on `key` since.
    async fn node_started(&self, key: &Key) -> Option<SystemTime> {
        self.nodes_started(std::slice::from_ref(key)).await?.pop()
    }

    /// When the servers of `keys` started, in one call (a pipeline per server), each to the
    /// whole second it started in: Redis's uptime is its clock's whole seconds now less those
    /// when it started, so the two fields of `INFO server` give that second exactly. Windows
    /// end on whole seconds, so "started before a window's end" holds of the second as of the
    /// moment. A server without `server_time_usec` (before Redis 6.2) is read on this
    /// instance's clock instead.
    pub(super) async fn nodes_started(&self, keys: &[Key]) -> Option<Vec<SystemTime>> {
        let infos = keys
            .iter()
            .map(|key| about(key, redis::cmd("INFO").arg("server").to_owned()))
            .collect();
        let infos = self.run(infos).await?;
        let here = self.time.now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        infos
            .iter()
            .map(|info| {
                let info: String = FromRedisValue::from_redis_value(info).ok()?;
                let field = |name: &str| -> Option<u64> {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
                        .trim()
                        .parse()
                        .ok()
                };
                let uptime = field("uptime_in_seconds")?;
                let now = field("server_time_usec").map_or(here, |us| us / 1_000_000);
                Some(UNIX_EPOCH + Duration::from_secs(now.saturating_sub(uptime)))
            })
            .collect()
    }
}
