//! The rows of the flush and of the election of a window's report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::FromRedisValue;

use super::super::super::client::{Reply, Request};
use super::super::super::protocol::Settlement;
use super::super::bench::{Bench, ME, OTHER, on_paused_clock};
use super::super::servers::{Fault, Servers};
use super::super::world::WINDOW;
use super::{EARLIER, earlier_claim, log};
use crate::wal::seen::Sightings;
use crate::window::WindowIndex;

// `Flushing` | all of this epoch's ids confirmed | `Flushed`
#[test]
fn flushing_with_every_id_confirmed_sets_the_flush_mark_beside_the_ids() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        let generation = bench.link.health().epoch();
        let reply = bench
            .ask(Request::MarkFlushed {
                generation,
                window: w,
            })
            .await;
        assert!(matches!(reply, Reply::Flushed { ok: true, .. }));
        let marks = format!("verve:flushed:{{verve:w:{}}}", Bench::start(w));
        let members: Vec<String> =
            FromRedisValue::from_redis_value(&bench.redis(&["SMEMBERS", &marks])).unwrap();
        assert_eq!(members, [ME]);
    });
}

// `Electing` | the claim's outcome not learned (Redis failed after the count's record) |
// `Electing`: the tally is kept, and the next round reports the larger of it and the new one
#[test]
fn electing_after_a_claim_whose_outcome_was_not_learned_counts_at_least_its_tally() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2", "3"], &[ME]);
        let servers = &bench.servers;
        servers
            .lock()
            .unwrap()
            .fault_after_write(b"verve:counted:", Fault::Down);
        let request = Request::Settle {
            window: w,
            overdue: false,
            adopt: false,
        };
        assert!(matches!(
            bench.ask(request).await,
            Reply::Settled {
                settlement: None,
                ..
            }
        ));
        // Redis comes back empty: the claim, if made, is gone, and ids with it.
        servers.lock().unwrap().set_fault(0, Fault::None);
        servers.lock().unwrap().restart_empty(0);
        while !bench.link.health().is_up() {
            bench.wait(10).await;
        }
        bench.link.send(Request::Reassert);
        bench.wait(2_100).await;
        bench.ids_and_marks(w, &["1"], &[ME]);
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(3));
    });
}

// `Electing` | Redis answers again since < heartbeat + 1 s | `Electing`
#[test]
fn electing_right_after_redis_answers_again_waits() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, false).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1"], &[ME]);
        assert!(matches!(
            bench.settle(w, false, false).await,
            Settlement::NotYet(why) if why.contains("answers again")
        ));
    });
}

// `Electing` (adopted) | the claim's node started after the window ended | `Skipped`
#[test]
fn electing_an_adopted_window_whose_claims_server_started_after_it_ended_leaves_it() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        // Ended before the server started (at the bench's start).
        let w = bench.window() - 3;
        bench.ids_and_marks(w, &["1"], &[ME]);
        assert_eq!(bench.settle(w, false, true).await, Settlement::NotAdopted);
    });
}

// `Electing` (adopted) | the claim's node started in the window's last second | `Won`
#[test]
fn electing_an_adopted_window_whose_claims_server_started_in_its_last_second_reports_it() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        // 0.64 s into the window by the server's clock.
        bench.wait(600).await;
        let w = bench.window() + 1;
        bench.servers.lock().unwrap().restart_empty(0);
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        // Read 0.97 s into a second of the server's clock, 1.03 s into one of this instance's:
        // the uptime's whole seconds taken from this instance's clock would put the start
        // after the window's end.
        bench.wait(3_330).await;
        assert_eq!(bench.settle(w, true, true).await, Settlement::Won(2));
    });
}

// `Electing` | the claim's node restarted after the window ended, an instance seen since has
// not set its claims again | `Electing`
#[test]
fn electing_after_a_restart_waits_for_the_instances_seen_before_it_to_set_their_claims_again() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let faults = [Servers::restart_empty as ShardFault];
        waits_for_the_claimants_after(bench, &faults, Settlement::Won(2)).await;
    });
}

// `Electing` | the claim's master restarted empty after the window ended, then its replica (up
// since before the window, synced with the empty data set) took over, an instance seen before
// the restart has not set its claims again | `Electing` (defect 32): whether this process
// found the master restarted before the failover, or only after, asking the replaced master
#[test]
fn electing_after_a_restart_then_a_failover_waits_for_the_instances_seen_before_the_restart() {
    on_paused_clock(|| async {
        let bench = Bench::with_replica(ME).await;
        let faults = [Servers::restart_empty as ShardFault, Servers::fail_over];
        // Claimed: on no replica yet, the bench's replica taking writes only when told.
        waits_for_the_claimants_after(bench, &faults, Settlement::Claimed(2)).await;
    });
}

#[test]
fn electing_after_a_restart_and_a_failover_found_together_waits_likewise() {
    on_paused_clock(|| async {
        let bench = Bench::with_replica(ME).await;
        let faults = [restarted_and_failed_over as ShardFault];
        waits_for_the_claimants_after(bench, &faults, Settlement::Claimed(2)).await;
    });
}

/// A fault of the servers' first shard.
type ShardFault = fn(&mut Servers, usize);

/// The master restarts empty, and its replica, synced with the empty data set, takes over.
fn restarted_and_failed_over(servers: &mut Servers, shard: usize) {
    servers.restart_empty(shard);
    servers.fail_over(shard);
}

// `Electing` | the claim's node restarted twice within one second after the window ended, an
// instance seen before set its claims again between the two | `Electing`: those claims went
// with the second restart, which `INFO server` dates to the same second (defect 33)
#[test]
fn electing_after_two_restarts_in_one_second_waits_for_claims_set_again_after_the_second() {
    on_paused_clock(|| async {
        let bench = Bench::with_two_masters(ME).await;
        // A window whose claim is on the other master than `verve:returned`, which keeps
        // what was said between the restarts.
        let returned_on = bench.shard_of_key("verve:returned");
        let w = loop {
            let w = other_live_then_a_window_ends(&bench).await;
            if bench.shard_of_claim(w) != returned_on {
                break w;
            }
        };
        let shard = bench.shard_of_claim(w);
        bench.wait_for_the_servers_second_at(100).await;
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().restart_empty(shard);
        bench.wait(170).await;
        bench.say_returned(OTHER, w);
        bench.wait(166).await;
        bench.servers.lock().unwrap().restart_empty(shard);
        // This process's next call to the claim's master finds it restarted.
        let settle = Request::Settle {
            window: w,
            overdue: false,
            adopt: false,
        };
        bench.ask(settle).await;
        found_after(&bench, epoch).await;
        // Claimed: on no replica yet, the bench's replicas taking writes only when told.
        waits_then_settles(&bench, w, Settlement::Claimed(2)).await;
    });
}

/// Another instance live, a window ends, then `faults` strike the first shard, each found by
/// this process before the next: the election waits for the other instance to set its
/// claims again, and settles as `then` once it has.
async fn waits_for_the_claimants_after(bench: Bench, faults: &[ShardFault], then: Settlement) {
    let w = other_live_then_a_window_ends(&bench).await;
    for fault in faults {
        let epoch = bench.link.health().epoch();
        fault(&mut bench.servers.lock().unwrap(), 0);
        found_after(&bench, epoch).await;
    }
    waits_then_settles(&bench, w, then).await;
}

/// Another instance is live (the next heartbeat reads it), then a window ends: the window
/// that ended.
async fn other_live_then_a_window_ends(bench: &Bench) -> WindowIndex {
    bench.redis(&["ZADD", "verve:instances", &bench.now_ms(), OTHER]);
    bench.wait(1_100).await;
    bench.window()
}

/// Until this process has found a fault struck after the health's `epoch`, and Redis answers.
async fn found_after(bench: &Bench, epoch: u64) {
    while bench.link.health().epoch() == epoch || !bench.link.health().is_up() {
        bench.wait(10).await;
    }
}

/// This process sets its claims again, as its recorder's replay asks; the rounds wait out a
/// heartbeat and a probe backoff; the election of `w` waits for the other instance to set its
/// claims again, and settles as `then` once it has.
async fn waits_then_settles(bench: &Bench, w: WindowIndex, then: Settlement) {
    bench.link.send(Request::Reassert);
    bench.wait(2_100).await;
    bench.ids_and_marks(w, &["1", "2"], &[ME]);
    assert!(matches!(
        bench.settle(w, false, false).await,
        Settlement::NotYet(why) if why.contains("set their claims again")
    ));
    bench.say_returned(OTHER, w);
    assert_eq!(bench.settle(w, false, false).await, then);
}

// `Electing` | the claim's node started after the window ended, before this process first read
// the live instances | `Electing` until twice the delay after the start: a claimant cut off
// then is unknown to it (defect 31)
#[test]
fn electing_a_window_that_ended_before_this_process_saw_who_was_live_waits_out_a_restart() {
    on_paused_clock(|| async {
        // The server started at the bench's origin (its clock a little behind), this process
        // with it.
        let bench = Bench::new(ME, true).await;
        let before = WINDOW.window_of(Bench::origin()) - 2;
        bench.ids_and_marks(before, &["1", "2"], &[ME]);
        assert!(matches!(
            bench.settle(before, false, false).await,
            Settlement::NotYet(why) if why.contains("did not see which instances were live")
        ));
        let since = bench.window();
        bench.ids_and_marks(since, &["1"], &[ME]);
        assert_eq!(bench.settle(since, false, false).await, Settlement::Won(1));
        bench.wait(60_000).await;
        assert_eq!(bench.settle(before, false, false).await, Settlement::Won(2));
    });
}

// `Electing` | as above, an earlier process of this instance having seen another instance live
// when the window ended (kept beside the log) | `Electing` until that instance sets its claims
// again (defect 31)
#[test]
fn electing_after_a_restart_waits_for_the_instances_an_earlier_process_saw_live() {
    on_paused_clock(|| async {
        waits_for_an_instance_an_earlier_process_last_saw_at(
            Bench::origin() - Duration::from_millis(500),
        )
        .await;
    });
}

// `Electing` | as above, an earlier process having last seen another instance live before the
// window ended, this process's first read of the live instances (without it) more than a
// heartbeat later | `Electing` until that instance sets its claims again: it may have been
// live until that read, and claimed the window (defect 39)
#[test]
fn electing_after_a_restart_waits_for_an_instance_live_before_a_gap_in_the_reads() {
    on_paused_clock(|| async {
        let before = WINDOW.window_of(Bench::origin()) - 2;
        waits_for_an_instance_an_earlier_process_last_saw_at(
            WINDOW.end(before) - Duration::from_millis(500),
        )
        .await;
    });
}

/// An earlier process of this instance last read the live instances at `last_read`, `OTHER`'s
/// instance among them, and kept that beside the log; the window that ended two seconds
/// before this process starts (after its claim's server started) waits for `OTHER` to set its
/// claims again, then is won.
async fn waits_for_an_instance_an_earlier_process_last_saw_at(last_read: SystemTime) {
    let (_dir, wal) = log();
    let before = WINDOW.window_of(Bench::origin()) - 2;
    wal.keep_sightings(&Sightings {
        first_read_at: last_read - Duration::from_secs(5),
        read_at: last_read,
        // Instances by id: `OTHER` is a process of instance i1.
        last_seen: vec![("i1".to_owned(), last_read)],
    });
    let bench = Bench::with_log(ME, true, Some(wal)).await;
    waits_then_settles(&bench, before, Settlement::Won(2)).await;
}

// `Electing` | the lease is another's | `Electing`
#[test]
fn electing_with_the_lease_held_by_another_waits() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1"], &[ME]);
        bench.set_window_key("report", w, OTHER);
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::NotYet("another instance holds the lease")
        );
    });
}

// `Electing` | lease won, own flush mark gone from a shard | `Flushing`
#[test]
fn electing_without_its_own_flush_mark_moves_the_epoch_on_to_push_again() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1"], &[]);
        let epoch = bench.link.health().epoch();
        assert!(matches!(
            bench.settle(w, false, false).await,
            Settlement::NotYet(why) if why.contains("flush mark is gone")
        ));
        assert!(bench.link.health().epoch() > epoch);
    });
}

// `Electing` | lease won, a live instance's mark missing, not overdue | `Electing`
// `Electing` | lease won, marks complete (or overdue) | `Reported` + `Kept`
#[test]
fn electing_waits_for_the_marks_of_live_instances_until_overdue() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        let now_ms = bench
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        bench.redis(&["ZADD", "verve:instances", &now_ms, OTHER]);
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::NotYet("waiting for the flush marks of live instances")
        );
        bench.wait(60).await;
        assert_eq!(bench.settle(w, true, false).await, Settlement::Won(2));
    });
}

// `Electing` | lease won, marks complete | `Reported` + `Kept`: the count's record, the claim,
// the published count
#[test]
fn electing_with_every_mark_claims_the_report_with_the_count_and_whose_marks_it_had() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2", "3"], &[ME]);
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(3));
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("counted", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("count", w).as_deref(), Some("3"));
        assert_eq!(bench.window_key("report", w), None);
    });
}

// `Electing` | the claim is another's | `Skipped` or `Amending`
#[test]
fn electing_a_window_another_claimed_says_whether_its_count_had_this_instances_ids() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1"], &[ME]);
        bench.set_window_key("reported", w, OTHER);
        // No record of whose marks it had, and no data lost since the window ended (gone by
        // expiry): taken to have them.
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::ByOther { counted_here: true }
        );
        with_a_record_without_this_instance(&bench, w).await;
    });
}

// `Electing` | the claim is another's, the record of whose marks its count had gone with a
// restart after the window ended | `Degraded` (`LostSinceReport`): whether the report had this
// instance's ids cannot be told (defect 40)
#[test]
fn electing_a_window_another_claimed_whose_count_record_a_restart_took_cannot_tell() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = other_live_then_a_window_ends(&bench).await;
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().restart_empty(0);
        found_after(&bench, epoch).await;
        bench.link.send(Request::Reassert);
        bench.wait(2_100).await;
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        bench.say_returned(OTHER, w);
        // The other's claim, set again; its count's record not (its claimant cut off).
        bench.set_window_key("reported", w, OTHER);
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::LostSinceReport
        );
        with_a_record_without_this_instance(&bench, w).await;
    });
}

/// With the record that the claimant's count had only its own marks, the election of `w`
/// says that it did not count this instance's ids.
async fn with_a_record_without_this_instance(bench: &Bench, w: WindowIndex) {
    bench.set_window_key("counted", w, OTHER);
    bench.wait(60).await;
    assert_eq!(
        bench.settle(w, false, false).await,
        Settlement::ByOther {
            counted_here: false
        }
    );
}

// `Electing` (held from its log) | the claim is an earlier process's of this instance |
// `Reported` + `Kept`
#[test]
fn electing_a_window_an_earlier_process_of_this_instance_claimed_takes_the_claim_over() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        bench.set_window_key("reported", w, EARLIER);
        // Not held from its log (adopted): the earlier process wrote the report.
        assert_eq!(
            bench.settle(w, false, true).await,
            Settlement::ByOther { counted_here: true }
        );
        bench.wait(60).await;
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(2));
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
    });
}

// `Electing` (held from its log) | the claim is an earlier process's of this instance that
// wrote the report, killed before the window's segments went | `Skipped`
#[test]
fn electing_a_window_whose_earlier_process_wrote_its_report_leaves_it_to_that_report() {
    on_paused_clock(|| async {
        let (_dir, bench, w) = claimed_by_an_earlier_process(true).await;
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::ByOther { counted_here: true }
        );
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(EARLIER));
    });
}

// `Electing` (adopted) | the claim is an earlier process's of this instance, kept beside the
// log, its report not written | `Reported` + `Kept`: nobody else reports it (defect 35)
#[test]
fn electing_an_adopted_window_an_earlier_process_claimed_and_did_not_report_takes_it_over() {
    on_paused_clock(|| async {
        let (_dir, bench, w) = claimed_by_an_earlier_process(false).await;
        assert_eq!(bench.settle(w, false, true).await, Settlement::Won(2));
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
    });
}

// `Electing` (adopted) | as above, and the claim's server restarted empty since the window
// ended | `Reported` + `Kept`, not `NotAdopted`: the others left the window to that claim, and
// nobody else reports it (defect 46; the simulator's seed 1785)
#[test]
fn electing_an_adopted_window_an_earlier_process_claimed_takes_it_over_after_a_restart() {
    on_paused_clock(|| async {
        let (_dir, bench, w) = claimed_by_an_earlier_process(false).await;
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().restart_empty(0);
        found_after(&bench, epoch).await;
        bench.link.send(Request::Reassert);
        bench.wait(2_100).await;
        // The claim set again, in the earlier process's name; the ids gone with the restart,
        // this process's flush mark (of none of them) set again: reported with the count the
        // claim was made with.
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(EARLIER));
        bench.ids_and_marks(w, &[], &[ME]);
        assert_eq!(bench.settle(w, false, true).await, Settlement::Won(2));
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
    });
}

/// A process whose earlier process of this instance claimed the window that ended as it
/// started, and kept the claim beside the log (with the report written, or not); the ids of
/// both in Redis, and the claim: the log's directory, the bench, the window.
async fn claimed_by_an_earlier_process(
    report_written: bool,
) -> (tempfile::TempDir, Bench, WindowIndex) {
    let (dir, wal) = log();
    let w = WINDOW.window_of(Bench::origin()) - 1;
    wal.keep_claim(&earlier_claim(w, Bench::origin(), true));
    if report_written {
        wal.report_written(w);
    }
    let bench = Bench::with_log(ME, true, Some(wal)).await;
    bench.ids_and_marks(w, &["1", "2"], &[EARLIER, ME]);
    bench.set_window_key("reported", w, EARLIER);
    (dir, bench, w)
}
