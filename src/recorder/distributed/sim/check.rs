//! What a simulated run must show, window by window: one report of the window (and amendments
//! at most), its final count equal to the number of distinct ids acknowledged in it, and no
//! count of an instance's own (`degraded`) that no fault explains. The exceptions, each tied
//! to the faults that explain it (the README's list of what the contract lets go): when a
//! Redis server lost data (a restart, a failover) after the window ended, within twice the
//! delay, an instance whose ids the report may lack cannot amend it and writes its own count
//! (`degraded`) instead; an instance stopped (SIGTERM) while Redis did not answer writes its
//! own counts of the windows it holds when `--shutdown-timeout-ms` runs out; ids that only
//! stopped processes held (acknowledged, or read back from a killed predecessor's log), held
//! only by Redis once those had left, are gone when Redis then loses data: the count may lack
//! as many; and an instance cut off from Redis when `--report-max-delay-secs` ran out writes
//! its own count while the others report theirs without its ids, so that every id is in one of
//! the reports (the reported count and the instances' own cover those acknowledged), but for
//! the ids of a window whose report it could not amend in time once back: late ids.

use std::time::{Duration, SystemTime};

use crate::report::{Mode, WindowReport};
use crate::window::WindowIndex;

use super::world::{Applied, FaultKind, Process, REPORT_MAX_DELAY, Run, SHUTDOWN_TIMEOUT, WINDOW};

/// What the checker found in a run.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    /// Simulated milliseconds the run took.
    pub(super) steps: u64,
    pub(super) windows: u64,
    /// Windows with an instance's own count beside the report, each explained by a loss.
    pub(super) admitted: Vec<String>,
    pub(super) wrong: Vec<String>,
}

/// How far an instance's sense of when a window begins or is overdue is from the checker's,
/// at most.
const SLACK: Duration = Duration::from_secs(1);

/// How long a Redis outage lasts at most (`world.rs`).
const LONGEST_OUTAGE: Duration = Duration::from_secs(4);

/// The fault that explains a degraded report of `window` by `instance`, if any: a data loss
/// after the window ended, or a stop of the instance after the window began while a Redis
/// outage may have lasted through its shutdown.
fn explaining(run: &Run, window: WindowIndex, instance: usize) -> Option<&Applied> {
    let (start, end) = (WINDOW.start(window), WINDOW.end(window));
    // A Redis outage; or an instance cut off from Redis, this one or one that may hold a
    // claim the shutdown's elections wait for after a restart (the 30-minute run's seed 1269).
    let outage_within = |from: SystemTime, to: SystemTime| {
        run.faults.iter().any(|f| match f.kind {
            FaultKind::RedisOutage => f.at + LONGEST_OUTAGE >= from && f.at <= to,
            FaultKind::CutOff(_, lasting) => f.at + lasting >= from && f.at <= to,
            _ => false,
        })
    };
    run.faults.iter().find(|f| match f.kind {
        FaultKind::RedisLostData => f.at >= end && f.at <= end + 2 * REPORT_MAX_DELAY,
        FaultKind::CutOff(i, lasting) => {
            // Cut off when the delay ran out on its clock (skewed, and stepped, by less
            // than a second).
            let overdue = end + REPORT_MAX_DELAY;
            i == instance && f.at <= overdue + SLACK && f.at + lasting + SLACK >= overdue
        }
        // After the window began on the instance's clock, which may be ahead of the
        // simulation's (the simulator's seed 1527: stopped 1 ms before it began).
        FaultKind::Stopped((i, _)) => {
            i == instance && f.at + SLACK >= start && outage_within(f.at, f.at + SHUTDOWN_TIMEOUT)
        }
        _ => false,
    })
}

/// The processes stopped before a Redis data loss that held ids (they acknowledged them, or
/// read them back from a killed predecessor's log), and those losses: an id that only such
/// processes held is gone, nobody holding it to push it again (the 30-minute run's seed
/// 1774).
fn left_to_redis(run: &Run) -> (impl Fn(&Process) -> bool + '_, Vec<&Applied>) {
    let mut losses = Vec::new();
    let mut stopped: Vec<Process> = Vec::new();
    for stop in &run.faults {
        let FaultKind::Stopped(process) = stop.kind else {
            continue;
        };
        let lost = run
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::RedisLostData && f.at > stop.at);
        let before = losses.len();
        losses.extend(lost);
        if losses.len() > before {
            stopped.push(process);
        }
    }
    losses.sort_by_key(|f| f.at);
    losses.dedup_by_key(|f| f.at);
    // A killed process's ids pass, with its log, to the instance's next processes: the first
    // of them that was stopped holds them and leaves them to Redis.
    let stops: Vec<Process> = run
        .faults
        .iter()
        .filter_map(|f| match f.kind {
            FaultKind::Stopped(process) => Some(process),
            _ => None,
        })
        .collect();
    let left_by = move |&(i, p): &Process| {
        stops
            .iter()
            .filter(|&&(j, q)| j == i && q >= p)
            .min_by_key(|&&(_, q)| q)
            .is_some_and(|holder| stopped.contains(holder))
    };
    (left_by, losses)
}

/// How many ids of `window` only processes that `gone` accepts acknowledged.
fn held_only_by(run: &Run, window: WindowIndex, gone: impl Fn(&Process) -> bool) -> usize {
    run.acked.get(&window).map_or(0, |ids| {
        ids.values().filter(|by| by.iter().all(&gone)).count()
    })
}

/// How long an instance back from a cut-off takes at most to amend a report: finding Redis
/// again (a probe backoff), a heartbeat and a backoff before it settles anything, its ids
/// pushed again, then an election and an amendment (about 100 ms) for each window it still
/// holds, one in flight at a time (a seed's 20, and those a restarted process read back:
/// seed 1055 came back 4.6 s before a horizon with 17 windows before it).
const RETURNING: Duration = Duration::from_secs(8);

/// The processes of the instances cut off from Redis until less than `RETURNING` before the
/// report's amend horizon (`--report-max-delay-secs` after its claim) ran out, from before
/// the window ended or, their ids pushed, from before Redis lost them and through the report
/// (`reported_at`; the simulator's seed 1957), and those cut-offs: the report could not be
/// amended in time, and the ids that only they held are late (`verve_late_ids_total`), in no
/// report.
fn cut_off_until_late(
    run: &Run,
    window: WindowIndex,
    reported_at: Option<SystemTime>,
) -> (impl Fn(&Process) -> bool + '_, Vec<&Applied>) {
    let end = WINDOW.end(window);
    let lost_between = |from: SystemTime, to: SystemTime| {
        run.faults
            .iter()
            .any(|f| f.kind == FaultKind::RedisLostData && f.at >= from && f.at <= to)
    };
    let cut_offs: Vec<&Applied> = run
        .faults
        .iter()
        .filter(|f| match f.kind {
            FaultKind::CutOff(_, lasting) => {
                let lost_then = reported_at.is_some_and(|reported| {
                    reported <= f.at + lasting && lost_between(f.at, reported)
                });
                (f.at <= end || lost_then) && f.at + lasting + RETURNING >= end + REPORT_MAX_DELAY
            }
            _ => false,
        })
        .collect();
    let instances: Vec<usize> = cut_offs
        .iter()
        .filter_map(|f| match f.kind {
            FaultKind::CutOff(i, _) => Some(i),
            _ => None,
        })
        .collect();
    (move |&(i, _): &Process| instances.contains(&i), cut_offs)
}

pub(super) fn check(run: &Run) -> Verdict {
    let mut verdict = Verdict {
        steps: run.steps,
        ..Verdict::default()
    };
    for window in run.windows.clone() {
        let start = WINDOW.start_rfc3339(window);
        let acked = run.acked.get(&window).map_or(0, |ids| ids.len() as u64);
        let (left, losses) = left_to_redis(run);
        let left_to_redis = held_only_by(run, window, &left);
        let reports: Vec<(usize, &WindowReport)> = run
            .reports
            .iter()
            .filter(|w| w.report.window_start == start)
            .map(|w| (w.instance, &w.report))
            .collect();
        let reported_at = run
            .reports
            .iter()
            .filter(|w| w.report.window_start == start)
            .filter(|w| w.report.mode == Mode::Distributed && !w.report.amended)
            .map(|w| w.at)
            .min();
        verdict.windows += 1;
        let first = reports
            .iter()
            .filter(|(_, r)| r.mode == Mode::Distributed && !r.amended)
            .count();
        let degraded: Vec<usize> = reports
            .iter()
            .filter(|(_, r)| r.mode == Mode::Degraded)
            .map(|&(i, _)| i)
            .collect();
        let count = reports
            .iter()
            .filter(|(_, r)| r.mode == Mode::Distributed)
            .map(|(_, r)| r.unique_requests)
            .max();
        let described = reports
            .iter()
            .map(|(i, r)| format!("instance {i}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        let said = format!("window {start} ({acked} distinct ids acknowledged): {described}");
        if acked == 0 && reports.is_empty() {
            continue;
        }
        if first > 1 {
            verdict
                .wrong
                .push(format!("reported {first} times: {said}"));
        } else if !degraded.is_empty() {
            let explained: Option<Vec<&Applied>> = degraded
                .iter()
                .map(|&i| explaining(run, window, i))
                .collect();
            let degraded_count: u64 = reports
                .iter()
                .filter(|(_, r)| r.mode == Mode::Degraded)
                .map(|(_, r)| r.unique_requests)
                .sum();
            match explained {
                // Cut off, an instance writes its own count, the others theirs without its
                // ids: every id is in one of the reports, but those only stopped processes
                // held, lost with Redis (seed 1142).
                Some(faults)
                    if faults
                        .iter()
                        .all(|f| matches!(f.kind, FaultKind::CutOff(..)))
                        && (count.unwrap_or(0) + degraded_count + (left_to_redis as u64)
                            < acked
                            || count.is_some_and(|c| c > acked)) =>
                {
                    verdict
                        .wrong
                        .push(format!("ids in no report, an instance cut off: {said}"));
                }
                Some(faults) => verdict.admitted.push(format!(
                    "{}: {said}",
                    faults
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                None => verdict.wrong.push(format!(
                    "an instance's own count, and no fault explains it: {said}"
                )),
            }
        } else if count != Some(acked) {
            // No report at all is a count of none: a window whose every id is gone so is
            // left alone by the processes that adopt windows.
            let short = acked.saturating_sub(count.unwrap_or(0));
            let (cut, cut_offs) = cut_off_until_late(run, window, reported_at);
            // Each held only by stopped processes, or cut off ones, or both (the simulator's
            // seed 56: ids of a process stopped before Redis lost them and of one cut off).
            let gone = held_only_by(run, window, |p| left(p) || cut(p));
            if count.is_none_or(|c| c < acked) && short <= gone as u64 {
                verdict.admitted.push(format!(
                    "{short} ids (at most {gone}) that only stopped processes acknowledged, \
                     lost with redis at {}, or instances cut off until too late to amend the \
                     report ({}): {said}",
                    losses
                        .iter()
                        .map(|f| humantime::format_rfc3339_millis(f.at).to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    cut_offs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else {
                verdict.wrong.push(format!("final count {count:?}: {said}"));
            }
        }
    }
    verdict
}
