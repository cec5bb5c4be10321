//! The rounds driven by hand, without I/O: each test gives a round the replies Redis would,
//! and reads the commands and effects each transition gives back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use redis::Value;

use super::super::keys::restart_member;
use super::super::nodes::Routed;
use super::super::{RedisHealth, RedisSettings, Topology};
use super::*;
use crate::clock::Clock;
use crate::config::{DistributedSettings, RedisTarget};
use crate::wal::claims::Kept;
use crate::wal::seen::{Restart, Sightings};
use crate::window::WindowClock;

const ME: &str = "i0/2";
const OTHER: &str = "i1/1";
const WINDOW: WindowClock = WindowClock::new(60);
/// The window's start, as its keys name it.
const START: &str = "2026-12-06T00:00:00Z";
/// The run id of the server `info` answers for.
const RUN_ID: &str = "5e1f0c4b9a8d7e6f5e1f0c4b9a8d7e6f5e1f0c4b";

/// A process's memory and what its rounds read, on a clock the test moves.
struct Machine {
    memory: Memory,
    settings: RedisSettings,
    health: RedisHealth,
    time: Clock,
    elapsed_ms: Arc<AtomicU64>,
}

impl Machine {
    /// A process at the end of the window of `START`, Redis answering for 3 s (settled), that
    /// read the live instances before it ended.
    fn new() -> Machine {
        let elapsed_ms = Arc::new(AtomicU64::new(0));
        let driver = Arc::clone(&elapsed_ms);
        let origin = UNIX_EPOCH + Duration::from_hours(499_032) + Duration::from_secs(57);
        let time = Clock::driven(origin, move || {
            Duration::from_millis(driver.load(Ordering::Relaxed))
        });
        let url = "redis://sim:6379";
        let distributed = DistributedSettings {
            redis: RedisTarget::Single(url.to_owned()),
            shards: 1,
            report_max_delay: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
        };
        let topology = Topology::single(url).expect("a Redis URL");
        let settings = RedisSettings::new(topology, ME.to_owned(), WINDOW, &distributed);
        let health = RedisHealth::new(time.clone());
        health.answered();
        // Live before the window ended: it knows who was.
        let mut memory = Memory::default();
        memory.saw_live(
            &[ME.to_owned()],
            time.now(),
            settings.key_ttl,
            settings.heartbeat_ttl,
        );
        let machine = Machine {
            memory,
            settings,
            health,
            time,
            elapsed_ms,
        };
        machine.wait(Duration::from_secs(3));
        machine
    }

    fn wait(&self, d: Duration) {
        self.elapsed_ms
            .fetch_add(super::millis(d), Ordering::Relaxed);
    }

    /// The memory, and the context the rounds read.
    fn parts(&mut self) -> (&mut Memory, Context<'_>) {
        let Machine {
            memory,
            settings,
            health,
            time,
            ..
        } = self;
        let cx = Context {
            settings,
            master_slots: vec![0],
            clock: WINDOW,
            time,
            health,
        };
        (memory, cx)
    }

    /// The window of `START`, which has just ended.
    fn window(&self) -> WindowIndex {
        WINDOW.window_of(self.time.now()) - 1
    }

    /// An election of the window, neither overdue nor adopted.
    fn settle(&mut self) -> Next<Settle> {
        let window = self.window();
        let (memory, cx) = self.parts();
        Settle::start(window, false, false, memory, &cx)
    }

    /// The state `next` runs, after checking the commands it issues (as redis-cli would
    /// send them) and the effects before them.
    fn expect<R: Round>(next: Next<R>, effects: &[Effect], commands: &[&str]) -> R {
        assert_eq!(next.effects, effects);
        match next.then {
            Then::Run(state, cmds) => {
                assert_eq!(text(&cmds), commands);
                state
            }
            Then::Done(_) => panic!("the round ended; expected {commands:?}"),
        }
    }

    fn step<R: Round>(&mut self, state: R, replies: Option<Vec<Value>>) -> Next<R> {
        let (memory, cx) = self.parts();
        state.step(replies, memory, &cx)
    }
}

/// How the round ended, after checking the effects before its end.
fn outcome<R: Round>(next: Next<R>, effects: &[Effect]) -> R::Outcome {
    assert_eq!(next.effects, effects);
    match next.then {
        Then::Done(outcome) => outcome,
        Then::Run(_, cmds) => panic!("the round goes on with {:?}", text(&cmds)),
    }
}

fn text(cmds: &[Routed]) -> Vec<String> {
    cmds.iter()
        .map(|c| {
            c.cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    redis::Arg::Cursor => "0".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn s(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

fn set(members: &[&str]) -> Value {
    Value::Array(members.iter().map(|m| s(m)).collect())
}

/// `ROLE` of a master with `replicas` replicas.
fn role(replicas: usize) -> Value {
    let replica = Value::Array(vec![s("127.0.0.1"), s("6380"), s("0")]);
    Value::Array(vec![
        s("master"),
        Value::Int(0),
        Value::Array(vec![replica; replicas]),
    ])
}

fn elect() -> Vec<String> {
    vec![
        format!("GET verve:reported:{START}"),
        format!("SET verve:report:{START} {ME} NX PX 1000"),
        format!("GET verve:report:{START}"),
    ]
}

fn tally() -> Vec<String> {
    vec![
        format!("SMEMBERS verve:flushed:{{verve:w:{START}}}"),
        format!("SCARD verve:w:{START}"),
    ]
}

fn claim_it() -> Vec<String> {
    vec![
        format!("SET verve:reported:{START} {ME} NX EX 690"),
        format!("GET verve:reported:{START}"),
        "ROLE".to_owned(),
    ]
}

/// The ids' expiry shortened, the count published, the lease let go.
fn retire(count: u64) -> Vec<String> {
    vec![
        format!("PEXPIRE verve:w:{START} 35000"),
        format!("PEXPIRE verve:flushed:{{verve:w:{START}}} 35000"),
        format!("SET verve:count:{START} {count} PX 30000"),
        format!("UNLINK verve:report:{START}"),
    ]
}

/// The marks both instances' flushes left, as the count's record names them.
fn both() -> String {
    format!("{ME}\n{OTHER}")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The claim this process keeps in the log's directory, counting `count` with `marks`.
fn kept(m: &Machine, count: u64, marks: &str, confirmed: bool) -> Claim {
    Claim {
        window: m.window(),
        holder: ME.to_owned(),
        count,
        marks: marks.to_owned(),
        made_at: m.time.now(),
        confirmed,
        report_written: false,
    }
}

/// Drives an election from its start to the count's record, the lease won, both instances'
/// marks on the shard, `count` ids there.
fn to_the_record(m: &mut Machine, count: i64) -> Settle {
    let next = m.settle();
    let state = Machine::expect(next, &[], &strs(&elect()));
    let next = m.step(state, Some(vec![Value::Nil, Value::Okay, s(ME)]));
    let state = Machine::expect(next, &[], &[&format!("PEXPIRE verve:report:{START} 1000")]);
    let next = m.step(state, Some(vec![Value::Int(1)]));
    let state = Machine::expect(next, &[], &strs(&tally()));
    let next = m.step(state, Some(vec![set(&[ME, OTHER]), Value::Int(count)]));
    let state = Machine::expect(
        next,
        &[],
        &["ZRANGEBYSCORE verve:instances 1796515259000 +inf"],
    );
    let next = m.step(state, Some(vec![set(&[ME, OTHER])]));
    expect_record(next)
}

fn expect_record(next: Next<Settle>) -> Settle {
    let record = format!("SET verve:counted:{START} {} EX 690", both());
    Machine::expect(next, &[], &[&record])
}

/// From the count's record written: the claim, counting `count`, kept as being made, then
/// claimed.
fn to_the_claim(m: &mut Machine, recorded: Settle, count: u64) -> Settle {
    let next = m.step(recorded, Some(vec![Value::Okay]));
    let making = Effect::KeepClaim(kept(m, count, &both(), false));
    Machine::expect(next, &[making], &strs(&claim_it()))
}

#[test]
fn an_election_with_every_mark_records_the_count_keeps_the_claim_claims_then_retires() {
    let mut m = Machine::new();
    let recorded = to_the_record(&mut m, 3);
    let state = to_the_claim(&mut m, recorded, 3);
    let next = m.step(state, Some(vec![Value::Okay, s(ME), role(0)]));
    let made = Effect::KeepClaim(kept(&m, 3, &both(), true));
    let state = Machine::expect(next, &[made], &strs(&retire(3)));
    // Retiring is best effort: a failure does not undo the report.
    let next = m.step(state, None);
    assert_eq!(outcome(next, &[]), Some(Settlement::Won(3)));
}

#[test]
fn a_claim_no_replica_holds_yet_stays_the_floor_of_the_next_rounds_count() {
    let mut m = Machine::new();
    let recorded = to_the_record(&mut m, 3);
    let state = to_the_claim(&mut m, recorded, 3);
    let next = m.step(state, Some(vec![Value::Okay, s(ME), role(1)]));
    // Made, whatever the replica answers: set again from now on should Redis lose it.
    let confirmed = Effect::KeepClaim(kept(&m, 3, &both(), true));
    let state = Machine::expect(next, std::slice::from_ref(&confirmed), &["WAIT 1 500"]);
    let next = m.step(state, Some(vec![Value::Int(0)]));
    assert_eq!(outcome(next, &[confirmed]), Some(Settlement::Claimed(3)));

    // Redis lost an id since: the next round, its claim found held, counts 3 all the same.
    m.wait(Duration::from_millis(50));
    let next = m.settle();
    let state = Machine::expect(next, &[], &strs(&elect()));
    let next = m.step(state, Some(vec![s(ME), Value::Nil, s(OTHER)]));
    let state = Machine::expect(next, &[], &strs(&tally()));
    let next = m.step(state, Some(vec![set(&[ME, OTHER]), Value::Int(2)]));
    let recorded = expect_record(next);
    let state = to_the_claim(&mut m, recorded, 3);
    let next = m.step(state, Some(vec![Value::Okay, s(ME), role(1)]));
    let made = Effect::KeepClaim(kept(&m, 3, &both(), true));
    let state = Machine::expect(next, std::slice::from_ref(&made), &["WAIT 1 500"]);
    let next = m.step(state, Some(vec![Value::Int(1)]));
    let state = Machine::expect(next, &[made], &strs(&retire(3)));
    assert_eq!(
        outcome(m.step(state, Some(Vec::new())), &[]),
        Some(Settlement::Won(3))
    );
}

#[test]
fn a_claim_another_made_first_is_forgotten_here_and_its_count_read_for_this_instances_ids() {
    let mut m = Machine::new();
    let recorded = to_the_record(&mut m, 3);
    let state = to_the_claim(&mut m, recorded, 3);
    let next = m.step(state, Some(vec![Value::Nil, s(OTHER), role(0)]));
    let window = m.window();
    let state = Machine::expect(
        next,
        &[Effect::ForgetClaim(window)],
        &[&format!("GET verve:counted:{START}")],
    );
    let next = m.step(state, Some(vec![s(OTHER)]));
    assert_eq!(
        outcome(next, &[]),
        Some(Settlement::ByOther {
            counted_here: false
        })
    );
}

#[test]
fn a_failure_on_the_way_ends_the_round_without_a_settlement() {
    let mut m = Machine::new();
    let state = to_the_record(&mut m, 3);
    assert_eq!(outcome(m.step(state, None), &[]), None);
}

#[test]
fn an_election_right_after_redis_answers_again_asks_nothing() {
    let mut m = Machine::new();
    m.health.failed(&redis::RedisError::from((
        redis::ErrorKind::ClientError,
        "gone",
    )));
    m.health.answered();
    assert!(matches!(
        outcome(m.settle(), &[]),
        Some(Settlement::NotYet(why)) if why.contains("answers again")
    ));
}

#[test]
fn an_election_whose_own_mark_is_gone_moves_the_epoch_on() {
    let mut m = Machine::new();
    let state = Machine::expect(m.settle(), &[], &strs(&elect()));
    let next = m.step(state, Some(vec![Value::Nil, Value::Okay, s(ME)]));
    let state = Machine::expect(next, &[], &[&format!("PEXPIRE verve:report:{START} 1000")]);
    let state = Machine::expect(
        m.step(state, Some(vec![Value::Int(1)])),
        &[],
        &strs(&tally()),
    );
    let next = m.step(state, Some(vec![set(&[OTHER]), Value::Int(2)]));
    assert!(matches!(
        outcome(next, &[Effect::MarksLost]),
        Some(Settlement::NotYet(why)) if why.contains("flush mark is gone")
    ));
}

/// `INFO server` of a server up for `uptime` seconds, on the machine's clock.
fn info(m: &Machine, uptime: u64) -> Value {
    let now = m.time.now().duration_since(UNIX_EPOCH).unwrap().as_micros();
    s(&format!(
        "# Server\r\nrun_id:{RUN_ID}\r\nserver_time_usec:{now}\r\nuptime_in_seconds:{uptime}\r\n"
    ))
}

/// The claims set again of the window this process reported 2 s ago, its ids' server up for
/// `ids_uptime` seconds, its count's for an hour, the masters found restarted `restarted`:
/// the commands that set them.
fn claims_set_again(ids_uptime: u64, restarted: &[&str]) -> Vec<String> {
    let mut m = Machine::new();
    let window = m.window();
    let claim = kept(&m, 2, ME, true);
    m.memory.counted.insert(window, claim);
    m.wait(Duration::from_secs(2));
    let (memory, cx) = m.parts();
    let next = Reassert::start(memory, &cx);
    let asked = "ZRANGEBYSCORE verve:restarted:{verve:instances} 0 +inf";
    let state = Machine::expect(next, &[], &["INFO server", "INFO server", asked]);
    let replies = vec![info(&m, ids_uptime), info(&m, 3_600), set(restarted)];
    match m.step(state, Some(replies)).then {
        Then::Run(_, cmds) => text(&cmds),
        Then::Done(()) => panic!("no claims set again"),
    }
}

/// A claim this process was making when Redis failed (its outcome not learned), the others
/// having left the window to it, is looked at before the claims go again: found made, it is
/// kept so and set again with the reported windows' claims, though its report is not written
/// yet (the simulator's seed 307: a claimant cut off as it waited for a replica, Redis then
/// restarted empty, and another instance reported the window without the ids the others had
/// forgotten).
#[test]
fn a_claim_whose_outcome_a_failure_hid_is_set_again_once_found_made() {
    let mut m = Machine::new();
    let window = m.window();
    let claim = kept(&m, 2, ME, false);
    m.memory.counted.insert(window, claim.clone());
    let (memory, cx) = m.parts();
    let next = Reassert::start(memory, &cx);
    let state = Machine::expect(next, &[], &[&format!("GET verve:reported:{START}")]);
    let next = m.step(state, Some(vec![s(ME)]));
    let made = Effect::KeepClaim(Claim {
        confirmed: true,
        ..claim
    });
    let asked = "ZRANGEBYSCORE verve:restarted:{verve:instances} 0 +inf";
    Machine::expect(next, &[made], &["INFO server", "INFO server", asked]);
}

/// The commands that mark the count lost, over the count where it survived; then the master's
/// run id read.
fn count_marked_lost() -> Vec<String> {
    vec![
        format!("SET verve:reported:{START} {ME} NX EX 690"),
        format!("SET verve:counted:{START} {ME} NX EX 690"),
        format!("SET verve:count:{START} lost XX KEEPTTL"),
        format!("SET verve:count:{START} lost NX PX 30000"),
        "INFO server".to_owned(),
    ]
}

/// The server of the window's ids restarted after the claim, while its report could be
/// amended: the published count is marked lost, over the count where it survived (defect 18).
#[test]
fn claims_set_again_after_the_ids_server_restarted_mark_the_count_lost_over_it() {
    assert_eq!(claims_set_again(1, &[]), count_marked_lost());
}

/// As above, the master having restarted and its replica, up for an hour, taken over since:
/// another process found the restart (defect 32).
#[test]
fn claims_set_again_after_a_restart_then_a_failover_found_by_another_mark_the_count_lost() {
    let m = Machine::new();
    let restarted = m.time.now() + Duration::from_secs(1);
    let member = restart_member(&Restart {
        slots: (0, 16_383),
        started: restarted,
    });
    assert_eq!(claims_set_again(3_600, &[&member]), count_marked_lost());
}

/// No server restarted: the count reported is set where it is missing, for what is left of
/// the amend horizon (defect 29).
#[test]
fn claims_set_again_without_a_restart_set_the_count_reported_where_it_is_missing() {
    assert_eq!(
        claims_set_again(3_600, &[]),
        [
            format!("SET verve:reported:{START} {ME} NX EX 690"),
            format!("SET verve:counted:{START} {ME} NX EX 690"),
            format!("SET verve:count:{START} 2 NX PX 28000"),
            "INFO server".to_owned(),
        ]
    );
}

/// A flush mark kept apart from the ids it vouches for (on the master of their shard) says
/// nothing of the other shards' ids: the count holds whole the ids of the instances marked on
/// every shard only (defect 12).
#[test]
fn a_tally_holds_whole_the_instances_marked_on_every_shard_only() {
    let shards = [
        set(&[ME, OTHER]),
        Value::Int(2),
        set(&[OTHER]),
        Value::Int(3),
    ];
    let tally = replies::tally(&shards).expect("a tally");
    assert_eq!(tally.marked, [OTHER]);
    assert_eq!(tally.count, 5);
}

/// A process started after the window ended, whose earlier process found the claim's master
/// restarted after it ended (kept beside the log), a replica up long before serving the claim
/// since: the election waits for the instances seen live then to set their claims again
/// (defect 32; the simulator's seed 1213, where the restart's record in Redis had gone with
/// a later restart).
#[test]
fn an_election_waits_for_the_claimants_after_a_restart_an_earlier_process_found() {
    let mut m = Machine::new();
    let end = WINDOW.end(m.window());
    m.wait(Duration::from_secs(5));
    let ms = Duration::from_millis;
    let sightings = Sightings {
        first_read_at: end - ms(10_000),
        read_at: end + ms(500),
        last_seen: vec![("i1".to_owned(), end + ms(500))],
    };
    m.memory = Memory::recovered(Kept::default(), Some(sightings));
    let restarted = end + ms(1_000);
    m.health.recall_restarts(vec![Restart {
        slots: (0, 16_383),
        started: restarted,
    }]);
    let state = to_the_returned(&mut m, restarted);
    // Said of the master before a second restart within the same second (defect 33): still
    // waiting, no claim set meanwhile. Said of the master as it is now: elected.
    let before = format!("{OTHER}@{:040x}", 7);
    let next = m.step(state, Some(vec![set(&[&before])]));
    let state = Machine::expect(next, &[], &[&format!("GET verve:reported:{START}")]);
    let next = m.step(state, Some(vec![Value::Nil]));
    assert!(matches!(
        outcome(next, &[]),
        Some(Settlement::NotYet(why)) if why.contains("set their claims again")
    ));
    let state = to_the_returned(&mut m, restarted);
    let now = format!("{OTHER}@{RUN_ID}");
    let next = m.step(state, Some(vec![set(&[&before, &now])]));
    let lease = format!("SET verve:report:{START} {ME} NX PX 1000");
    let elect = [
        format!("GET verve:reported:{START}"),
        lease,
        format!("GET verve:report:{START}"),
    ];
    Machine::expect(next, &[], &elect.each_ref().map(String::as_str));
}

/// Waiting after a restart for an instance that could have claimed the window (cut off from
/// Redis), an election finds the claim set again by another: the window is that one's, not
/// held up until every awaited instance is back (defect 45; the simulator's seed 1717 waited
/// 35 s, and the amendment of the report came past its horizon).
#[test]
fn an_election_waiting_for_claimants_after_a_restart_takes_a_claim_set_again_meanwhile() {
    let mut m = Machine::new();
    let end = seen_live_after_the_end(&mut m, &["i1", "i2"]);
    let restarted = end + Duration::from_secs(1);
    m.health.recall_restarts(vec![Restart {
        slots: (0, 16_383),
        started: restarted,
    }]);
    let state = to_the_returned(&mut m, restarted);
    // i1 has set its claims again; i2 has not.
    let next = m.step(state, Some(vec![set(&[&format!("{OTHER}@{RUN_ID}")])]));
    let state = Machine::expect(next, &[], &[&format!("GET verve:reported:{START}")]);
    let next = m.step(state, Some(vec![s(OTHER)]));
    Machine::expect(next, &[], &[&format!("GET verve:counted:{START}")]);
}

/// Claims set again, this process says so of each master by the run id it answered with on
/// the connection that set them.
/// Defect 41: a restart this process found other than by its probe (a connection that
/// found the master restarted, a slot map that changed) left it blind to who was live, so an
/// election waited twice the delay where it should have waited for the instances it saw.
#[test]
fn an_election_after_a_restart_found_by_a_connection_waits_for_the_instances_seen_live() {
    let mut m = Machine::new();
    let end = seen_live_after_the_end(&mut m, &["i1"]);
    let restarted = end + Duration::from_secs(1);
    m.health.server_restarted(&[(0, 16_383)], restarted);
    to_the_returned(&mut m, restarted);
}

/// A process whose earlier processes read `instances` live half a second after the window
/// ended, 5 s ago: the window's end.
fn seen_live_after_the_end(m: &mut Machine, instances: &[&str]) -> SystemTime {
    let end = WINDOW.end(m.window());
    m.wait(Duration::from_secs(5));
    let seen_at = end + Duration::from_millis(500);
    let last_seen = instances.iter().map(|&i| (i.to_owned(), seen_at)).collect();
    m.memory = Memory::recovered(
        Kept::default(),
        Some(Sightings {
            first_read_at: end - Duration::from_secs(10),
            read_at: seen_at,
            last_seen,
        }),
    );
    end
}

/// An election of the window after its claim's master restarted at `restarted`, since it
/// ended: the state that asks which instances have set their claims again since.
fn to_the_returned(m: &mut Machine, restarted: SystemTime) -> Settle {
    let end = WINDOW.end(m.window());
    let next = m.settle();
    let end_ms = super::millis_since_epoch(end);
    let asked = format!("ZRANGEBYSCORE verve:restarted:{{verve:instances}} {end_ms} +inf");
    let state = Machine::expect(next, &[], &["INFO server", &asked]);
    let next = m.step(state, Some(vec![info(m, 3_600), set(&[])]));
    let restarted_ms = super::millis_since_epoch(restarted);
    let returned = format!("ZRANGEBYSCORE verve:returned {restarted_ms} +inf");
    Machine::expect(next, &[], &[&returned])
}

#[test]
fn claims_set_again_are_said_set_of_the_masters_run_ids_read_after_them() {
    let mut m = Machine::new();
    let (memory, cx) = m.parts();
    let next = Reassert::start(memory, &cx);
    let state = Machine::expect(next, &[], &["INFO server"]);
    let next = m.step(state, Some(vec![info(&m, 3_600)]));
    let now_ms = super::millis_since_epoch(m.time.now());
    let said = format!("ZADD verve:returned {now_ms} {ME}@{RUN_ID}");
    let horizon = now_ms - 690_000;
    let trimmed = format!("ZREMRANGEBYSCORE verve:returned -inf {horizon}");
    let state = Machine::expect(next, &[], &[&said, &trimmed]);
    outcome(m.step(state, Some(vec![Value::Int(1), Value::Int(0)])), &[]);
}

/// The restarts kept in `verve:restarted` read back as written; a member verve did not write
/// is passed over, so that it cannot stop an election.
#[test]
fn restarts_kept_in_redis_read_back_and_other_members_are_passed_over() {
    let restart = Restart {
        slots: (5_461, 10_922),
        started: UNIX_EPOCH + Duration::from_secs(1_796_577_541),
    };
    assert_eq!(restart_member(&restart), "5461-10922@1796577541000");
    let kept = set(&[&restart_member(&restart), "by hand"]);
    assert_eq!(replies::restarts(&kept), Some(vec![restart]));
}

#[test]
fn a_process_name_is_its_instance_id_a_pid_and_a_start() {
    assert_eq!(
        instance_of("10.0.0.7:8080/4242-1796577541300"),
        "10.0.0.7:8080"
    );
    assert_eq!(instance_of("a/b/4242-1796577541300"), "a/b");
    assert_eq!(instance_of("bench"), "bench");
}
