//! The checker: every window's reports (stats logs of every incarnation) and Kafka records
//! against what each request was answered, in the light of the faults as applied.
//!
//! Per window: one `distributed` report whose count lies between the distinct ids surely
//! answered `ok` in it and those plus the ids whose fate or window is unsure (a batch that
//! crossed a boundary, a request without an answer); `degraded` reports only from instances a
//! fault cut off Redis, each with that instance's own count; the ids answered `ok` only by a
//! degraded instance are in its report. Ids may be missing only where the contract admits it:
//! answered by an instance just before it was killed (SIGKILL), before it pushed them, or held only
//! by Redis after their instance left and Redis lost them (restarted empty, a master killed).
//! Every report has its Kafka record, once; a record may be missing only when its reporter
//! was killed (SIGKILL).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::load::{Answered, Batch};
use super::schedule::FaultKind;
use super::system::{Applied, Exit, GRACE, Incarnation, MAX_DELAY, WINDOW_SECS};
use crate::common::{Report, window_of};

/// After a fault that cut an instance off Redis ends, how long it may take to be in step
/// again: a reconnection backoff, a heartbeat, a settle round.
const RECOVERY: Duration = Duration::from_secs(3);
/// Ids answered this long before a SIGKILL may not have reached Redis yet.
const KILL_BOUND: Duration = Duration::from_secs(1);
/// How far back a window may still be open (unreported): its length, the grace, the delay.
const OPEN_SPAN: Duration = Duration::from_secs(WINDOW_SECS)
    .saturating_add(GRACE)
    .saturating_add(MAX_DELAY);

/// The figures of a run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) requests: usize,
    pub(crate) ok: usize,
    pub(crate) refused: usize,
    pub(crate) unanswered: usize,
    pub(crate) windows: usize,
    pub(crate) distributed_reports: usize,
    pub(crate) degraded_reports: usize,
    pub(crate) kafka_records: usize,
    /// Ids missing as the contract admits (SIGKILL, Redis losing a departed instance's ids).
    pub(crate) lost_admitted: usize,
    /// How long before its SIGKILL the oldest admitted lost id was answered.
    pub(crate) worst_loss_age: Duration,
    /// Windows unreported because an instance was killed (SIGKILL) while it could have been
    /// claiming their report.
    pub(crate) unreported_admitted: usize,
    /// Kafka records missing because their reporter was killed (SIGKILL) before delivery, or
    /// stopped (SIGTERM) while the broker could not take them.
    pub(crate) kafka_lost_admitted: usize,
    pub(crate) lost: usize,
    pub(crate) doubled: usize,
    pub(crate) worst_delay: Duration,
}

/// An incarnation's answers in one window.
#[derive(Default)]
struct InWindow {
    /// Answered `ok` surely in this window, and when.
    sure: HashMap<i64, SystemTime>,
    /// Maybe counted in this window.
    maybe: HashSet<i64>,
}

/// Everything the checker reads.
pub(crate) struct Run<'a> {
    pub(crate) batches: &'a [Batch],
    pub(crate) incarnations: &'a [Incarnation],
    pub(crate) applied: &'a [Applied],
    pub(crate) kafka: &'a [serde_json::Value],
    /// The windows checked: every one the load covered whole.
    pub(crate) windows: std::ops::RangeInclusive<u64>,
}

fn window_end(w: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs((w + 1) * WINDOW_SECS)
}

fn window_start(w: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(w * WINDOW_SECS)
}

/// The windows' answers, by window and incarnation; counts the answers into `tally`.
fn answers_by_window(
    run: &Run<'_>,
    tally: &mut Tally,
    defects: &mut Vec<String>,
) -> BTreeMap<u64, BTreeMap<usize, InWindow>> {
    let mut by_window: BTreeMap<u64, BTreeMap<usize, InWindow>> = BTreeMap::new();
    for batch in run.batches {
        let (w0, w1) = (
            window_of(batch.sent, WINDOW_SECS),
            window_of(batch.done, WINDOW_SECS),
        );
        for &(id, answered) in &batch.answers {
            tally.requests += 1;
            match answered {
                Answered::Ok => {
                    tally.ok += 1;
                    if w0 == w1 {
                        let entry = by_window.entry(w0).or_default();
                        let sure = &mut entry.entry(batch.incarnation).or_default().sure;
                        sure.entry(id).or_insert(batch.done);
                    } else {
                        for w in w0..=w1 {
                            let entry = by_window.entry(w).or_default();
                            entry.entry(batch.incarnation).or_default().maybe.insert(id);
                        }
                    }
                }
                Answered::Unknown => {
                    tally.unanswered += 1;
                    for w in w0..=w1 {
                        let entry = by_window.entry(w).or_default();
                        entry.entry(batch.incarnation).or_default().maybe.insert(id);
                    }
                }
                Answered::Refused => tally.refused += 1,
                Answered::Other(status) => {
                    defects.push(format!("id {id}: answered {status}"));
                }
            }
        }
    }
    by_window
}

/// Whether a fault cut `instance` off Redis at some moment of `from..=to` (or so shortly
/// before that it was not in step again).
fn cut_off(applied: &[Applied], instance: usize, from: SystemTime, to: SystemTime) -> bool {
    applied.iter().any(|a| {
        a.kind.cuts_off_redis()
            && a.touches(instance)
            && a.began <= to
            && a.ended + RECOVERY >= from
    })
}

/// The earliest moment from which ids answered by an instance killed (SIGKILL) at `killed` may be
/// missing: a second before, or a second before the start of the cut-off from Redis it was
/// in then; for a cut-off in which Redis lost what it held (restarted empty), the start of
/// the oldest window still open then, whose ids the instance had not pushed again.
fn kill_floor(applied: &[Applied], instance: usize, killed: SystemTime) -> SystemTime {
    let mut floor = killed - KILL_BOUND;
    loop {
        let earlier = applied
            .iter()
            .filter(|a| a.kind.cuts_off_redis() && a.touches(instance))
            .filter(|a| a.began <= killed && a.ended + RECOVERY >= floor)
            .map(|a| {
                a.began
                    - if a.kind.loses_redis_data() {
                        OPEN_SPAN
                    } else {
                        KILL_BOUND
                    }
            })
            .filter(|&from| from < floor)
            .min();
        match earlier {
            Some(t) if t < floor => floor = t,
            _ => return floor,
        }
    }
}

/// How an incarnation left, worked out once for all its ids.
struct Departure {
    at: SystemTime,
    /// Killed (SIGKILL): ids it answered from then on may not have reached Redis.
    kill_floor: Option<SystemTime>,
    /// When Redis first lost data after it left.
    redis_lost: Option<SystemTime>,
}

fn departures(run: &Run<'_>) -> Vec<Option<Departure>> {
    run.incarnations
        .iter()
        .map(|inc| {
            let (at, how) = inc.exited?;
            let redis_lost = run
                .applied
                .iter()
                .filter(|a| a.kind.loses_redis_data() && a.began >= at)
                .map(|a| a.began)
                .min();
            Some(Departure {
                at,
                kill_floor: (how == Exit::Kill).then(|| kill_floor(run.applied, inc.instance, at)),
                redis_lost,
            })
        })
        .collect()
}

/// Why an id answered `ok` by an incarnation (that left as `departure` says) at `at` may be
/// missing from a report written at `reported`, if the contract admits it: `Some(age)` for a
/// SIGKILL, where `age` is how long before the kill it was answered; `Some(ZERO)` for ids
/// Redis lost after their instance left.
fn admitted_loss(
    departure: Option<&Departure>,
    at: SystemTime,
    reported: SystemTime,
) -> Option<Duration> {
    let departure = departure?;
    if departure.kill_floor.is_some_and(|floor| at >= floor) {
        return Some(departure.at.duration_since(at).unwrap_or_default());
    }
    departure
        .redis_lost
        .is_some_and(|lost| lost <= reported)
        .then_some(Duration::ZERO)
}

/// Checks a run; returns its figures and every defect found.
pub(crate) fn check(run: &Run<'_>) -> (Tally, Vec<String>) {
    let mut tally = Tally::default();
    let mut defects = Vec::new();
    let by_window = answers_by_window(run, &mut tally, &mut defects);
    let departures = departures(run);
    let reports: Vec<(usize, &Report)> = run
        .incarnations
        .iter()
        .enumerate()
        .flat_map(|(n, inc)| inc.reports.iter().map(move |r| (n, r)))
        .collect();
    let empty = BTreeMap::new();
    for w in run.windows.clone() {
        tally.windows += 1;
        let answers = by_window.get(&w).unwrap_or(&empty);
        let of_w: Vec<(usize, &Report)> = reports
            .iter()
            .filter(|(_, r)| r.start_secs() == w * WINDOW_SECS)
            .copied()
            .collect();
        check_window(
            run,
            &departures,
            w,
            answers,
            &of_w,
            &mut tally,
            &mut defects,
        );
    }
    check_kafka(run, &reports, &mut tally, &mut defects);
    (tally, defects)
}

fn check_window(
    run: &Run<'_>,
    departures: &[Option<Departure>],
    w: u64,
    answers: &BTreeMap<usize, InWindow>,
    reports: &[(usize, &Report)],
    tally: &mut Tally,
    defects: &mut Vec<String>,
) {
    let Some(first) = reports.iter().map(|(_, r)| r.written_at).min() else {
        // The one window the contract lets go unreported: its reporter died between claiming
        // the report and writing it.
        let settled_from = window_end(w) + GRACE;
        let reporter_killed = run.incarnations.iter().any(|inc| {
            matches!(inc.exited, Some((at, Exit::Kill)) if at >= settled_from && at <= settled_from + MAX_DELAY + RECOVERY)
        });
        if reporter_killed {
            tally.unreported_admitted += 1;
        } else {
            defects.push(format!("window {w}: no report"));
        }
        return;
    };
    tally.worst_delay = tally
        .worst_delay
        .max(first.duration_since(window_end(w)).unwrap_or_default());
    let (degraded, distributed): (Vec<_>, Vec<_>) =
        reports.iter().partition(|(_, r)| r.mode == "degraded");
    tally.degraded_reports += degraded.len();
    tally.distributed_reports += distributed.len();
    if let Some((_, r)) = reports
        .iter()
        .find(|(_, r)| r.mode != "degraded" && r.mode != "distributed")
    {
        defects.push(format!("window {w}: a report in mode {}", r.mode));
    }
    if distributed.len() > 1 || (distributed.is_empty() && degraded.is_empty()) {
        defects.push(format!(
            "window {w}: {} distributed reports: {reports:?}",
            distributed.len()
        ));
    }
    // Each degraded report: allowed by a fault, and this incarnation's own count.
    let mut covered: HashSet<i64> = HashSet::new();
    for &(n, r) in &degraded {
        let instance = run.incarnations[n].instance;
        if !cut_off(run.applied, instance, window_start(w), r.written_at) {
            defects.push(format!(
                "window {w}: instance {instance} reported degraded with Redis reachable"
            ));
        }
        let own = answers.get(&n);
        let sure = own.map_or(0, |a| a.sure.len());
        let upper = own.map_or(0, |a| {
            a.sure.keys().chain(&a.maybe).collect::<HashSet<_>>().len()
        });
        let count = r.unique_requests as usize;
        if count < sure || count > upper {
            defects.push(format!(
                "window {w}: instance {instance}'s degraded count {count} is not its own \
                 ({sure}..={upper})"
            ));
            tally.lost += sure.saturating_sub(count);
            tally.doubled += count.saturating_sub(upper);
        }
        if let Some(a) = own {
            covered.extend(a.sure.keys());
        }
    }
    // The distributed count: every id answered `ok` (but those a degraded report holds, or
    // the contract admits missing), nothing more than what may have been counted.
    let reported_at = distributed
        .first()
        .map_or(SystemTime::now(), |(_, r)| r.written_at);
    let count = distributed
        .first()
        .map_or(0, |(_, r)| r.unique_requests as usize);
    let mut sure: HashMap<i64, Vec<(usize, SystemTime)>> = HashMap::new();
    let mut upper: HashSet<i64> = HashSet::new();
    for (&n, a) in answers {
        for (&id, &at) in &a.sure {
            sure.entry(id).or_default().push((n, at));
            upper.insert(id);
        }
        upper.extend(&a.maybe);
    }
    let mut ages = Vec::new();
    let mut need: usize = 0;
    let mut to_cover: usize = 0;
    for (id, answered) in &sure {
        if covered.contains(id) {
            continue;
        }
        to_cover += 1;
        let admitted: Option<Vec<Duration>> = answered
            .iter()
            .map(|&(n, at)| admitted_loss(departures[n].as_ref(), at, reported_at))
            .collect();
        match admitted {
            Some(a) => ages.push(a.into_iter().min().unwrap_or_default()),
            None => need += 1,
        }
    }
    let lost = to_cover.saturating_sub(count);
    if count < need {
        defects.push(format!(
            "window {w}: counted {count}, but {need} ids answered ok must be in it \
             ({} more may be missing as admitted)",
            ages.len()
        ));
        tally.lost += need - count;
    }
    let admitted = lost.min(ages.len());
    tally.lost_admitted += admitted;
    if admitted > 0 {
        ages.sort();
        tally.worst_loss_age = tally.worst_loss_age.max(ages[admitted - 1]);
    }
    let upper = upper.len();
    if count > upper {
        defects.push(format!(
            "window {w}: counted {count}, more than the {upper} ids that may be in it"
        ));
        tally.doubled += count - upper;
    }
}

/// Whether an incarnation's undelivered records are a loss the contract admits: it was
/// killed (SIGKILL) with them in memory, or stopped (SIGTERM) while the broker could not take
/// them within `--shutdown-timeout-ms`, which it says in its log.
fn kafka_loss_admitted(inc: &Incarnation) -> bool {
    match inc.exited {
        Some((_, Exit::Kill)) => true,
        Some(_) => inc
            .log
            .iter()
            .any(|l| l.contains("reports not delivered at shutdown")),
        None => false,
    }
}

/// Every report has its record, once, unless its reporter was killed (SIGKILL) before
/// delivery or stopped while the broker was unreachable.
fn check_kafka(
    run: &Run<'_>,
    reports: &[(usize, &Report)],
    tally: &mut Tally,
    defects: &mut Vec<String>,
) {
    tally.kafka_records = run.kafka.len();
    let key = |start: &str, instance: &str, count: u64, mode: &str, partial: bool| {
        format!("{start} {instance} {count} {mode} {partial}")
    };
    let mut records: HashMap<String, usize> = HashMap::new();
    for record in run.kafka {
        let k = key(
            record["window_start"].as_str().unwrap_or_default(),
            record["instance"].as_str().unwrap_or_default(),
            record["unique_requests"].as_u64().unwrap_or_default(),
            record["mode"].as_str().unwrap_or_default(),
            record["partial"].as_bool().unwrap_or_default(),
        );
        *records.entry(k).or_default() += 1;
    }
    for &(n, r) in reports {
        let inc = &run.incarnations[n];
        let k = key(
            &r.window_start,
            &format!("chaos-{}", inc.instance),
            r.unique_requests,
            &r.mode,
            r.partial,
        );
        match records.get_mut(&k) {
            Some(left) if *left > 0 => *left -= 1,
            _ if kafka_loss_admitted(inc) => tally.kafka_lost_admitted += 1,
            _ => defects.push(format!("no Kafka record of the report {r:?}")),
        }
    }
    for (k, left) in records {
        if left > 0 {
            defects.push(format!("{left} Kafka records too many: {k}"));
            tally.doubled += left;
        }
    }
}

/// The run's table, in Markdown.
pub(crate) fn table(
    seed: u64,
    mode: &str,
    span: Duration,
    applied: &[Applied],
    tally: &Tally,
) -> String {
    let mut kinds: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for a in applied {
        *kinds.entry(a.kind).or_default() += 1;
    }
    let faults: Vec<String> = kinds
        .iter()
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    let mut out = String::new();
    let rows = [
        ("seed", seed.to_string()),
        ("mode", mode.to_owned()),
        ("load", format!("{} s", span.as_secs())),
        (
            "faults",
            format!("{}: {}", applied.len(), faults.join(", ")),
        ),
        ("requests", tally.requests.to_string()),
        ("ok", tally.ok.to_string()),
        ("refused (503)", tally.refused.to_string()),
        (
            "unanswered (connection failed)",
            tally.unanswered.to_string(),
        ),
        ("windows", tally.windows.to_string()),
        (
            "reports (distributed + degraded)",
            format!("{} + {}", tally.distributed_reports, tally.degraded_reports),
        ),
        ("Kafka records", tally.kafka_records.to_string()),
        (
            "lost, admitted (SIGKILL or Redis data loss after the instance left)",
            format!(
                "{} ids, oldest {} ms before its SIGKILL",
                tally.lost_admitted,
                tally.worst_loss_age.as_millis()
            ),
        ),
        (
            "windows unreported, their reporter killed (SIGKILL) between claim and report",
            tally.unreported_admitted.to_string(),
        ),
        (
            "Kafka records lost: reporter killed (SIGKILL), or stopped while the broker was unreachable (logged)",
            tally.kafka_lost_admitted.to_string(),
        ),
        ("lost", tally.lost.to_string()),
        ("doubled", tally.doubled.to_string()),
        (
            "worst report delay (after the window's end)",
            format!("{} ms", tally.worst_delay.as_millis()),
        ),
    ];
    out.push_str("| | |\n|---|---|\n");
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    out
}
