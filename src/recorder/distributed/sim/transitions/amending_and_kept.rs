//! The rows of amendments, of claims kept and set again, of the shutdown's question and of a
//! process's start.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::super::super::client::Request;
use super::super::super::protocol::{Counted, Settlement};
use super::super::bench::{Bench, ME, OTHER, on_paused_clock};
use super::super::servers::Fault;
use super::super::world::WINDOW;
use super::{EARLIER, earlier_claim, log};

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
        // Gone at the end of the amend horizon, which comes `--report-max-delay-secs` after
        // the report.
        bench.wait(30_000).await;
        bench.redis(&["UNLINK", &published]);
        assert_eq!(bench.amend(w).await, Settlement::PastAmends);
    });
}

// `Amending` | the count published equal to this instance's, an `<w>.amending` kept by the
// process before (it published the count, then died before the amended report) | `Amended`,
// where without it `Skipped`; a count published here is kept as `<w>.amending` first (defect
// 43)
#[test]
fn amending_reports_a_count_an_earlier_process_published_and_keeps_its_own_first() {
    on_paused_clock(|| async {
        let (_dir, wal) = log();
        let w = WINDOW.window_of(Bench::origin()) - 1;
        wal.keep_amending(w);
        let bench = Bench::with_log(ME, true, Some(Arc::clone(&wal))).await;
        let published = format!("verve:count:{}", Bench::start(w));
        bench.ids_and_marks(w, &["1", "2", "3"], &[ME]);
        bench.redis(&["SET", &published, "3"]);
        assert_eq!(bench.amend(w).await, Settlement::Amended(3));
        // Written: nothing kept of it.
        wal.report_written(w);
        assert!(wal.kept_reports(UNIX_EPOCH).amending.is_empty());
        // This process publishes a grown count: kept first.
        bench.ids_and_marks(w, &["4"], &[ME]);
        assert_eq!(bench.amend(w).await, Settlement::Amended(4));
        assert_eq!(wal.kept_reports(UNIX_EPOCH).amending, [w]);
    });
}

// `Amending` | the published count missing before the amend horizon can have ended (less
// than `--report-max-delay-secs` after the window ended) | `Amending` while it may not be
// published yet; where a loss was found since the window ended, `Degraded`
// (`LostSinceReport`), not `Late`: whether the report had this instance's ids cannot be told
// (defect 42)
#[test]
fn amending_after_redis_lost_the_published_count_cannot_tell_and_is_not_late() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2", "3"], &[]);
        assert!(matches!(bench.amend(w).await, Settlement::NotYet(_)));
        let now = bench.clock.now();
        bench.link.health().server_restarted(&[(0, 16_383)], now);
        assert_eq!(bench.amend(w).await, Settlement::LostSinceReport);
        bench.ids_and_marks(w, &[], &[ME]);
        assert_eq!(bench.amend(w).await, Settlement::LostSinceReport);
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
        bench.link.send(Request::Reassert);
        bench.wait(50).await;
        assert_eq!(bench.window_key("reported", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("counted", w).as_deref(), Some(ME));
        assert_eq!(bench.window_key("count", w).as_deref(), Some("lost"));
    });
}

// `Kept` | Redis answers again, the published count missing (the round that publishes it is
// best effort) | `Kept` | the count the report was written with, set again for what is left
// of the amend horizon: an amendment finds it (defect 29)
#[test]
fn a_kept_claim_whose_published_count_is_missing_sets_it_again_for_amendments() {
    on_paused_clock(|| async {
        let bench = Bench::new(ME, true).await;
        let w = bench.window();
        bench.ids_and_marks(w, &["1", "2"], &[ME]);
        assert_eq!(bench.settle(w, false, false).await, Settlement::Won(2));
        let published = format!("verve:count:{}", Bench::start(w));
        bench.redis(&["UNLINK", &published]);
        // Redis does not answer for a while, and comes back with what it held.
        let epoch = bench.link.health().epoch();
        bench.servers.lock().unwrap().set_fault(0, Fault::Down);
        while bench.link.health().epoch() == epoch {
            bench.wait(10).await;
        }
        bench.servers.lock().unwrap().set_fault(0, Fault::None);
        while !bench.link.health().is_up() {
            bench.wait(10).await;
        }
        bench.link.send(Request::Reassert);
        bench.wait(50).await;
        assert_eq!(bench.get(&published).as_deref(), Some("2"));
        // An instance whose id the report lacked amends it.
        bench.ids_and_marks(w, &["3"], &[OTHER]);
        assert_eq!(bench.amend(w).await, Settlement::Amended(3));
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
        bench.link.send(Request::Reassert);
        bench.wait(50).await;

        let kept: Vec<(u64, bool)> = wal
            .kept_reports(UNIX_EPOCH)
            .claims
            .iter()
            .map(|c| (c.window, c.confirmed))
            .collect();
        assert_eq!(kept, [(unknown, false), (made, true)]);
        // The claim found made is this instance's: set again, with its count's record.
        assert_eq!(bench.window_key("counted", made).as_deref(), Some(EARLIER));
        // The one Redis holds nothing of: its count is the floor of this process's. (Its
        // server started after it ended, before this process saw who was live: the election
        // waits for their claims until twice the delay after the start.)
        bench.wait(60_000).await;
        bench.ids_and_marks(unknown, &["1"], &[ME]);
        assert_eq!(
            bench.settle(unknown, false, false).await,
            Settlement::Won(2)
        );
    });
}
