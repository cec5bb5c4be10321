//! One round of settling a window's report. Exactly one instance writes each report: the
//! lease (`SET NX PX`) picks who waits for the flush marks and counts, and the reported
//! marker, claimed with `SET NX` and held by a replica (`WAIT`) before the report is written
//! (`claim`), makes sure that a failover losing the lease cannot make a second reporter.

use std::time::Duration;

use redis::Value;

use super::super::keys;
use super::amend::record_lost;
use super::claim::{self, report_claimed};
use super::commands::{self, NO_ARGS, keyed};
use super::memory::{Memory, Tally};
use super::replies::{self, CountedHere, held_by, holder, members};
use super::{Context, Effect, Next, Round, Settlement, instance_of, millis, millis_since_epoch};
use crate::window::WindowIndex;

/// The longest Redis may have answered again before an election: every live instance's
/// probes back off up to this, then a heartbeat announces it and sets its claims again.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The request: which window, whether past `--report-max-delay-secs` (`overdue`), and
/// whether a window to adopt (from before this process started, no id of it held here).
#[derive(Debug)]
pub(crate) struct Job {
    pub(super) window: WindowIndex,
    pub(super) start: String,
    pub(super) overdue: bool,
    adopt: bool,
}

/// Where a settle round stands: each state waits for the replies to the commands it was
/// entered with.
#[derive(Debug)]
pub(crate) enum Settle {
    /// `INFO server` of the claim's node: when it started.
    Started(Job),
    /// The processes that set their claims again since the restart (`verve:returned`), on
    /// the claim's master of `run_id`.
    Returned {
        job: Job,
        could_have: Vec<String>,
        run_id: String,
    },
    /// The claim read while the instances that could have claimed it are awaited (after a
    /// restart): a claim settles the window as in `Elected`; none, the round waits, `why`.
    Awaited { job: Job, why: &'static str },
    /// The claim read, the lease tried and read.
    Elected(Job),
    /// An earlier process's claim taken over in this process's name.
    TookOver { job: Job, holder: String },
    /// The lease's expiry renewed.
    Leased(Job),
    /// The shards' marks and sizes: `claimed` when the claim is this instance's already.
    Tallied { job: Job, claimed: bool },
    /// An adopted window without ids: the lease let go.
    LeftAlone,
    /// The live instances.
    Live { job: Job, tally: Tally },
    /// The record of whose marks the count had written.
    Counted { job: Job, tally: Tally },
    /// The claim set if absent, read back, and the role of its node.
    Claiming { job: Job, count: u64 },
    /// A replica asked to hold the claim.
    Replicating { job: Job, count: u64 },
    /// The ids' expiry shortened, the count published, the lease let go.
    Retiring(u64),
    /// Whose marks another's count had, of this window.
    ByOther(WindowIndex),
}

impl Settle {
    /// The round's first transition, on the recorder's request.
    pub(crate) fn start(
        window: WindowIndex,
        overdue: bool,
        adopt: bool,
        memory: &Memory,
        cx: &Context,
    ) -> Next<Settle> {
        // After a Redis restart, give every live instance time to find Redis again (its
        // probes back off up to MAX_BACKOFF), then a heartbeat to announce itself and set its
        // report claims again: settled sooner, a window another instance reported just before
        // the restart would be reported twice (the chaos run of seed 101, host mode, did).
        let settled = cx.health.up_since().is_some_and(|t| {
            cx.time.instant().saturating_duration_since(t)
                >= cx.settings.heartbeat_ttl + MAX_BACKOFF
        });
        if !settled {
            return Next::done(Some(Settlement::NotYet(
                "redis answers again since less than a heartbeat and a probe backoff",
            )));
        }
        let job = Job {
            window,
            start: cx.clock.start_rfc3339(window),
            overdue,
            adopt,
        };
        // When the claim's server started, read once, where it decides something: a window
        // to adopt, one whose claim a restart found since its end may have taken, or one that
        // ended before this process first read the instances (a restart may have taken its
        // claim before this process could notice).
        let end = cx.clock.end(window);
        if adopt || cx.health.lost_data_since(end) || !memory.watched_since(end) {
            let mut started = commands::info(&[keys::reported(&job.start)]);
            started.push(commands::restarts(millis_since_epoch(end)));
            return Next::run(Settle::Started(job), started);
        }
        elect(job, cx)
    }
}

impl Round for Settle {
    type Outcome = Option<Settlement>;

    fn step(self, replies: Option<Vec<Value>>, memory: &mut Memory, cx: &Context) -> Next<Self> {
        // Letting the lease go and retiring the keys are best effort: what is left expires.
        let best_effort = matches!(self, Settle::LeftAlone | Settle::Retiring(_));
        match replies {
            None if !best_effort => Next::done(None),
            replies => self
                .on(&replies.unwrap_or_default(), memory, cx)
                .unwrap_or_else(|| Next::done(None)),
        }
    }
}

impl Settle {
    /// The transition on the replies; `None` where one is not what its command answers.
    fn on(self, values: &[Value], memory: &mut Memory, cx: &Context) -> Option<Next<Settle>> {
        let me = cx.me();
        Some(match self {
            Settle::Started(job) => {
                let started = cx
                    .data_started(&values[..1], &values[1], &[keys::reported(&job.start)])?
                    .pop()?;
                let end = cx.clock.end(job.window);
                // Unless this instance may hold the window's claim (an earlier process's, kept
                // beside the log, its report not written): the others have left the window to
                // it, and nobody else reports it (the simulator's seed 1785).
                if job.adopt && started >= end && !memory.may_hold_claim(job.window) {
                    return Some(Next::done(Some(Settlement::NotAdopted)));
                }
                if started < end || cx.time.now() >= started + cx.settings.claims_return_wait {
                    return Some(elect(job, cx));
                }
                // Defect 15 of docs/reliability.md: the claim's server restarted after the
                // window ended, so the claim may have gone with it while its claimant was
                // down, and the claimant's next process sets it again from its log's
                // directory. The instances that could have claimed it are waited for until
                // they say they set their claims again since the restart, or until
                // `claims_return_wait` after it; all of that time where this instance cannot
                // tell which could have.
                // Those this instance's processes have seen (kept beside the log): a claimant
                // cut off from Redis is not live when this process starts (the simulator's
                // seed 40, defect 31), nor after a gap in the reads (defect 39). Whether or
                // not this process noticed the restart itself (it may have learned it from
                // another's record, or from its log: the simulator's seed 403 found an
                // election that took itself for blind then, waiting twice the delay).
                let Some(could_have) = memory.seen.could_have_claimed(end) else {
                    let why = "redis restarted after the window ended, and this instance did \
                               not see which instances were live then: waiting for their claims";
                    return Some(claim_while_awaited(job, why));
                };
                if could_have.is_empty() {
                    return Some(elect(job, cx));
                }
                // Since the start's whole second, on the claim's master as it is now: a
                // process that set its claims again before a second restart within that
                // second named the master's earlier run id (defect 33).
                let run_id = replies::run_id(&values[0])?;
                let since = millis_since_epoch(started);
                let returned = commands::scored_since(&keys::returned(), since);
                let returned_to = Settle::Returned {
                    job,
                    could_have,
                    run_id,
                };
                Next::run(returned_to, vec![returned])
            }
            Settle::Returned {
                job,
                could_have,
                run_id,
            } => {
                let returned = members(&values[0])?;
                let back: Vec<&str> = returned
                    .iter()
                    .filter_map(|member| keys::returned_of(member))
                    .filter(|&(_, on)| on == run_id)
                    .map(|(process, _)| instance_of(process))
                    .collect();
                let awaited: Vec<String> = could_have
                    .into_iter()
                    .filter(|id| !back.contains(&id.as_str()))
                    .collect();
                if awaited.is_empty() {
                    return Some(elect(job, cx));
                }
                if memory.awaiting_logged.first(job.window) {
                    log::info!(
                        "window {}: redis restarted after it ended; waiting for {} to set \
                         their report claims again",
                        job.start,
                        awaited.join(", ")
                    );
                }
                let why = "redis restarted after the window ended: waiting for instances that \
                           could have claimed its report to set their claims again";
                claim_while_awaited(job, why)
            }
            Settle::Awaited { job, why } => match holder(&values[0])? {
                Some(holder) => claimed(job, holder, memory, cx),
                None => Next::done(Some(Settlement::NotYet(why))),
            },
            Settle::Elected(job) => match holder(&values[0])? {
                Some(holder) => claimed(job, holder, memory, cx),
                None if !held_by(&values[2], me)? => {
                    Next::done(Some(Settlement::NotYet("another instance holds the lease")))
                }
                None => {
                    let ttl_ms = millis(cx.settings.heartbeat_ttl);
                    let renew = keyed(&keys::lease(&job.start), "PEXPIRE", ttl_ms);
                    Next::run(Settle::Leased(job), vec![renew])
                }
            },
            Settle::TookOver { job, holder } => {
                // The others saw that claim and forgot their ids: should Redis have lost
                // some since, its count has them (the simulator's seed 11 reported fewer), so
                // the count reported here is at least that.
                if let Some(kept) = memory.counted.get(&job.window)
                    && kept.holder == holder
                    && memory
                        .unsure_claims
                        .get(&job.window)
                        .is_none_or(|unsure| unsure.count < kept.count)
                {
                    let kept = Tally::of(kept);
                    memory.unsure_claims.insert(job.window, kept);
                }
                tally(job, true, cx)
            }
            Settle::Leased(job) => tally(job, false, cx),
            Settle::Tallied { job, claimed } => {
                let tally = replies::tally(values)?;
                if !tally.marked.iter().any(|m| m == me) {
                    return Some(own_marks_lost(&job.start));
                }
                if claimed {
                    return Some(report_claimed(job, tally, memory, cx));
                }
                if job.adopt && tally.count == 0 && !memory.may_hold_claim(job.window) {
                    let let_go = keyed(&keys::lease(&job.start), "UNLINK", NO_ARGS);
                    return Some(Next::run(Settle::LeftAlone, vec![let_go]));
                }
                let since = cx
                    .now_ms()
                    .saturating_sub(millis(cx.settings.heartbeat_ttl));
                let live = commands::scored_since(&keys::instances(), since);
                Next::run(Settle::Live { job, tally }, vec![live])
            }
            Settle::Live { job, tally } => {
                let missing: Vec<String> = members(&values[0])?
                    .into_iter()
                    .filter(|i| !tally.marked.contains(i))
                    .collect();
                if !missing.is_empty() {
                    if !job.overdue {
                        return Some(Next::done(Some(Settlement::NotYet(
                            "waiting for the flush marks of live instances",
                        ))));
                    }
                    log::warn!(
                        "window {}: reporting after --report-max-delay-secs without the flush \
                         marks of {}",
                        job.start,
                        missing.join(", ")
                    );
                }
                report_claimed(job, tally, memory, cx)
            }
            Settle::Counted { job, tally } => claim::counted(job, tally, memory, cx),
            Settle::Claiming { job, count } => claim::claiming(job, count, values, memory, cx)?,
            Settle::Replicating { job, count } => {
                claim::replicating(&job, count, values, memory, cx)?
            }
            Settle::ByOther(window) => {
                let lost = record_lost(window, cx);
                Next::done(Some(match replies::counted_here(&values[0], me, lost)? {
                    CountedHere::Yes => Settlement::ByOther { counted_here: true },
                    CountedHere::No => Settlement::ByOther {
                        counted_here: false,
                    },
                    CountedHere::CannotTell => Settlement::LostSinceReport,
                }))
            }
            Settle::LeftAlone => Next::done(Some(Settlement::NotAdopted)),
            Settle::Retiring(count) => Next::done(Some(Settlement::Won(count))),
        })
    }
}

/// Reads the claim, and tries and reads the lease.
fn elect(job: Job, cx: &Context) -> Next<Settle> {
    let (lease, reported) = (keys::lease(&job.start), keys::reported(&job.start));
    let ttl_ms = millis(cx.settings.heartbeat_ttl);
    let elect = vec![
        keyed(&reported, "GET", NO_ARGS),
        keyed(&lease, "SET", (cx.me(), "NX", "PX", ttl_ms)),
        keyed(&lease, "GET", NO_ARGS),
    ];
    Next::run(Settle::Elected(job), elect)
}

/// Reads the claim while the instances that could have claimed it are awaited: one set
/// already (again, by its claimant, or by an election that waited) settles the window, so
/// that the window is not held up until they are all back (the simulator's seed 1717 waited
/// 35 s for a claimant cut off from Redis, and the amendment of another's report came past
/// its horizon).
fn claim_while_awaited(job: Job, why: &'static str) -> Next<Settle> {
    let read = vec![keyed(&keys::reported(&job.start), "GET", NO_ARGS)];
    Next::run(Settle::Awaited { job, why }, read)
}

/// The window's report is claimed by `holder`.
fn claimed(job: Job, holder: String, memory: &mut Memory, cx: &Context) -> Next<Settle> {
    let me = cx.me();
    let anothers = instance_of(&holder) != instance_of(me);
    let earlier_of_mine = holder != me && !anothers;
    if anothers || earlier_of_mine && job.adopt && !memory.made_by(job.window, &holder) {
        // Another instance's claim; or, of a window this process does not hold from its log,
        // an earlier process's of this instance that it does not know of (it wrote the
        // report, or its log is gone with it).
        memory.unsure_claims.remove(&job.window);
        let forgotten = if anothers {
            claim::forget(job.window, memory)
        } else {
            Vec::new()
        };
        by_other(&job).after(forgotten)
    } else if memory.report_written_by(job.window, &holder) {
        // An earlier process's of this instance that wrote the report, killed before the
        // window's segments went (the claim kept beside the log says so): reported.
        Next::done(Some(Settlement::ByOther { counted_here: true }))
    } else if earlier_of_mine {
        // An earlier process's of this instance, killed before it wrote the report: the
        // window's ids are in this process's log, whose segments go only once the report is
        // written, or, of a window it adopted, the claim is kept beside the log, so nobody
        // else reports it (the simulator's seeds 1 and 1227 found the window unreported):
        // this process takes the claim over.
        log::warn!(
            "window {}: claimed by {holder}, an earlier process of this instance that did not \
             write the report; reporting it here",
            job.start
        );
        let take_over = keyed(&keys::reported(&job.start), "SET", (me, "XX", "KEEPTTL"));
        Next::run(Settle::TookOver { job, holder }, vec![take_over])
    } else {
        // Ours, not on a replica yet when last tried: hold it again.
        tally(job, true, cx)
    }
}

fn tally(job: Job, claimed: bool, cx: &Context) -> Next<Settle> {
    let tally = commands::tally(&job.start, cx.settings.shards);
    Next::run(Settle::Tallied { job, claimed }, tally)
}

/// Another instance has claimed the report: whether its count had this instance's flush mark.
pub(super) fn by_other(job: &Job) -> Next<Settle> {
    Next::run(
        Settle::ByOther(job.window),
        vec![commands::counted(&job.start)],
    )
}

/// This instance's flush mark is missing from a shard, though the recorder asks to count only
/// once its marks are set: that shard's master lost writes it had acknowledged (a failover, a
/// restart), this instance's ids with them, and no error said so here.
pub(super) fn own_marks_lost<R: Round<Outcome = Option<Settlement>>>(start: &str) -> Next<R> {
    log::warn!(
        "window {start}: this instance's flush mark is gone from redis, and its ids with it; \
         pushing them again"
    );
    Next::done(Some(Settlement::NotYet(
        "this instance's flush mark is gone from redis: its ids go again",
    )))
    .after(vec![Effect::MarksLost])
}
