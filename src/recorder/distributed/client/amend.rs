//! Amended reports: the window's count published again when ids the report lacked have
//! come, and whether a report had this instance's ids.

use redis::FromRedisValue;

use super::super::connect::Connect;
use super::super::keys;
use super::link::{Counted, Settlement};
use super::{NO_ARGS, Store, Tally, about, holder, instance_of, keyed};
use crate::window::WindowIndex;

/// Publishes a window's count when it is larger than the one published (`verve:count:<w>`),
/// keeping its expiry; returns the count published before, -1 when there is none (the
/// window can no longer be amended) or -2 when Redis lost the window's ids (`LOST`). One
/// script, so that of two instances amending at once only the larger count is published
/// last.
pub(crate) const PUBLISH_LARGER: &str = "local published = redis.call('GET', KEYS[1]) \
    if not published then return -1 end \
    published = tonumber(published) \
    if not published then return -2 end \
    if tonumber(ARGV[1]) > published then \
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end \
    return published";

impl<C: Connect> Store<C> {
    /// Publishes the window's count again where it has grown since its report: this
    /// instance's ids, which the report lacked, are in Redis now. Within the amend horizon
    /// the window's ids are all still there, so the count read is the whole window's.
    pub(super) async fn amend(&self, window: WindowIndex) -> Option<Settlement> {
        let start = self.clock.start_rfc3339(window);
        let Tally { marked, count } = self.tally(window).await?;
        let published = keys::published(&start);
        if !marked.contains(&self.settings.process) {
            // Gone with the window's ids at the end of the amend horizon, or lost with them.
            let exists = self.run(vec![keyed(&published, "EXISTS", NO_ARGS)]).await?;
            return Some(if u64::from_redis_value(&exists[0]).ok()? == 0 {
                Settlement::PastAmends
            } else {
                self.own_marks_lost(&start)
            });
        }
        let script = about(
            &published,
            redis::cmd("EVAL")
                .arg(PUBLISH_LARGER)
                .arg(1)
                .arg(&published.name)
                .arg(count)
                .to_owned(),
        );
        let before = self.run(vec![script]).await?;
        let before = i64::from_redis_value(&before[0]).ok()?;
        // Fewer ids than the report counted: Redis lost some since.
        Some(match u64::try_from(before) {
            Err(_) if before == -1 => Settlement::PastAmends,
            Ok(before) if count > before => Settlement::Amended(count),
            Ok(before) if count == before => Settlement::ByOther { counted_here: true },
            _ => Settlement::LostSinceReport,
        })
    }

    pub(super) async fn check_counted(&self, window: WindowIndex) -> Option<Counted> {
        let start = self.clock.start_rfc3339(window);
        let values = self
            .run(vec![
                keyed(&keys::reported(&start), "GET", NO_ARGS),
                keyed(&keys::lease(&start), "GET", NO_ARGS),
            ])
            .await?;
        let me = &self.settings.process;
        Some(match (holder(&values[0])?, holder(&values[1])?) {
            (Some(claimant), _) if instance_of(&claimant) != instance_of(me) => {
                match self.by_other(&start).await? {
                    Settlement::ByOther { counted_here: true } => Counted::Yes,
                    _ => Counted::No,
                }
            }
            (None, Some(leader)) if leader != *me => Counted::Settling,
            // Nobody is reporting it; or this instance claimed it, a window this process still
            // holds, so its report is not written: this process's claim (an election whose
            // answer the shutdown did not wait for: the simulator's seed 71), or an earlier
            // process's, which died before it wrote the report (the segments go only once it
            // is written, and nobody else writes it: defect 16; seed 1040). The election
            // reports it.
            _ => Counted::Unsettled,
        })
    }
}
