//! One round of settling a window's report. Exactly one instance writes each report: the
//! lease (`SET NX PX`) picks who waits for the flush marks and counts, and the reported
//! marker, claimed with `SET NX` and held by a replica (`WAIT`) before the report is written,
//! makes sure that a failover losing the lease cannot make a second reporter. The claim and
//! its count are kept in the log's directory and in this process's memory, then the window's
//! keys are retired.

use std::time::{Duration, UNIX_EPOCH};

use redis::Value;

use super::super::keys;
use super::super::nodes::Routed;
use super::commands::{self, NO_ARGS, about, keyed};
use super::memory::{Memory, Tally};
use super::replies::{self, held_by, holder, members, number, replicas};
use super::{Context, Effect, Next, Round, Settlement, instance_of, millis};
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// How long the winner of an election waits for a replica to hold the window's reported
/// marker before it writes the report (and tries again later when none does).
const WAIT_REPLICA_MS: u64 = 500;
/// How much longer a reported window's ids stay in Redis than its published count: an
/// amendment that finds the count finds the ids it was read with, even where the keys are
/// on masters whose expiries run a moment apart.
const AMEND_MARGIN: Duration = Duration::from_secs(5);
/// The longest Redis may have answered again before an election: every live instance's
/// probes back off up to this, then a heartbeat announces it and sets its claims again.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The request: which window, whether past `--report-max-delay-secs` (`overdue`), and
/// whether a window to adopt (from before this process started, no id of it held here).
#[derive(Debug)]
pub(crate) struct Job {
    window: WindowIndex,
    start: String,
    overdue: bool,
    adopt: bool,
}

/// Where a settle round stands: each state waits for the replies to the commands it was
/// entered with.
#[derive(Debug)]
pub(crate) enum Settle {
    /// `INFO server` of the claim's node: when it started.
    Started { job: Job, lost_since_end: bool },
    /// The processes that set their claims again since the restart (`verve:returned`).
    Returned { job: Job, could_have: Vec<String> },
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
    /// Whose marks another's count had.
    ByOther,
}

/// How the claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOutcome {
    Ours,
    Theirs,
    NotReplicated,
}

impl Settle {
    /// The round's first transition, on the recorder's request.
    pub(crate) fn start(
        window: WindowIndex,
        overdue: bool,
        adopt: bool,
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
        // to adopt, or one whose claim a restart found since its end may have taken.
        let lost_since_end = cx.health.lost_data_since(cx.clock.end(window));
        if adopt || lost_since_end {
            let info = commands::info(&[keys::reported(&job.start)]);
            return Next::run(
                Settle::Started {
                    job,
                    lost_since_end,
                },
                info,
            );
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
            Settle::Started {
                job,
                lost_since_end,
            } => {
                let started = replies::started(values, cx.time.now())?.pop()?;
                let end = cx.clock.end(job.window);
                if job.adopt && started >= end {
                    return Some(Next::done(Some(Settlement::NotAdopted)));
                }
                if !lost_since_end
                    || started < end
                    || cx.time.now() >= started + cx.settings.claims_return_wait
                {
                    return Some(elect(job, cx));
                }
                // Defect 15 of docs/reliability.md: the claim's server restarted after the
                // window ended, so the claim may have gone with it while its claimant was
                // down, and the claimant's next process sets it again from its log's
                // directory. The instances that could have claimed it are waited for until
                // they say they set their claims again since the restart, or until
                // `claims_return_wait` after it.
                let could_have = memory.seen_before_loss.could_have_claimed(end);
                if could_have.is_empty() {
                    return Some(elect(job, cx));
                }
                // The start's whole second: a process that set its claims again in that
                // second counts, whether before or after the restart within it.
                let since = millis(started.duration_since(UNIX_EPOCH).unwrap_or_default());
                let returned = commands::scored_since(&keys::returned(), since);
                Next::run(Settle::Returned { job, could_have }, vec![returned])
            }
            Settle::Returned { job, could_have } => {
                let returned = members(&values[0])?;
                let awaited: Vec<String> = could_have
                    .into_iter()
                    .filter(|id| !returned.iter().any(|p| instance_of(p) == id))
                    .collect();
                if awaited.is_empty() {
                    return Some(elect(job, cx));
                }
                if memory.awaiting_logged.replace(job.window) != Some(job.window) {
                    log::info!(
                        "window {}: redis restarted after it ended; waiting for {} to set \
                         their report claims again",
                        job.start,
                        awaited.join(", ")
                    );
                }
                Next::done(Some(Settlement::NotYet(
                    "redis restarted after the window ended: waiting for instances that could \
                     have claimed its report to set their claims again",
                )))
            }
            Settle::Elected(job) => match holder(&values[0])? {
                // Another instance's claim; or, of a window this process does not hold from
                // its log, an earlier process's of this instance (it wrote the report, or its
                // log is gone with it).
                Some(holder)
                    if holder != me && (job.adopt || instance_of(&holder) != instance_of(me)) =>
                {
                    memory.unsure_claims.remove(&job.window);
                    by_other(&job.start)
                }
                // An earlier process's of this instance that wrote the report, killed before
                // the window's segments went (the claim kept beside the log says so):
                // reported.
                Some(holder) if memory.report_written_by(job.window, &holder) => {
                    Next::done(Some(Settlement::ByOther { counted_here: true }))
                }
                // Ours, not on a replica yet when last tried: hold it again. Or an earlier
                // process's of this instance, killed before it wrote the report: the window's
                // ids are in this process's log, whose segments go only once the report is
                // written, so nobody else reports it (the simulator's seed 1 found the window
                // unreported): this process takes the claim over.
                Some(holder) if holder != me => {
                    log::warn!(
                        "window {}: claimed by {holder}, an earlier process of this instance \
                         that did not write the report; reporting it here",
                        job.start
                    );
                    let take_over =
                        keyed(&keys::reported(&job.start), "SET", (me, "XX", "KEEPTTL"));
                    Next::run(Settle::TookOver { job, holder }, vec![take_over])
                }
                Some(_) => tally(job, true, cx),
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
                    return Some(own_marks_lost(&job.start, memory));
                }
                if claimed {
                    return Some(report_claimed(job, tally, memory, cx));
                }
                if job.adopt && tally.count == 0 {
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
            Settle::Counted { job, tally } => {
                let count = tally.count;
                let kept = remember_counted(&job, tally, memory, cx);
                let reported = keys::reported(&job.start);
                let claim_it = vec![
                    keyed(&reported, "SET", (me, "NX", "EX", cx.key_ttl_secs())),
                    keyed(&reported, "GET", NO_ARGS),
                    about(&reported, redis::cmd("ROLE")),
                ];
                Next::run(Settle::Claiming { job, count }, claim_it).after(kept)
            }
            Settle::Claiming { job, count } => {
                if !held_by(&values[1], me)? {
                    return Some(claimed(&job, count, ClaimOutcome::Theirs, memory, cx));
                }
                if replicas(&values[2]) == 0 {
                    return Some(claimed(&job, count, ClaimOutcome::Ours, memory, cx));
                }
                let wait = about(
                    &keys::reported(&job.start),
                    redis::cmd("WAIT").arg(1).arg(WAIT_REPLICA_MS).to_owned(),
                );
                Next::run(Settle::Replicating { job, count }, vec![wait])
            }
            Settle::Replicating { job, count } => {
                let outcome = if number::<i64>(&values[0])? >= 1 {
                    ClaimOutcome::Ours
                } else if job.overdue {
                    // A window must be reported, and only a failover in this moment could
                    // report it twice.
                    log::warn!(
                        "{}: no replica acknowledged the report claim within \
                         --report-max-delay-secs; reporting all the same",
                        keys::reported(&job.start).name
                    );
                    ClaimOutcome::Ours
                } else {
                    ClaimOutcome::NotReplicated
                };
                claimed(&job, count, outcome, memory, cx)
            }
            Settle::ByOther => Next::done(Some(Settlement::ByOther {
                counted_here: replies::counted_here(&values[0], me)?,
            })),
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

fn tally(job: Job, claimed: bool, cx: &Context) -> Next<Settle> {
    let tally = commands::tally(&job.start, cx.settings.shards);
    Next::run(Settle::Tallied { job, claimed }, tally)
}

/// Another instance has claimed the report: whether its count had this instance's flush mark.
fn by_other(start: &str) -> Next<Settle> {
    Next::run(Settle::ByOther, vec![commands::counted(start)])
}

/// This instance's flush mark is missing from a shard, though the recorder asks to count only
/// once its marks are set: that shard's master lost writes it had acknowledged (a failover, a
/// restart), this instance's ids with them, and no error said so here.
pub(super) fn own_marks_lost<R: Round<Outcome = Option<Settlement>>>(
    start: &str,
    memory: &mut Memory,
) -> Next<R> {
    log::warn!(
        "window {start}: this instance's flush mark is gone from redis, and its ids with it; \
         pushing them again"
    );
    memory.note_loss();
    Next::done(Some(Settlement::NotYet(
        "this instance's flush mark is gone from redis: its ids go again",
    )))
    .after(vec![Effect::MarksLost])
}

/// Claims the window's report with the count read (the lease is held, or was when the claim
/// was made): first the record of whose ids the count holds whole, which others read it by.
fn report_claimed(job: Job, tally: Tally, memory: &mut Memory, cx: &Context) -> Next<Settle> {
    // A claim of this window whose outcome is not known counted this: the larger is
    // reported (defect 14).
    let tally = match memory.unsure_claims.get(&job.window) {
        Some(unsure) if unsure.count > tally.count => {
            log::warn!(
                "window {}: counting {} ids, as when this instance last claimed its report: \
                 redis holds {} now",
                job.start,
                unsure.count,
                tally.count
            );
            unsure.clone()
        }
        _ => tally,
    };
    // Whose ids the count holds whole, written before the claim that others read it by.
    let record = keyed(
        &keys::counted(&job.start),
        "SET",
        (tally.marked.join("\n"), "EX", cx.key_ttl_secs()),
    );
    Next::run(Settle::Counted { job, tally }, vec![record])
}

/// The count's record is written: the claim is remembered, with its tally as the floor of
/// the next rounds' until its outcome is known (Redis may fail again on the way), claims
/// past the keys' expiry are forgotten, and the claim about to be made is kept in the log's
/// directory (`<w>.claiming`).
fn remember_counted(job: &Job, tally: Tally, memory: &mut Memory, cx: &Context) -> Vec<Effect> {
    let now = cx.time.now();
    let live = |w: WindowIndex| cx.clock.end(w) + cx.settings.key_ttl > now;
    memory.unsure_claims.retain(|&w, _| live(w));
    let mut effects = Vec::new();
    memory.counted.retain(|&w, _| {
        let live = live(w);
        if !live {
            effects.push(Effect::ForgetClaim(w));
        }
        live
    });
    let claim = Claim {
        window: job.window,
        holder: cx.me().to_owned(),
        count: tally.count,
        marks: tally.marked.join("\n"),
        made_at: now,
        confirmed: false,
        report_written: false,
    };
    effects.push(Effect::KeepClaim(claim.clone()));
    memory.counted.insert(job.window, claim);
    memory.unsure_claims.insert(job.window, tally);
    effects
}

/// The claim's outcome: the claim kept (made) or deleted (another's) in the log's directory;
/// then the keys retired and the report won, or whose marks the other's count had, or the
/// claim to be held by a replica in a later round.
fn claimed(
    job: &Job,
    count: u64,
    outcome: ClaimOutcome,
    memory: &mut Memory,
    cx: &Context,
) -> Next<Settle> {
    // A claim not on a replica yet is there for the others all the same: they leave the
    // window and forget their ids, so its count stays the floor of the next rounds' (the
    // simulator's seed 11 reported fewer after Redis lost ids between two rounds).
    if outcome != ClaimOutcome::NotReplicated {
        memory.unsure_claims.remove(&job.window);
    }
    let kept = memory.counted.get(&job.window).map(|claim| {
        if outcome == ClaimOutcome::Theirs {
            Effect::ForgetClaim(job.window)
        } else {
            Effect::KeepClaim(Claim {
                confirmed: true,
                ..claim.clone()
            })
        }
    });
    let next = match outcome {
        ClaimOutcome::Ours => Next::run(Settle::Retiring(count), retire(&job.start, count, cx)),
        ClaimOutcome::Theirs => by_other(&job.start),
        ClaimOutcome::NotReplicated => Next::done(Some(Settlement::Claimed(count))),
    };
    next.after(kept.into_iter().collect())
}

/// Once a window's report is claimed its lease is read no more: it goes now. Its ids and
/// their flush marks (which amendments read) stay for the amend horizon and then expire,
/// rather than at the keys' expiry, so that Redis holds about one window more than the two
/// being counted and reported; the count stays as long, for amendments to compare with. The
/// claim stays until its expiry, so that nobody reports the window again.
fn retire(start: &str, count: u64, cx: &Context) -> Vec<Routed> {
    let horizon = millis(cx.settings.amend_horizon);
    let ids_ttl = horizon + millis(AMEND_MARGIN);
    let mut cmds: Vec<_> = keys::id_shards(start, cx.settings.shards)
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
    cmds
}
