//! The rows of ARCHITECTURE.md's state table that the recorder's side decides (the
//! `Replicator`), one test each: a `Replicator` driven round by round as the recorder drives
//! it, its Redis thread the real one, against one simulated server, on a paused clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use redis::FromRedisValue;

use super::super::replicator::{Replicator, Verdict};
use super::super::{Departure, LeaveStep, Leaving, RedisHealth};
use super::bench::{Bench, ME, OTHER, SERVER, on_paused_clock};
use super::servers::{Fault, Servers};
use super::transitions::{earlier_claim, log};
use super::world::WINDOW;
use crate::clock::Clock;
use crate::id_set::IdSet;
use crate::report::Mode;
use crate::window::WindowIndex;

const MAX_DELAY: Duration = Duration::from_secs(30);

/// A process's replicator, the ids it holds, and the server its Redis thread talks to.
struct Recorder {
    replicator: Replicator,
    open: BTreeMap<WindowIndex, IdSet>,
    servers: Arc<Mutex<Servers>>,
    clock: Clock,
    health: Arc<RedisHealth>,
}

impl Recorder {
    async fn new() -> Recorder {
        Recorder::on(Bench::new(ME, true).await)
    }

    /// Against a Redis Cluster of one master with a replica that receives its writes only
    /// when the test says.
    async fn with_replica() -> Recorder {
        Recorder::on(Bench::with_replica(ME).await)
    }

    fn on(bench: Bench) -> Recorder {
        let Bench {
            servers,
            link,
            clock,
            health,
        } = bench;
        Recorder {
            replicator: Replicator::new(link, MAX_DELAY),
            open: BTreeMap::new(),
            servers,
            clock,
            health,
        }
    }

    /// A recorder whose ids of the two windows that ended last, 1 and 2 of the first, 3, 4
    /// and 5 of the second, Redis has confirmed.
    async fn two_due_windows() -> (Recorder, WindowIndex, WindowIndex) {
        let mut recorder = Recorder::new().await;
        let (first, second) = (recorder.window() - 2, recorder.window() - 1);
        recorder.record(first, &[1, 2]);
        recorder.record(second, &[3, 4, 5]);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        (recorder, first, second)
    }

    /// A recorder whose earlier process claimed the window that ended as it started, holding
    /// 1 of its ids, and kept the claim (counting 2) beside the log, its outcome not known;
    /// then cut off from Redis. The log's directory goes with the `TempDir`.
    async fn cut_off_with_an_earlier_claim() -> (tempfile::TempDir, Recorder, WindowIndex) {
        let (dir, wal) = log();
        let w = WINDOW.window_of(Bench::origin()) - 1;
        wal.keep_claim(&earlier_claim(w, Bench::origin(), false));
        let mut recorder = Recorder::on(Bench::with_log(ME, true, Some(wal)).await);
        recorder.record(w, &[1]);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        recorder.cut_off().await;
        (dir, recorder, w)
    }

    /// A recorder whose ids of the current window Redis has confirmed.
    async fn confirmed(ids: &[i64]) -> (Recorder, WindowIndex) {
        let mut recorder = Recorder::new().await;
        let w = recorder.window();
        recorder.record(w, ids);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        (recorder, w)
    }

    /// A recorder whose window of ids 1, 2 and 3 has ended, that has claimed its report and
    /// not reported it for two seconds of rounds: no replica of its cluster's master has taken
    /// the claim.
    async fn claimed() -> (Recorder, WindowIndex) {
        let mut recorder = Recorder::with_replica().await;
        let w = recorder.window();
        recorder.record(w, &[1, 2, 3]);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(recorder.verdict(w, 3, 2_000).await, Verdict::Wait);
        (recorder, w)
    }

    /// Once a write to a key starting with `prefix` is taken, its server gets `fault`.
    fn fault_after_write(&self, prefix: &'static [u8], fault: Fault) {
        self.servers
            .lock()
            .unwrap()
            .fault_after_write(prefix, fault);
    }

    /// Redis stops answering, and the Redis thread has found it out.
    async fn cut_off(&mut self) {
        self.servers.lock().unwrap().set_fault(0, Fault::Down);
        self.rounds_until(|_, health| !health.is_up()).await;
    }

    fn window(&self) -> WindowIndex {
        WINDOW.window_of(self.clock.now())
    }

    /// Ids taken in `window`, as the recorder hands them over.
    fn record(&mut self, window: WindowIndex, ids: &[i64]) {
        let set = self.open.entry(window).or_default();
        for &id in ids {
            set.insert(id);
            self.replicator.record(window, id);
        }
    }

    /// Rounds, a millisecond apart, until `done` holds (at most 5 s).
    async fn rounds_until(&mut self, done: impl Fn(&Replicator, &RedisHealth) -> bool) {
        for _ in 0..5_000 {
            self.replicator.step(&self.open, &mut Vec::new());
            if done(&self.replicator, &self.health) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("not done within 5 s");
    }

    /// Rounds of the verdict on `window`, closed and due, this instance counting `local`, a
    /// millisecond apart, for `rounds` milliseconds or until it is not `Wait`.
    async fn verdict(&mut self, window: WindowIndex, local: u64, rounds: u32) -> Verdict {
        let due = WINDOW.end(window);
        for _ in 0..rounds {
            self.replicator.step(&self.open, &mut Vec::new());
            self.replicator.mark_flushed(window);
            let verdict = self
                .replicator
                .settle(window, local, [false, false], due, false);
            if verdict != Verdict::Wait {
                return verdict;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Verdict::Wait
    }

    /// The verdict on `window`, due since its end, this instance counting `local`, with
    /// `--report-max-delay-secs` passed once or twice (`overdue`), adopted or not.
    fn verdict_now(
        &mut self,
        window: WindowIndex,
        local: u64,
        overdue: [bool; 2],
        adopt: bool,
    ) -> Verdict {
        let due = WINDOW.end(window);
        self.replicator.settle(window, local, overdue, due, adopt)
    }

    /// A command at the server, as redis-cli would send it.
    fn redis(&self, args: &[&str]) -> redis::Value {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.servers.lock().unwrap().run(SERVER, &args)
    }

    /// One step of a shutdown, naming the closed windows `due`, their graces passed, once the
    /// claimed reports are written; the departure once it has left.
    fn leave_step(&mut self, leaving: &mut Leaving, due: &[WindowIndex]) -> Option<Departure> {
        let now = self.clock.instant();
        match self
            .replicator
            .leave(leaving, &self.open, now, &mut Vec::new())
        {
            LeaveStep::Claimed(_) => {
                leaving.due(due.iter().map(|&w| (w, now)).collect());
                None
            }
            LeaveStep::Departed(departure) => Some(departure),
            LeaveStep::Pending => None,
        }
    }

    /// `process` is live: its heartbeat, as its Redis thread sets it.
    fn heartbeat(&self, process: &str) {
        let now = self.clock.now().duration_since(UNIX_EPOCH).unwrap();
        let now = now.as_millis().to_string();
        self.redis(&["ZADD", "verve:instances", &now, process]);
    }

    /// The ids Redis holds of `window`.
    fn in_redis(&self, window: WindowIndex) -> BTreeSet<i64> {
        let key = format!("verve:w:{}", Bench::start(window));
        FromRedisValue::from_redis_value(&self.redis(&["SMEMBERS", &key])).unwrap()
    }
}

// `Open` | ids recorded | `Open` | `SADD` batches
#[test]
fn open_pushes_the_ids_it_records() {
    on_paused_clock(|| async {
        let (recorder, w) = Recorder::confirmed(&[1, 2, 3]).await;
        assert_eq!(recorder.in_redis(w), BTreeSet::from([1, 2, 3]));
    });
}

// any not final | epoch moves on, Redis answers again | the same | every id again
#[test]
fn after_redis_restarted_empty_every_id_held_is_pushed_again() {
    on_paused_clock(|| async {
        let (mut recorder, w) = Recorder::confirmed(&[1, 2, 3]).await;
        let epoch = recorder.health.epoch();
        recorder.servers.lock().unwrap().restart_empty(0);
        assert!(recorder.in_redis(w).is_empty());
        recorder
            .rounds_until(|r, health| {
                health.epoch() != epoch && health.is_up() && r.unconfirmed_ids() == 0
            })
            .await;
        assert_eq!(recorder.in_redis(w), BTreeSet::from([1, 2, 3]));
    });
}

// `Electing` | Redis out of step, overdue | `Degraded` (an adopted window: `Skipped`)
#[test]
fn electing_without_redis_waits_until_overdue_then_writes_its_own_count() {
    on_paused_clock(|| async {
        let mut recorder = Recorder::new().await;
        let w = recorder.window() - 1;
        recorder.record(w, &[1, 2, 3]);
        recorder.cut_off().await;
        assert_eq!(
            recorder.verdict_now(w, 3, [false, false], false),
            Verdict::Wait
        );
        assert_eq!(
            recorder.verdict_now(w, 3, [true, false], false),
            Verdict::Degraded(3, "redis unreachable for --report-max-delay-secs")
        );
        assert_eq!(
            recorder.verdict_now(w, 0, [true, false], true),
            Verdict::Skip
        );
    });
}

// `Claimed` | a replica holds the claim | `Reported` + `Kept` | the largest count read in
// its rounds (defect 17)
#[test]
fn claimed_reports_once_a_replica_holds_the_claim_the_largest_count_read_in_its_rounds() {
    on_paused_clock(|| async {
        // No replica has the claim: for two seconds of rounds, claimed and not reported.
        let (mut recorder, w) = Recorder::claimed().await;
        let reported = format!("verve:reported:{}", Bench::start(w));
        let claimant: Option<String> =
            FromRedisValue::from_redis_value(&recorder.redis(&["GET", &reported])).unwrap();
        assert_eq!(claimant.as_deref(), Some(ME));

        // Redis loses an id of the window; rounds go on reading 2 and claiming; then the
        // replica catches up: the report counts the 3 the first round read.
        let shard = format!("verve:w:{}", Bench::start(w));
        recorder.redis(&["UNLINK", &shard]);
        recorder.redis(&["SADD", &shard, "1", "2"]);
        assert_eq!(recorder.verdict(w, 3, 2_000).await, Verdict::Wait);
        recorder.servers.lock().unwrap().replicate(0, usize::MAX);
        assert_eq!(
            recorder.verdict(w, 3, 5_000).await,
            Verdict::Report(3, Mode::Distributed)
        );
    });
}

// `Claimed` | overdue without Redis | `Reported` + `Kept` | the count it read when it
// claimed: the others left the window to its claim (defect 3)
#[test]
fn claimed_and_cut_off_past_the_delay_reports_the_count_it_read_when_it_claimed() {
    on_paused_clock(|| async {
        let (mut recorder, w) = Recorder::claimed().await;
        recorder.cut_off().await;
        assert_eq!(
            recorder.verdict_now(w, 3, [false, false], false),
            Verdict::Wait
        );
        assert_eq!(
            recorder.verdict_now(w, 3, [true, false], false),
            Verdict::Report(3, Mode::Distributed)
        );
    });
}

// `Electing` | the claim's outcome not learned, Redis out of step, overdue | `Electing` until
// twice overdue, then `Degraded`: the others may have left the window to its claim (defect 11)
#[test]
fn electing_whose_claim_may_have_been_made_waits_without_redis_until_twice_overdue() {
    on_paused_clock(|| async {
        let (mut recorder, w) = Recorder::confirmed(&[1, 2, 3]).await;
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(1)).await;
        // Redis fails right after it took the claim: the election's outcome is not learned.
        recorder.fault_after_write(b"verve:reported:", Fault::Down);
        assert_eq!(recorder.verdict(w, 3, 2_000).await, Verdict::Wait);
        let reported = format!("verve:reported:{}", Bench::start(w));
        let claimant: Option<String> =
            FromRedisValue::from_redis_value(&recorder.redis(&["GET", &reported])).unwrap();
        assert_eq!(claimant.as_deref(), Some(ME));

        assert_eq!(
            recorder.verdict_now(w, 3, [true, false], false),
            Verdict::Wait
        );
        assert_eq!(
            recorder.verdict_now(w, 3, [true, true], false),
            Verdict::Degraded(3, "redis unreachable for --report-max-delay-secs")
        );
    });
}

// `Electing` | overdue, its election in flight (the claim taken, its master hung before the
// round's next answer), Redis out of step meanwhile (the heartbeat's master down) |
// `Electing` until the answer, never its own count: the claim may be made, and the others
// leave the window to it (the chaos harness's cluster seed 2, session 14)
#[test]
fn electing_overdue_waits_for_its_election_in_flight_whatever_the_health_says() {
    on_paused_clock(|| async {
        let bench = Bench::with_two_masters(ME).await;
        // A window that has ended whose claim is on the other master than the heartbeats.
        let heartbeats_master = bench.shard_of_key("verve:instances");
        let w = (0..10)
            .map(|back| bench.window() - back)
            .find(|&w| bench.shard_of_claim(w) != heartbeats_master)
            .expect("a window whose claim is on the other master");
        let claims_master = bench.shard_of_claim(w);
        let mut recorder = Recorder::on(bench);
        recorder.record(w, &[1, 2, 3]);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        recorder.fault_after_write(b"verve:reported:", Fault::Hung);
        let claim_taken =
            |r: &Recorder| r.servers.lock().unwrap().fault(claims_master) == Fault::Hung;
        for _ in 0..1_000 {
            recorder.replicator.step(&recorder.open, &mut Vec::new());
            recorder.replicator.mark_flushed(w);
            assert_eq!(
                recorder.verdict_now(w, 3, [true, false], false),
                Verdict::Wait
            );
            if claim_taken(&recorder) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(claim_taken(&recorder));
        recorder
            .servers
            .lock()
            .unwrap()
            .set_fault(heartbeats_master, Fault::Down);
        recorder.rounds_until(|_, health| !health.is_up()).await;
        // Out of step, the election not answered yet: it waits.
        assert_eq!(
            recorder.verdict_now(w, 3, [true, false], false),
            Verdict::Wait
        );
    });
}

// `Skipped` or `Reported`, none of its ids here | epoch moves on, Redis answers again, before
// the keys' expiry | the same | its flush mark (of no ids) set again: a reporter waits for
// the marks of live instances (defect 20)
#[test]
fn a_window_concluded_without_ids_here_has_its_flush_mark_set_again_after_redis_lost_it() {
    on_paused_clock(|| async {
        let mut recorder = Recorder::new().await;
        let w = recorder.window() - 1;
        let marks = format!("verve:flushed:{{verve:w:{}}}", Bench::start(w));
        let marked = |recorder: &Recorder| -> BTreeSet<String> {
            FromRedisValue::from_redis_value(&recorder.redis(&["SMEMBERS", &marks])).unwrap()
        };
        for _ in 0..100 {
            recorder.replicator.step(&recorder.open, &mut Vec::new());
            recorder.replicator.mark_flushed(w);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(marked(&recorder), BTreeSet::from([ME.to_owned()]));
        recorder.replicator.forget(w, 0, WINDOW.end(w));

        let epoch = recorder.health.epoch();
        recorder.servers.lock().unwrap().restart_empty(0);
        recorder
            .rounds_until(|_, health| health.epoch() != epoch && health.is_up())
            .await;
        for _ in 0..100 {
            recorder.replicator.step(&recorder.open, &mut Vec::new());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(marked(&recorder), BTreeSet::from([ME.to_owned()]));
    });
}

// any | shutdown: Redis lost the ids and marks after they were pushed and marked | `Pushing`
// again: every id and mark set again, then the window reported (defect 22)
#[test]
fn a_shutdown_whose_redis_lost_its_ids_after_it_marked_them_pushes_them_again() {
    on_paused_clock(|| async {
        let mut recorder = Recorder::new().await;
        let w = recorder.window() - 1;
        recorder.record(w, &[1, 2, 3]);
        recorder.rounds_until(|r, _| r.unconfirmed_ids() == 0).await;
        // Redis hangs once the shutdown has set its flush mark, then restarts empty.
        recorder.fault_after_write(b"verve:flushed:", Fault::Hung);
        let mut leaving = Leaving::new(
            recorder.clock.now(),
            recorder.clock.instant() + Duration::from_secs(10),
        );
        let mut restarted = false;
        let departure = loop {
            if let Some(departure) = recorder.leave_step(&mut leaving, &[w]) {
                break departure;
            }
            let hung = recorder.servers.lock().unwrap().reach(SERVER).map(|r| r.1);
            if !restarted && hung == Some(Fault::Hung) {
                recorder.servers.lock().unwrap().restart_empty(0);
                restarted = true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(restarted);
        assert_eq!(departure.reported, [(w, 3)]);
        assert_eq!(recorder.in_redis(w), BTreeSet::from([1, 2, 3]));
    });
}

// `Leaving` (`Reporting`) | the election of one of the windows nobody reports waits (a live
// instance's flush mark missing) | the later windows reported meanwhile; the waiting one its
// own count at the deadline (the simulator's seed 435, where the later ones waited behind it
// until the deadline though another instance had reported them)
#[test]
fn a_shutdown_whose_election_of_one_window_waits_reports_the_later_ones_meanwhile() {
    on_paused_clock(|| async {
        let (mut recorder, first, second) = Recorder::two_due_windows().await;
        // Another instance, live throughout, has marked the second window flushed only.
        let marks = format!("verve:flushed:{{verve:w:{}}}", Bench::start(second));
        recorder.redis(&["SADD", &marks, OTHER]);
        let mut leaving = Leaving::new(
            recorder.clock.now(),
            recorder.clock.instant() + Duration::from_secs(5),
        );
        let departure = loop {
            recorder.heartbeat(OTHER);
            if let Some(departure) = recorder.leave_step(&mut leaving, &[first, second]) {
                break departure;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert_eq!(departure.reported, [(second, 3)]);
        assert!(matches!(
            departure.unreported_ids[..],
            [(w, Verdict::Degraded(2, _))] if w == first
        ));
    });
}

// `Electing` of two due windows, each round in order | the first's election waits (a live
// instance's flush mark missing); the second was reported by another without this
// instance's ids | the second `Amended` meanwhile (the simulator's seed 1504, where later
// windows waited behind one whose election waited, past their amend horizons)
#[test]
fn an_election_that_waits_holds_up_no_later_windows_amendment() {
    on_paused_clock(|| async {
        let (mut recorder, first, second) = Recorder::two_due_windows().await;
        // Another instance, live throughout, has not marked the first window flushed, and
        // reported the second with its own id only.
        let start = Bench::start(second);
        recorder.redis(&["SADD", &format!("verve:w:{start}"), "6"]);
        recorder.redis(&["SET", &format!("verve:reported:{start}"), OTHER]);
        recorder.redis(&["SET", &format!("verve:counted:{start}"), OTHER]);
        recorder.redis(&["SET", &format!("verve:count:{start}"), "1"]);
        let mut second_verdict = Verdict::Wait;
        for _ in 0..2_000 {
            recorder.heartbeat(OTHER);
            recorder.replicator.step(&recorder.open, &mut Vec::new());
            for w in [first, second] {
                recorder.replicator.mark_flushed(w);
            }
            let first_verdict = recorder.verdict_now(first, 2, [false, false], false);
            assert_eq!(first_verdict, Verdict::Wait);
            second_verdict = recorder.verdict_now(second, 3, [false, false], false);
            if second_verdict != Verdict::Wait {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(second_verdict, Verdict::Amended(4));
    });
}

// `Electing` (held from its log) | an earlier process's claim of it kept beside the log, its
// outcome not known; Redis out of step until twice overdue | `Degraded` with the claim's
// count, where larger: the others may have left the window to the claim (defect 38)
#[test]
fn electing_cut_off_that_may_hold_an_earlier_claim_writes_its_count_twice_overdue() {
    on_paused_clock(|| async {
        let (_dir, mut recorder, w) = Recorder::cut_off_with_an_earlier_claim().await;
        assert_eq!(
            recorder.verdict_now(w, 1, [true, false], false),
            Verdict::Wait
        );
        assert!(matches!(
            recorder.verdict_now(w, 1, [true, true], false),
            Verdict::Degraded(2, _)
        ));
    });
}

// any | shutdown, Redis out of step until the deadline, an earlier process's claim of a window
// kept beside the log, its outcome not known | `Departed`, nothing pushed: the claim's count
// given for the window's own report, where larger (defect 38)
#[test]
fn a_shutdown_cut_off_gives_the_counts_of_the_claims_it_may_hold() {
    on_paused_clock(|| async {
        let (_dir, mut recorder, w) = Recorder::cut_off_with_an_earlier_claim().await;
        let mut leaving = Leaving::new(
            recorder.clock.now(),
            recorder.clock.instant() + Duration::from_secs(1),
        );
        let departure = loop {
            if let Some(departure) = recorder.leave_step(&mut leaving, &[w]) {
                break departure;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(!departure.pushed);
        assert_eq!(departure.unsure_claims, BTreeMap::from([(w, 2)]));
    });
}
