//! Amended reports: the window's count published again when ids the report lacked have come;
//! and, at shutdown, whether a report had this instance's ids.

use redis::Value;

use super::super::keys;
use super::commands::{self, NO_ARGS, about, keyed};
use super::memory::Memory;
use super::replies::{self, CountedHere, holder, number};
use super::settle::own_marks_lost;
use super::{Context, Counted, Effect, Next, Round, Settlement, instance_of};
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

/// Publishing the window's count again where it has grown since its report: this instance's
/// ids, which the report lacked, are in Redis now. Within the amend horizon the window's ids
/// are all still there, so the count read is the whole window's.
#[derive(Debug)]
pub(crate) enum Amend {
    /// The shards' marks and sizes.
    Tallied { window: WindowIndex, start: String },
    /// The count published, and the one read where this instance's marks are on every shard.
    Published {
        window: WindowIndex,
        start: String,
        count: Option<u64>,
    },
    /// The count published if larger, and the one before.
    Compared { window: WindowIndex, count: u64 },
}

impl Amend {
    pub(crate) fn start(window: WindowIndex, cx: &Context) -> Next<Amend> {
        let start = cx.clock.start_rfc3339(window);
        let tally = commands::tally(&start, cx.settings.shards);
        Next::run(Amend::Tallied { window, start }, tally)
    }
}

impl Round for Amend {
    type Outcome = Option<Settlement>;

    fn step(self, replies: Option<Vec<Value>>, memory: &mut Memory, cx: &Context) -> Next<Self> {
        replies
            .and_then(|values| self.on(&values, memory, cx))
            .unwrap_or_else(|| Next::done(None))
    }
}

impl Amend {
    fn on(self, values: &[Value], memory: &Memory, cx: &Context) -> Option<Next<Amend>> {
        Some(match self {
            Amend::Tallied { window, start } => {
                let tally = replies::tally(values)?;
                // Without this instance's marks the count has none of its ids to add.
                let count = tally
                    .marked
                    .iter()
                    .any(|m| m == cx.me())
                    .then_some(tally.count);
                let get = keyed(&keys::published(&start), "GET", NO_ARGS);
                Next::run(
                    Amend::Published {
                        window,
                        start,
                        count,
                    },
                    vec![get],
                )
            }
            Amend::Published {
                window,
                start,
                count,
            } => match (holder(&values[0])?, count) {
                // Gone with the window's ids at the end of the amend horizon, or lost with
                // them.
                (None, _) => Next::done(Some(count_gone(window, cx))),
                (Some(_), None) => own_marks_lost(&start),
                (Some(published), Some(count)) => match published.parse::<u64>() {
                    Ok(before) if count > before => {
                        let published = keys::published(&start);
                        let script = about(
                            &published,
                            redis::cmd("EVAL")
                                .arg(PUBLISH_LARGER)
                                .arg(1)
                                .arg(&published.name)
                                .arg(count)
                                .to_owned(),
                        );
                        // Kept first: should this process die once the count is published,
                        // its next one finds the count equal to its own, and reports it.
                        Next::run(Amend::Compared { window, count }, vec![script])
                            .after(vec![Effect::KeepAmending(window)])
                    }
                    Ok(before) if count == before => {
                        Next::done(Some(equal(window, count, memory, cx)))
                    }
                    // Fewer ids than the report counted, or the count marked lost: Redis lost
                    // some since.
                    _ => Next::done(Some(Settlement::LostSinceReport)),
                },
            },
            Amend::Compared { window, count } => {
                let before = number::<i64>(&values[0])?;
                Next::done(Some(match u64::try_from(before) {
                    Err(_) if before == -1 => count_gone(window, cx),
                    Ok(before) if count > before => Settlement::Amended(count),
                    Ok(before) if count == before => equal(window, count, memory, cx),
                    _ => Settlement::LostSinceReport,
                }))
            }
        })
    }
}

/// The count published of `window` is `count`, this instance's: the report had its ids,
/// unless an earlier process of this instance published it as an amendment and died before
/// it wrote the amended report (the simulator's seed 1275), which is written here.
fn equal(window: WindowIndex, count: u64, memory: &Memory, cx: &Context) -> Settlement {
    if memory.amending.contains(&window) {
        log::warn!(
            "window {}: an earlier process of this instance published the amended count \
             {count} and may not have reported it; reporting it here",
            cx.clock.start_rfc3339(window)
        );
        return Settlement::Amended(count);
    }
    Settlement::ByOther { counted_here: true }
}

/// Whether the record of whose marks the count of `window`'s report had, written after the
/// window ended, is gone with data Redis lost if it is gone: a loss was found since the
/// window ended.
pub(super) fn record_lost(window: WindowIndex, cx: &Context) -> bool {
    cx.health.lost_data_since(cx.clock.end(window))
}

/// The count published of `window` is missing: gone by expiry at the end of the amend
/// horizon, which comes `--report-max-delay-secs` after the report, so not before as long
/// after the window's end; before that, not published yet (the reporter publishes it right
/// after its claim), or, where a loss was found since the window ended, gone with it, and how
/// many of this instance's ids the report had cannot be told (the simulator's seed 478 took
/// such a loss for the horizon's end, and the ids for late).
fn count_gone(window: WindowIndex, cx: &Context) -> Settlement {
    let end = cx.clock.end(window);
    if cx.time.now() >= end + cx.settings.amend_horizon {
        Settlement::PastAmends
    } else if cx.health.lost_data_since(end) {
        Settlement::LostSinceReport
    } else {
        Settlement::NotYet("the report's count is not published yet")
    }
}

/// At shutdown, once the window is marked flushed: whether a report of it by another
/// instance had this instance's ids.
#[derive(Debug)]
pub(crate) enum Check {
    /// The claim and the lease read.
    Read { window: WindowIndex, start: String },
    /// Whose marks the claimant's count had, of this window.
    ByOther(WindowIndex),
}

impl Check {
    pub(crate) fn start(window: WindowIndex, cx: &Context) -> Next<Check> {
        let start = cx.clock.start_rfc3339(window);
        let read = vec![
            keyed(&keys::reported(&start), "GET", NO_ARGS),
            keyed(&keys::lease(&start), "GET", NO_ARGS),
        ];
        Next::run(Check::Read { window, start }, read)
    }
}

impl Round for Check {
    type Outcome = Option<Counted>;

    fn step(self, replies: Option<Vec<Value>>, _: &mut Memory, cx: &Context) -> Next<Self> {
        replies
            .and_then(|values| self.on(&values, cx))
            .unwrap_or_else(|| Next::done(None))
    }
}

impl Check {
    fn on(self, values: &[Value], cx: &Context) -> Option<Next<Check>> {
        let me = cx.me();
        Some(match self {
            Check::Read { window, start } => match (holder(&values[0])?, holder(&values[1])?) {
                (Some(claimant), _) if instance_of(&claimant) != instance_of(me) => {
                    Next::run(Check::ByOther(window), vec![commands::counted(&start)])
                }
                (None, Some(leader)) if leader != me => Next::done(Some(Counted::Settling)),
                // Nobody is reporting it; or this instance claimed it, a window this process
                // still holds, so its report is not written: this process's claim (an
                // election whose answer the shutdown did not wait for: the simulator's seed
                // 71), or an earlier process's, which died before it wrote the report (the
                // segments go only once it is written, and nobody else writes it: defect 16;
                // seed 1040). The election reports it.
                _ => Next::done(Some(Counted::Unsettled)),
            },
            Check::ByOther(window) => {
                let lost = record_lost(window, cx);
                Next::done(Some(match replies::counted_here(&values[0], me, lost)? {
                    CountedHere::Yes => Counted::Yes,
                    // Not counted, or it cannot be told: the amendment says which.
                    CountedHere::No | CountedHere::CannotTell => Counted::No,
                }))
            }
        })
    }
}
