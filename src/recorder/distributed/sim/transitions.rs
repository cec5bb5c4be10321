//! The rows of ARCHITECTURE.md's state table that the Redis thread decides, one test each:
//! a process's Redis thread (the real one) against one simulated server whose keys a test
//! sets beforehand, one request (the event), and the settlement it answers and the keys it
//! leaves (the commands), on a paused clock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::FromRedisValue;

use super::super::client::{Reply, Request};
use super::super::protocol::{Counted, Settlement};
use super::bench::{Bench, ME, OTHER, on_paused_clock};
use super::servers::Fault;
use super::world::WINDOW;
use crate::metrics::Metrics;
use crate::wal::WalDir;
use crate::wal::claims::Claim;
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
        bench.link.send(Request::Reassert { windows: vec![] });
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
        // Another instance, live: the next heartbeat reads it.
        bench.redis(&["ZADD", "verve:instances", &bench.now_ms(), OTHER]);
        bench.wait(1_100).await;
        let w = bench.window();
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().restart_empty(0);
        while bench.link.health().epoch() == epoch || !bench.link.health().is_up() {
            bench.wait(10).await;
        }
        // This process sets its claims again, as its recorder's replay asks; then the rounds
        // wait out a heartbeat and a probe backoff.
        bench.link.send(Request::Reassert { windows: vec![] });
        bench.wait(2_100).await;
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        assert!(matches!(
            bench.settle(w, false, false).await,
            Settlement::NotYet(why) if why.contains("set their claims again")
        ));
        bench.redis(&["ZADD", "verve:returned", &bench.now_ms(), OTHER]);
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(2));
    });
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
        // No record of whose marks it had (a restarted Redis lost it): taken to have them.
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::ByOther { counted_here: true }
        );
        bench.set_window_key("counted", w, OTHER);
        bench.wait(60).await;
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::ByOther {
                counted_here: false
            }
        );
    });
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
        let (_dir, wal) = log();
        let w = WINDOW.window_of(Bench::origin()) - 1;
        wal.keep_claim(&earlier_claim(w, Bench::origin(), true));
        wal.report_written(w);
        let bench = Bench::with_log(ME, true, Some(wal)).await;
        bench.ids_and_marks(w, &["1", "2"], &[EARLIER, ME]);
        bench.set_window_key("reported", w, EARLIER);
        assert_eq!(
            bench.settle(w, false, false).await,
            Settlement::ByOther { counted_here: true }
        );
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(EARLIER));
    });
}

// `Amending` | own ids flushed | `Amended`, `Skipped`, `Late` or `Degraded`
#[test]
fn amending_publishes_a_grown_count_and_says_when_it_cannot() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        let published = format!("verve:count:{}", Bench::start(w));
        bench.ids_and_marks(w, &["1", "2", "3"], &[ME]);
        bench.redis(&["SET", &published, "2"]);
        assert_eq!(bench.amend(w).await, Settlement::Amended(3));
        assert_eq!(bench.get(&published).as_deref(), Some("3"));
        assert_eq!(
            bench.amend(w).await,
            Settlement::ByOther { counted_here: true }
        );
        bench.redis(&["SET", &published, "lost"]);
        assert_eq!(bench.amend(w).await, Settlement::LostSinceReport);
        bench.redis(&["UNLINK", &published]);
        assert_eq!(bench.amend(w).await, Settlement::PastAmends);
    });
}

// `Kept` | a server holding the window's ids or count restarted before the amend horizon's
// end | `Kept`
#[test]
fn a_kept_claim_is_set_again_after_its_server_restarted_and_its_count_marked_lost() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(2));
        bench.wait(1_500).await;
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().restart_empty(0);
        // Once the thread has found the restart (its heartbeat fails, its probe answers), the
        // recorder's replay asks for the claims again.
        while bench.link.health().epoch() == epoch || !bench.link.health().is_up() {
            bench.wait(10).await;
        }
        bench.link.send(Request::Reassert { windows: vec![w] });
        bench.wait(50).await;
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("counted", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("count", w).as_deref(), Some("lost"));
    });
}

// `any` | shutdown: whether a report another made had this instance's ids
#[test]
fn leaving_asks_whether_another_instances_report_had_its_ids() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        // Not being reported yet: the instance leaving reports it.
        assert_eq!(bench.check_counted(w).await, Some(Counted::Unsettled));
        // Claimed by an earlier process of this instance, which died before the report.
        bench.set_window_key("reported", w, EARLIER);
        assert_eq!(bench.check_counted(w).await, Some(Counted::Unsettled));
        bench.redis(&["UNLINK", &format!("verve:reported:{}", Bench::start(w))]);
        bench.set_window_key("report", w, OTHER);
        assert_eq!(bench.check_counted(w).await, Some(Counted::Settling));
        bench.set_window_key("reported", w, OTHER);
        bench.set_window_key("counted", w, OTHER);
        assert_eq!(bench.check_counted(w).await, Some(Counted::No));
    });
}

// (start) | a `<w>.claiming` kept by the process before | `Kept`, or forgotten | `GET
// verve:reported:<w>`: in that process's name, this instance's; another's, forgotten; none,
// its count the floor of this process's
#[test]
fn starting_with_claims_an_earlier_process_was_making_keeps_its_own_and_forgets_anothers() {
    on_paused_clock(|| async {
        let (_dir, wal) = log();
        // Windows long enough ago that their amend horizons are over.
        let made = WINDOW.window_of(Bench::origin()) - 100;
        let (theirs, unknown) = (made - 1, made - 2);
        for window in [made, theirs, unknown] {
            wal.keep_claim(&earlier_claim(window, WINDOW.end(made), false));
        }
        let bench = Bench::with_log(ME, true, Some(Arc::clone(&wal))).await;
        bench.set_window_key("reported", made, EARLIER);
        bench.set_window_key("reported", theirs, OTHER);
        bench.link.send(Request::Reassert {
            windows: Vec::new(),
        });
        bench.wait(50).await;

        let kept: Vec<(u64, bool)> = wal
            .kept_claims(UNIX_EPOCH)
            .iter()
            .map(|c| (c.window, c.confirmed))
            .collect();
        assert_eq!(kept, [(unknown, false), (made, true)]);
        // The claim found made is this instance's: set again, with its count's record.
        assert_eq!(bench.window_key("counted", made).as_deref(), Some(EARLIER));
        // The one Redis holds nothing of: its count is the floor of this process's.
        bench.ids_and_marks(unknown, &["1"], &[ME]);
        assert_eq!(
            bench.settle(unknown, false, false).await,
            Settlement::Won(2)
        );
    });
}

/// An earlier process of this instance.
const EARLIER: &str = "i0/1";

/// A log's directory for the process to keep its claims in; gone with the `TempDir`.
fn log() -> (tempfile::TempDir, Arc<WalDir>) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(WalDir::open(dir.path(), Arc::new(Metrics::new(1))).unwrap());
    (dir, wal)
}

/// The claim of `window` an earlier process kept, counting 2 with its own marks, made at
/// `made_at`, made (`confirmed`) or being made.
fn earlier_claim(window: WindowIndex, made_at: SystemTime, confirmed: bool) -> Claim {
    Claim {
        window,
        holder: EARLIER.to_owned(),
        count: 2,
        marks: EARLIER.to_owned(),
        made_at,
        confirmed,
        report_written: false,
    }
}
