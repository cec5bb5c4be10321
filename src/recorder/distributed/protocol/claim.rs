//! The claim of a window's report, once its count is read: the record of whose ids the count
//! holds, the reported marker set if absent (`SET NX`) and held by a replica (`WAIT`) before
//! the report is written, then the window's keys retired. The claim and its count are kept in
//! the log's directory and in this process's memory until its outcome is known.

use std::time::Duration;

use redis::Value;

use super::super::keys;
use super::super::nodes::Routed;
use super::commands::{NO_ARGS, about, keyed};
use super::memory::{Memory, Tally};
use super::replies::{held_by, number, replicas};
use super::settle::{Job, Settle, by_other};
use super::{Context, Effect, Next, Settlement, millis};
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// How long the winner of an election waits for a replica to hold the window's reported
/// marker before it writes the report (and tries again later when none does).
const WAIT_REPLICA_MS: u64 = 500;
/// How much longer a reported window's ids stay in Redis than its published count: an
/// amendment that finds the count finds the ids it was read with, even where the keys are
/// on masters whose expiries run a moment apart.
const AMEND_MARGIN: Duration = Duration::from_secs(5);

/// How the claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOutcome {
    Ours,
    Theirs,
    NotReplicated,
}

/// `Counted`: the count's record is written; the claim is made, read back, and its node's
/// role asked (whether a replica is to hold it).
pub(super) fn counted(job: Job, tally: Tally, memory: &mut Memory, cx: &Context) -> Next<Settle> {
    let count = tally.count;
    let kept = remember_counted(&job, tally, memory, cx);
    let reported = keys::reported(&job.start);
    let claim_it = vec![
        keyed(&reported, "SET", (cx.me(), "NX", "EX", cx.key_ttl_secs())),
        keyed(&reported, "GET", NO_ARGS),
        about(&reported, redis::cmd("ROLE")),
    ];
    Next::run(Settle::Claiming { job, count }, claim_it).after(kept)
}

/// `Claiming`: whose the claim is, and whether its node has a replica to wait for.
pub(super) fn claiming(
    job: Job,
    count: u64,
    values: &[Value],
    memory: &mut Memory,
    cx: &Context,
) -> Option<Next<Settle>> {
    if !held_by(&values[1], cx.me())? {
        return Some(claimed(&job, count, ClaimOutcome::Theirs, memory, cx));
    }
    if replicas(&values[2]) == 0 {
        return Some(claimed(&job, count, ClaimOutcome::Ours, memory, cx));
    }
    // Made: set again from now on should Redis lose it, whatever the replica's answer.
    let made = made(job.window, memory);
    let wait = about(
        &keys::reported(&job.start),
        redis::cmd("WAIT").arg(1).arg(WAIT_REPLICA_MS).to_owned(),
    );
    Some(Next::run(Settle::Replicating { job, count }, vec![wait]).after(made))
}

/// The claim of `window` is known made: so kept, in memory and in the log's directory.
fn made(window: WindowIndex, memory: &mut Memory) -> Vec<Effect> {
    memory
        .counted
        .get_mut(&window)
        .map(|claim| {
            claim.confirmed = true;
            Effect::KeepClaim(claim.clone())
        })
        .into_iter()
        .collect()
}

/// `Replicating`: whether a replica holds the claim.
pub(super) fn replicating(
    job: &Job,
    count: u64,
    values: &[Value],
    memory: &mut Memory,
    cx: &Context,
) -> Option<Next<Settle>> {
    let outcome = if number::<i64>(&values[0])? >= 1 {
        ClaimOutcome::Ours
    } else if job.overdue {
        // A window must be reported, and only a failover in this moment could report it
        // twice.
        log::warn!(
            "{}: no replica acknowledged the report claim within --report-max-delay-secs; \
             reporting all the same",
            keys::reported(&job.start).name
        );
        ClaimOutcome::Ours
    } else {
        ClaimOutcome::NotReplicated
    };
    Some(claimed(job, count, outcome, memory, cx))
}

/// Claims the window's report with the count read (the lease is held, or was when the claim
/// was made): first the record of whose ids the count holds whole, which others read it by.
pub(super) fn report_claimed(
    job: Job,
    tally: Tally,
    memory: &mut Memory,
    cx: &Context,
) -> Next<Settle> {
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
    let kept = if outcome == ClaimOutcome::Theirs {
        forget(job.window, memory)
    } else {
        made(job.window, memory)
    };
    let next = match outcome {
        ClaimOutcome::Ours => Next::run(Settle::Retiring(count), retire(&job.start, count, cx)),
        ClaimOutcome::Theirs => by_other(job),
        ClaimOutcome::NotReplicated => Next::done(Some(Settlement::Claimed(count))),
    };
    next.after(kept)
}

/// Another instance holds the claim of `window`: this process's, if it made one, is gone (a
/// failover lost it before a replica held it), and is not set again.
pub(super) fn forget(window: WindowIndex, memory: &mut Memory) -> Vec<Effect> {
    memory
        .counted
        .remove(&window)
        .map(|_| Effect::ForgetClaim(window))
        .into_iter()
        .collect()
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
