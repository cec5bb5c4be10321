//! The checker's self-test: a run without a fault passes, and each defect planted in it (an
//! id missing from Redis, an id Redis holds that was never sent, the two at once so that the
//! count is right, a count short or over, a missing Kafka record, a second report, a window
//! unreported, callbacks not received or unexplained) fails with a message naming its window
//! and, where there is one, its id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use verve::config::Durability;

use super::check::{Run, check, check_callbacks};
use super::load::{Answered, Batch};
use super::members::SeenInRedis;
use super::system::{Exit, Incarnation, WINDOW_SECS};
use crate::common::Report;

/// The window of the planted run.
const W: u64 = 900_000_000;

/// A run of two instances: the first answered ids 1 to 10 in window `W`, the second 11 to 20;
/// the first reported 20, once, with its Kafka record; Redis held the 20.
struct Planted {
    standalone: bool,
    batches: Vec<Batch>,
    incarnations: Vec<Incarnation>,
    kafka: Vec<serde_json::Value>,
    in_redis: SeenInRedis,
}

fn at(secs_into_w: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(W * WINDOW_SECS) + Duration::from_secs_f64(secs_into_w)
}

fn report(count: u64) -> Report {
    Report {
        written_at: at(2.5),
        window_start: humantime::format_rfc3339_seconds(at(0.0)).to_string(),
        window_secs: WINDOW_SECS,
        unique_requests: count,
        mode: "distributed".to_owned(),
        partial: false,
        recovered: false,
        amended: false,
    }
}

fn record_of(report: &Report, instance: usize) -> serde_json::Value {
    serde_json::json!({
        "window_start": report.window_start,
        "window_secs": WINDOW_SECS,
        "unique_requests": report.unique_requests,
        "mode": report.mode,
        "instance": format!("chaos-{instance}"),
        "partial": false,
    })
}

impl Planted {
    fn clean() -> Planted {
        let batch = |incarnation: usize, ids: std::ops::RangeInclusive<i64>| Batch {
            incarnation,
            sent: at(0.2),
            done: at(0.3),
            answers: ids.map(|id| (id, Answered::Ok)).collect(),
            with_callback: false,
        };
        let incarnation = |instance: usize, reports: Vec<Report>| Incarnation {
            instance,
            pid: i32::try_from(instance).unwrap() + 1,
            exited: None,
            reports,
            log: Vec::new(),
            callback_log: Vec::new(),
        };
        let reported = report(20);
        Planted {
            standalone: false,
            batches: vec![batch(0, 1..=10), batch(1, 11..=20)],
            kafka: vec![record_of(&reported, 0)],
            incarnations: vec![incarnation(0, vec![reported]), incarnation(1, Vec::new())],
            in_redis: SeenInRedis {
                ids: std::iter::once((W, (1..=20).collect())).collect(),
                claimed_by: std::iter::once((W, "chaos-0/1-0".to_owned())).collect(),
            },
        }
    }

    fn run(&self) -> Run<'_> {
        Run {
            batches: &self.batches,
            incarnations: &self.incarnations,
            applied: &[],
            kafka: &self.kafka,
            windows: W..=W,
            durability: Durability::Process,
            standalone: self.standalone,
            in_redis: &self.in_redis,
        }
    }

    fn defects(&self) -> Vec<String> {
        check(&self.run()).1
    }

    fn redis_holds(mut self, ids: &[i64]) -> Planted {
        self.in_redis.ids.insert(W, ids.iter().copied().collect());
        self
    }

    fn reported(mut self, count: u64) -> Planted {
        self.incarnations[0].reports = vec![report(count)];
        self.kafka = vec![record_of(&report(count), 0)];
        self
    }
}

/// Asserts that one defect names the window and every one of `ids`.
fn assert_named(defects: &[String], what: &str, ids: &[i64]) {
    let named = defects.iter().any(|d| {
        d.contains(&format!("window {W}"))
            && d.contains(what)
            && ids.iter().all(|id| d.contains(&id.to_string()))
    });
    assert!(named, "no defect `{what}` naming {ids:?}: {defects:#?}");
}

#[test]
fn a_clean_run_passes() {
    assert_eq!(Planted::clean().defects(), Vec::<String>::new());
}

#[test]
fn an_id_missing_from_redis_fails_naming_it() {
    let without_7: Vec<i64> = (1..=20).filter(|&id| id != 7).collect();
    let defects = Planted::clean().redis_holds(&without_7).defects();
    assert_named(&defects, "never in Redis", &[7]);
}

#[test]
fn an_id_redis_holds_that_was_never_sent_fails_naming_it() {
    let with_21: Vec<i64> = (1..=21).collect();
    let defects = Planted::clean()
        .redis_holds(&with_21)
        .reported(21)
        .defects();
    assert_named(&defects, "never sent", &[21]);
    assert_named(&defects, "counted 21, more than the 20", &[]);
}

#[test]
fn a_loss_and_a_double_that_cancel_in_the_count_fail_by_id() {
    let swapped: Vec<i64> = (1..=20).filter(|&id| id != 7).chain([99]).collect();
    let defects = Planted::clean().redis_holds(&swapped).defects();
    assert_named(&defects, "never in Redis", &[7]);
    assert_named(&defects, "never sent", &[99]);
}

#[test]
fn a_count_short_of_the_ids_answered_ok_fails() {
    let defects = Planted::clean().reported(19).defects();
    assert_named(&defects, "counted 19, but 20", &[]);
}

#[test]
fn a_missing_kafka_record_fails() {
    let mut planted = Planted::clean();
    planted.kafka.clear();
    let missing = |planted: &Planted| {
        planted
            .defects()
            .iter()
            .any(|d| d.contains("no Kafka record") && d.contains("unique_requests: 20"))
    };
    assert!(missing(&planted));
    // Killed (SIGKILL) before its log said the record was delivered: a loss admitted.
    planted.incarnations[0].exited = Some((at(2.6), Exit::Kill));
    assert!(!missing(&planted));
    // Its log said delivered: the broker lost it, which nothing admits.
    let start = planted.incarnations[0].reports[0].window_start.clone();
    planted.incarnations[0].log.push(format!(
        "kafka: delivered {start} to verve-unique-counts partition 0 offset 3"
    ));
    assert!(missing(&planted));
}

#[test]
fn a_second_report_fails() {
    let mut planted = Planted::clean();
    planted.incarnations[1].reports.push(report(20));
    planted.kafka.push(record_of(&report(20), 1));
    let defects = planted.defects();
    assert_named(&defects, "2 distributed reports", &[]);
    // Its ids are its window's: no id is wrong, the report is.
    assert!(!defects.iter().any(|d| d.contains("Redis")), "{defects:#?}");
}

#[test]
fn a_window_without_a_report_fails_unless_its_claimant_was_killed() {
    let mut planted = Planted::clean();
    planted.incarnations[0].reports.clear();
    planted.kafka.clear();
    assert_named(&planted.defects(), "no report", &[]);
    // The process that claimed it (pid 1: the first instance) was killed with SIGKILL: the
    // window the contract lets go. Another process's kill excuses nothing.
    planted.incarnations[1].exited = Some((at(2.6), Exit::Kill));
    assert_named(&planted.defects(), "no report", &[]);
    planted.incarnations[0].exited = Some((at(2.6), Exit::Kill));
    assert_eq!(planted.defects(), Vec::<String>::new());
}

#[test]
fn callbacks_the_destination_did_not_receive_or_that_nothing_explains_fail() {
    let mut planted = Planted::clean();
    planted.batches[0].with_callback = true;
    planted.incarnations[0].callback_log =
        vec!["callback http://127.0.0.1:1/callback count=10 status=200".to_owned()];
    let run = |planted: &Planted, received: usize| {
        let mut defects = Vec::new();
        let tally = check_callbacks(&planted.run(), received, &mut defects);
        (tally.requested, tally.answered, defects)
    };
    assert_eq!(run(&planted, 1), (1, 1, Vec::new()));
    let (.., defects) = run(&planted, 0);
    assert!(
        defects[0].contains("received 0 callbacks, but 1 were answered"),
        "{defects:?}"
    );
    let (.., defects) = run(&planted, 2);
    assert!(
        defects[0].contains("received 2 callbacks, more than"),
        "{defects:?}"
    );
    // Two outcomes for one callback asked.
    planted.incarnations[0]
        .callback_log
        .push("callback http://127.0.0.1:1/callback count=10 failed: timed out".to_owned());
    let (.., defects) = run(&planted, 2);
    assert!(defects[0].contains("2 callback outcomes"), "{defects:?}");
    // A second request with an endpoint whose answer never came: it may have been counted
    // and its callback sent, so two outcomes are explained; three are not.
    let mut unanswered = planted.batches[0].clone();
    for (_, answer) in &mut unanswered.answers {
        *answer = Answered::Unknown;
    }
    planted.batches.push(unanswered);
    let (.., defects) = run(&planted, 2);
    assert_eq!(defects, Vec::<String>::new());
    planted.incarnations[0]
        .callback_log
        .push("callback http://127.0.0.1:1/callback count=10 failed: timed out".to_owned());
    let (.., defects) = run(&planted, 3);
    assert!(
        defects[0].contains("3 callback outcomes") && defects[0].contains("1 unanswered"),
        "{defects:?}"
    );
}

#[test]
fn standalone_each_process_is_in_one_report_with_its_own_count() {
    // The same run, standalone: each instance reports its own ten ids.
    let mut planted = Planted::clean();
    planted.standalone = true;
    planted.in_redis = SeenInRedis::default();
    let own = |count| Report {
        mode: "standalone".to_owned(),
        ..report(count)
    };
    planted.incarnations[0].reports = vec![own(10)];
    planted.incarnations[1].reports = vec![own(10)];
    planted.kafka = vec![record_of(&own(10), 0), record_of(&own(10), 1)];
    assert_eq!(planted.defects(), Vec::<String>::new());
    planted.incarnations[0].reports = vec![own(9)];
    planted.kafka[0] = record_of(&own(9), 0);
    assert_named(
        &planted.defects(),
        "instance 0 counted 9, but it answered 10",
        &[],
    );
    planted.incarnations[1].reports.clear();
    planted.kafka.truncate(1);
    assert_named(&planted.defects(), "in no report", &[11, 12, 13, 14, 15]);
}
