//! Several instances sharing one real redis-server or a real Redis Cluster: one exact report
//! per window across all stats logs, through Redis restarts, outages, cluster failovers, a
//! killed master and a killed instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use verve::config::Durability;

use crate::common::redis_cluster::RedisCluster;
use crate::common::{
    Conn, FaultProxy, LinkFault, RedisServer, Report, SharedRedis, Verve, VerveOptions,
    WindowedIds, reports_of, send_ids, sleep_until_next_window,
};
use crate::common::{redis_cli, server_started_ms};

const WINDOW_SECS: u64 = 2;
const MARGIN: Duration = Duration::from_millis(150);
const HEARTBEAT_MS: u64 = 1000;
const WAIT_LOG: Duration = Duration::from_secs(10);

/// An instance named `name` counting through `redis`, with 2 s windows; callers add their
/// own options and start it.
fn instance(redis: &impl SharedRedis, name: &str) -> VerveOptions {
    Verve::options()
        .window_secs(WINDOW_SECS)
        .workers(1)
        .report_grace(Duration::from_millis(500))
        .redis_heartbeat(Duration::from_millis(HEARTBEAT_MS))
        .instance_id(name)
        .redis(redis)
}

/// Instances a and b with `--report-max-delay-secs` `delay`, b's connections to `redis`
/// crossing a link the test can fault.
fn a_and_b_behind_a_link(redis: &RedisServer, delay: Duration) -> (Verve, Verve, FaultProxy) {
    let link = FaultProxy::start(([127, 0, 0, 1], redis.port).into());
    let a = instance(redis, "a").report_max_delay(delay).start();
    let b = instance(redis, "b")
        .report_max_delay(delay)
        .redis_url(&link_url(&link))
        .start();
    (a, b, link)
}

/// The Redis URL of an instance whose connections to Redis cross `link`.
fn link_url(link: &FaultProxy) -> String {
    format!("redis://{}", link.addr())
}

/// Load on every instance: each round sends ids shared by all instances (the same ids to all
/// at about the same moment) and ids only one instance sees.
struct Load {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<WindowedIds>>,
}

impl Load {
    fn start(addrs: &[SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(true));
        let round = Arc::new(AtomicI64::new(0));
        let threads = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (stop, pause, round) =
                    (Arc::clone(&stop), Arc::clone(&pause), Arc::clone(&round));
                thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut seen = WindowedIds::default();
                    let mut r = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        if pause.load(Ordering::Relaxed) {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        // Instance 0 leads the rounds, the others follow, so shared ids
                        // reach all of them close together.
                        if i == 0 {
                            r = round.fetch_add(1, Ordering::Relaxed);
                        } else {
                            r = round.load(Ordering::Relaxed).max(r + 1);
                        }
                        let shared = (0..10).map(|k| (r * 10 + k) % 3000);
                        let own = (0..5).map(|k| (i as i64 + 1) * 1_000_000_000 + r * 5 + k);
                        let ids: Vec<i64> = shared.chain(own).collect();
                        send_ids(&mut conn, &ids, WINDOW_SECS, &mut seen);
                        thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        Load {
            stop,
            pause,
            threads,
        }
    }

    /// Sends during the middle of each of the next `windows` windows; `during(k)` runs at
    /// the middle of window k. Returns the first window loaded.
    fn run_windows(&self, windows: u64, mut during: impl FnMut(u64)) -> u64 {
        let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
        for k in 0..windows {
            self.pause.store(false, Ordering::Relaxed);
            thread::sleep(
                (Duration::from_secs(WINDOW_SECS) / 2)
                    .checked_sub(MARGIN)
                    .unwrap(),
            );
            during(k);
            let left = (first + k + 1) * WINDOW_SECS;
            let pause_at = std::time::UNIX_EPOCH + Duration::from_secs(left) - MARGIN;
            if let Ok(d) = pause_at.duration_since(SystemTime::now()) {
                thread::sleep(d);
            }
            self.pause.store(true, Ordering::Relaxed);
            sleep_until_next_window(WINDOW_SECS, MARGIN);
        }
        first
    }

    fn finish(self) -> Vec<WindowedIds> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn union(seen: &[WindowedIds]) -> WindowedIds {
    let mut all = WindowedIds::default();
    for s in seen {
        all.merge(s.clone());
    }
    all
}

/// Returns the first window loaded (it and the next three are reported) and the instances.
fn one_exact_report_per_window(
    redis: &impl SharedRedis,
    options: fn(VerveOptions) -> VerveOptions,
) -> (u64, [Verve; 2]) {
    let a = options(instance(redis, "a")).start();
    let b = options(instance(redis, "b")).start();
    let load = Load::start(&[a.addr, b.addr]);
    let first = load.run_windows(3, |_| {});
    let seen = union(&load.finish());
    for w in first..first + 4 {
        let reports = reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(15));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        assert_eq!(reports[0].mode, "distributed");
        seen.assert_count(w, reports[0].unique_requests);
    }
    // The idle window after the load counts nothing.
    assert_eq!(
        reports_of(&[&a, &b], first + 3, WINDOW_SECS, Duration::ZERO)[0].unique_requests,
        0
    );
    (first, [a, b])
}

#[test]
fn two_instances_report_each_window_once_with_the_global_count() {
    let redis = RedisServer::start();
    let (first, _) = one_exact_report_per_window(&redis, |o| o.redis_shards(4));
    // A reported window's ids, their flush marks and its published count stay for the amend
    // horizon (`--report-max-delay-secs`, 60 s), not the keys' expiry (11 minutes), the ids
    // and marks 5 s longer; its claim stays.
    let cli = |args: &[&str]| crate::common::redis_cli(redis.port, args).unwrap();
    let pttl = |key: &str| -> i64 { cli(&["pttl", key]).trim().parse().unwrap() };
    let keys = cli(&["keys", "verve:*"]);
    for w in first..first + 3 {
        let start = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(w * WINDOW_SECS),
        );
        assert!(keys.contains(&format!("verve:reported:{start}")), "{keys}");
        let count = pttl(&format!("verve:count:{start}"));
        assert!(
            (1..=60_000).contains(&count),
            "verve:count:{start} expires in {count} ms"
        );
        let shards: Vec<i64> = (0..4)
            .flat_map(|s| {
                let shard = format!("verve:w:{start}:{s}");
                [pttl(&shard), pttl(&format!("verve:flushed:{{{shard}}}"))]
            })
            .collect();
        assert!(
            shards.iter().all(|&ms| ms > count && ms <= 65_000),
            "the ids and marks of {start} expire in {shards:?} ms, the count in {count}"
        );
    }
}

#[test]
fn one_shard_gives_the_same_exact_counts() {
    one_exact_report_per_window(&RedisServer::start(), |o| o.redis_shards(1));
}

#[test]
fn cluster_two_instances_report_each_window_once_with_the_global_count() {
    // The default in cluster mode: 64 shard keys, spread over the three masters.
    one_exact_report_per_window(&RedisCluster::start(), |o| o);
}

/// The key whose holder reports window `w`.
fn marker(w: u64) -> String {
    let start = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(w * WINDOW_SECS),
    );
    format!("verve:reported:{start}")
}

#[test]
fn cluster_the_report_claim_survives_a_failover_and_a_kill_at_the_election() {
    let cluster = RedisCluster::start();
    let a = instance(&cluster, "a").start();
    let b = instance(&cluster, "b").start();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let load = Load::start(&[a.addr, b.addr]);
    // At the grace's end (500 ms into the next window), while the instances elect the
    // reporter of the window just closed, the master holding its report marker fails over
    // (the first time) or is killed (the second).
    let first = crate::common::window_of(SystemTime::now(), WINDOW_SECS) + 1;
    let chaos = {
        let cluster = Arc::clone(&cluster);
        thread::spawn(move || {
            for (k, kill) in [(2, false), (4, true)] {
                let at = std::time::UNIX_EPOCH
                    + Duration::from_secs((first + k) * WINDOW_SECS)
                    + Duration::from_millis(505);
                if let Ok(d) = at.duration_since(SystemTime::now()) {
                    thread::sleep(d);
                }
                let mut cluster = cluster.lock().unwrap();
                let master = cluster.master_of_key(&marker(first + k - 1));
                if kill {
                    cluster.kill(master);
                } else {
                    cluster.failover(master);
                }
            }
        })
    };
    let loaded = load.run_windows(6, |_| {});
    chaos.join().unwrap();
    let seen = union(&load.finish());
    for w in loaded..loaded + 6 {
        let reports = reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(30));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        assert_eq!(reports[0].mode, "distributed", "window {w}");
        seen.assert_count(w, reports[0].unique_requests);
    }
}

#[test]
fn cluster_a_failover_and_a_killed_master_lose_nothing_and_report_once() {
    let mut cluster = RedisCluster::start();
    let a = instance(&cluster, "a").start();
    let b = instance(&cluster, "b").start();
    let load = Load::start(&[a.addr, b.addr]);
    // The master holding a window's report marker, the key that makes its reporter the only
    // one, fails over (window 1) or is killed (window 3) while the window is loaded.
    let marker_of_now = || marker(crate::common::window_of(SystemTime::now(), WINDOW_SECS));
    let mut killed = None;
    let first = load.run_windows(5, |k| {
        if k == 1 {
            cluster.failover(cluster.master_of_key(&marker_of_now()));
        }
        if k == 3 {
            let master = cluster.master_of_key(&marker_of_now());
            cluster.kill(master);
            killed = Some(master);
        }
    });
    let seen = union(&load.finish());
    for w in first..first + 5 {
        let reports = reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(30));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        assert_eq!(reports[0].mode, "distributed", "window {w}");
        seen.assert_count(w, reports[0].unique_requests);
    }
    // /metrics tells both: the redirections followed, and the errors of the killed node.
    let sum = |series: &str| -> u64 {
        [&a, &b]
            .iter()
            .map(|v| crate::common::metric(&crate::common::scrape(v.addr), series))
            .sum()
    };
    assert!(sum("verve_redis_redirections_total{kind=\"moved\"}") > 0);
    let node = format!("127.0.0.1:{}", killed.unwrap());
    assert!(sum(&format!("verve_redis_errors_total{{node=\"{node}\"}}")) > 0);
}

#[test]
fn redis_killed_and_restarted_empty_loses_nothing() {
    killed_and_restarted_empty(&mut RedisServer::start());
}

#[test]
fn cluster_killed_and_restarted_empty_loses_nothing() {
    killed_and_restarted_empty(&mut RedisCluster::start());
}

fn killed_and_restarted_empty(redis: &mut impl SharedRedis) {
    let a = instance(redis, "a").start();
    let b = instance(redis, "b").start();
    let load = Load::start(&[a.addr, b.addr]);
    let mut killed_at = None;
    let first = load.run_windows(4, |k| {
        if k == 1 {
            redis.kill_all();
            killed_at = Some(Instant::now());
        }
        if k == 2 {
            // Restarted empty about two seconds later, in the middle of the next window.
            assert!(killed_at.unwrap().elapsed() < Duration::from_secs(3));
            redis.start_all_empty();
        }
    });
    // Every request was answered ok (send_ids asserts it) and every window is exact.
    let seen = union(&load.finish());
    for w in first..first + 4 {
        let reports = reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(30));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        assert_eq!(reports[0].mode, "distributed", "window {w}");
        seen.assert_count(w, reports[0].unique_requests);
    }
    // The instances found every master restarted and keep it, with the slots it serves and
    // its start, where a process that did not see the restart reads it (defect 32).
    assert_eq!(redis.sorted_set(RESTARTED), redis.masters_as_restarts());
}

/// Where the instances keep the Redis masters they found restarted.
const RESTARTED: &str = "verve:restarted:{verve:instances}";

/// A master killed and started again at once, empty, keeps its slots; its replica syncs the
/// empty data set and then takes over, its own start long before (defect 32 of
/// docs/reliability.md). The instance keeps the restart with the slots the master served
/// and the start it came back with, whoever serves them since.
#[test]
fn cluster_a_master_restarted_empty_then_replaced_by_its_replica_is_kept_as_restarted() {
    let mut cluster = RedisCluster::start();
    let a = instance(&cluster, "a").start();
    let load = Load::start(&[a.addr]);
    let master = cluster.masters()[0];
    let ranges = cluster.slot_ranges(master);
    let mut started = None;
    load.run_windows(3, |k| match k {
        0 => {
            cluster.kill(master);
            cluster.restart_node(master);
            cluster.wait_ready(Duration::from_secs(30));
            started = Some(server_started_ms(master));
        }
        1 => {
            let promoted = cluster.failover(master);
            assert_ne!(promoted, master);
        }
        _ => {}
    });
    load.finish();
    let started = started.unwrap();
    let kept: std::collections::BTreeSet<String> =
        ranges.iter().map(|r| format!("{r}@{started}")).collect();
    assert_eq!(cluster.sorted_set(RESTARTED), kept);
}

#[test]
fn a_long_outage_gives_degraded_local_counts_then_exact_ones_again() {
    long_outage(&mut RedisServer::start());
}

#[test]
fn cluster_a_long_outage_gives_degraded_local_counts_then_exact_ones_again() {
    long_outage(&mut RedisCluster::start());
}

fn long_outage(redis: &mut impl SharedRedis) {
    let a = instance(redis, "a")
        .report_max_delay(Duration::from_secs(1))
        .start();
    let b = instance(redis, "b")
        .report_max_delay(Duration::from_secs(1))
        .start();
    let load = Load::start(&[a.addr, b.addr]);
    let mut ready_during_outage = None;
    let first = load.run_windows(6, |k| match k {
        0 => redis.kill_all(),
        1 => {
            let answer = Conn::open(a.addr).get("/readyz");
            ready_during_outage = Some((answer.status, answer.body_str().to_owned()));
        }
        3 => redis.start_all_empty(),
        _ => {}
    });
    let seen = load.finish();
    let (status, body) = ready_during_outage.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("redis"), "{body}");
    let own_reports = |instance: &Verve, w: u64| -> Vec<Report> {
        instance
            .reports()
            .into_iter()
            .filter(|r| r.start_secs() == w * WINDOW_SECS)
            .collect()
    };
    // Window 1 was all outage: each instance reports its own count, marked degraded.
    for (instance, own) in [(&a, &seen[0]), (&b, &seen[1])] {
        let reports = own_reports(instance, first + 1);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].mode, "degraded");
        own.assert_count(first + 1, reports[0].unique_requests);
    }
    // The windows about the outage's ends: each is reported exactly, either by one instance
    // with the global count (Redis answered in time) or by each with its own count.
    let all = union(&seen);
    for w in [first, first + 2, first + 3] {
        reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(30));
        let (by_a, by_b) = (own_reports(&a, w), own_reports(&b, w));
        let both: Vec<&Report> = by_a.iter().chain(&by_b).collect();
        if both.iter().any(|r| r.mode == "distributed") {
            assert_eq!(both.len(), 1, "window {w}: {both:?}");
            all.assert_count(w, both[0].unique_requests);
        } else {
            for (reports, own) in [(&by_a, &seen[0]), (&by_b, &seen[1])] {
                assert_eq!(reports.len(), 1, "window {w}: {both:?}");
                assert_eq!(reports[0].mode, "degraded", "window {w}");
                own.assert_count(w, reports[0].unique_requests);
            }
        }
    }
    // Once Redis is back, reports are exact and distributed again (a whole cluster started
    // again can take some seconds more before its replicas hold the report claims).
    for w in first + 4..first + 6 {
        let reports = reports_of(&[&a, &b], w, WINDOW_SECS, Duration::from_secs(30));
        assert_eq!(
            reports.len(),
            1,
            "window {w}: {reports:?}\na's log: {:#?}\nb's log: {:#?}",
            a.log_lines(),
            b.log_lines()
        );
        assert_eq!(reports[0].mode, "distributed");
        all.assert_count(w, reports[0].unique_requests);
    }
    assert_eq!(Conn::open(a.addr).get("/readyz").status, 200);
}

/// With every replica stopped, no `WAIT` is acknowledged: the instance holding a window's
/// claim must still be the one that reports it, once `--report-max-delay-secs` has passed (a
/// regression: the claimant took its own unreplicated claim for another's, and nobody reported
/// the window).
#[test]
fn cluster_a_claim_no_replica_acknowledges_is_still_reported_once() {
    let redis = RedisCluster::start();
    redis.stop_replicas(true);
    let (_, instances) =
        one_exact_report_per_window(&redis, |o| o.report_max_delay(Duration::from_secs(2)));
    let warned = instances.iter().any(|v| {
        v.log_lines()
            .iter()
            .any(|l| l.contains("no replica acknowledged the report claim"))
    });
    assert!(warned);
    redis.stop_replicas(false);
}

#[test]
fn a_killed_instance_delays_the_others_reports_by_at_most_its_heartbeat() {
    killed_instance(&RedisServer::start());
}

#[test]
fn cluster_a_killed_instance_delays_the_others_reports_by_at_most_its_heartbeat() {
    killed_instance(&RedisCluster::start());
}

fn killed_instance(redis: &impl SharedRedis) {
    let a = instance(redis, "a").start();
    let b = instance(redis, "b").start();
    let load = Load::start(&[a.addr]);
    let first = load.run_windows(4, |k| {
        if k == 1 {
            b.signal(libc::SIGKILL);
        }
    });
    let seen = union(&load.finish());
    assert_eq!(
        reports_of(&[&a, &b], first, WINDOW_SECS, Duration::from_secs(15)).len(),
        1
    );
    // From the window in which b was killed on, a reports every window alone.
    for w in first + 1..first + 4 {
        let reports = reports_of(&[&a], w, WINDOW_SECS, Duration::from_secs(15));
        assert_eq!(reports.len(), 1, "window {w}: {reports:?}");
        seen.assert_count(w, reports[0].unique_requests);
        let end = std::time::UNIX_EPOCH + Duration::from_secs((w + 1) * WINDOW_SECS);
        let delay = reports[0].written_at.duration_since(end).unwrap();
        // grace + heartbeat expiry + a round of slack
        let allowed = Duration::from_millis(500 + HEARTBEAT_MS + 700);
        assert!(
            delay <= allowed,
            "window {w} reported {delay:?} after its end"
        );
    }
}

/// One of the chaos harness's faults (a blackhole on one instance's link to Redis): an
/// instance cut off for longer than the heartbeat expiry but less than
/// `--report-max-delay-secs` was left out of the report (no flush mark, no longer live) and,
/// back in time, found the window reported by the other: the ids it had not pushed were in
/// no report (this test fails so without the fix). It amends the report.
#[test]
fn an_instance_cut_off_past_its_heartbeat_amends_the_report_that_lacks_its_ids() {
    cut_off_past_the_heartbeat(false);
}

/// Redis restarted empty after the report: the window's ids are gone, so an amendment could
/// not count them all; the instance reports its own count.
#[test]
fn an_instance_cut_off_past_its_heartbeat_reports_its_own_count_after_redis_restarted_empty() {
    cut_off_past_the_heartbeat(true);
}

/// b is cut off from Redis while a reports a window without b's flush mark; with
/// `restart_redis`, Redis restarts empty after that report, before b is back.
fn cut_off_past_the_heartbeat(restart_redis: bool) {
    let mut redis = RedisServer::start();
    let (a, b, link) = a_and_b_behind_a_link(&redis, Duration::from_secs(4));
    let load = Load::start(&[a.addr, b.addr]);
    let of_window = |v: &Verve, w: u64| -> Vec<Report> {
        v.reports()
            .into_iter()
            .filter(|r| r.start_secs() == w * WINDOW_SECS)
            .collect()
    };
    // b is cut off from the middle of the first window to the middle of the second: past
    // its heartbeat's expiry and the first window's grace, well before the delay.
    let first = load.run_windows(2, |k| {
        if k == 0 {
            link.set(LinkFault::Blackhole);
            return;
        }
        if restart_redis {
            let first = crate::common::window_of(SystemTime::now(), WINDOW_SECS) - 1;
            let deadline = Instant::now() + Duration::from_secs(3);
            while of_window(&a, first).is_empty() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            redis.kill();
            redis.restart();
        }
        link.set(LinkFault::Pass);
    });
    let seen = load.finish();
    reports_of(&[&a, &b], first, WINDOW_SECS, Duration::from_secs(15));
    // b's own report comes once it answers again.
    thread::sleep(Duration::from_secs(2));
    let (by_a, by_b) = (of_window(&a, first), of_window(&b, first));
    assert_eq!(by_a.len(), 1, "a's report: {by_a:?}");
    assert_eq!(by_a[0].mode, "distributed");
    // a's ids, and some of b's (those pushed before it was cut off), not all: b's report says
    // what it lacked.
    let mut both = seen[0].clone();
    both.merge(seen[1].clone());
    assert!(
        (seen[0].sure[&first].len() as u64..both.upper(first)).contains(&by_a[0].unique_requests),
        "{by_a:?}"
    );
    assert_eq!(by_b.len(), 1, "b's report: {by_b:?}");
    if restart_redis {
        assert_eq!(
            (by_b[0].mode.as_str(), by_b[0].amended),
            ("degraded", false)
        );
        seen[1].assert_count(first, by_b[0].unique_requests);
    } else {
        assert_eq!(
            (by_b[0].mode.as_str(), by_b[0].amended),
            ("distributed", true)
        );
        let mut both = seen[0].clone();
        both.merge(seen[1].clone());
        both.assert_count(first, by_b[0].unique_requests);
    }
}

/// a reports a window while b is cut off; a is killed, Redis restarts empty (a's claim goes
/// with it) and a's next process starts on a's log before b is back. b must find the window
/// claimed, not report it a second time (the 30-minute chaos run of seed 101 did): a's next
/// process set the claim again, in a's name, from the log's directory.
#[test]
fn a_claim_redis_lost_while_its_reporter_was_down_is_set_again_by_its_next_process() {
    claim_lost_while_its_reporter_was_down(Duration::ZERO);
}

/// As above, but b is back before a's next process, and a is away longer than b's wait after
/// Redis answers again (a heartbeat and a probe backoff): b waits for a, which it saw live
/// before the restart, to come back and set its claims again (defect 15 of
/// docs/reliability.md: b reported the window again).
#[test]
fn a_window_redis_lost_the_claim_of_waits_for_its_claimant_to_come_back() {
    claim_lost_while_its_reporter_was_down(Duration::from_secs(4));
}

/// a reports a window while b is cut off; a is killed and Redis restarts empty; b is back
/// `b_first` before a's next process starts.
fn claim_lost_while_its_reporter_was_down(b_first: Duration) {
    let mut redis = RedisServer::start();
    let (a, b, link) = a_and_b_behind_a_link(&redis, Duration::from_secs(4));
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let (mut seen_a, mut seen_b) = (WindowedIds::default(), WindowedIds::default());
    send_ids(
        &mut Conn::open(a.addr),
        &(0..300).collect::<Vec<_>>(),
        WINDOW_SECS,
        &mut seen_a,
    );
    send_ids(
        &mut Conn::open(b.addr),
        &(200..500).collect::<Vec<_>>(),
        WINDOW_SECS,
        &mut seen_b,
    );
    link.set(LinkFault::Blackhole);
    let by_a = reports_of(&[&a], first, WINDOW_SECS, Duration::from_secs(15));
    assert_eq!(by_a[0].mode, "distributed", "{by_a:?}");
    let killed = a.kill();
    redis.kill();
    redis.restart();
    let a = if b_first.is_zero() {
        let a = killed.restart();
        link.set(LinkFault::Pass);
        a
    } else {
        link.set(LinkFault::Pass);
        thread::sleep(b_first);
        killed.restart()
    };
    let by_b = reports_of(&[&b], first, WINDOW_SECS, Duration::from_secs(20));
    thread::sleep(Duration::from_secs(2));
    let reports: Vec<Report> = [&a, &b]
        .iter()
        .flat_map(|v| v.reports())
        .filter(|r| r.start_secs() == first * WINDOW_SECS)
        .collect();
    let distributed = reports.iter().filter(|r| r.mode == "distributed").count();
    assert_eq!(distributed, 1, "{reports:?}");
    // Redis lost the window's ids since the report: b writes its own count, degraded.
    assert_eq!(by_b[0].mode, "degraded", "{by_b:?}");
    seen_b.assert_count(first, by_b[0].unique_requests);
}

#[test]
fn an_instance_stopped_after_a_report_that_lacks_its_ids_amends_it() {
    let redis = RedisServer::start();
    let (a, b, link) = a_and_b_behind_a_link(&redis, Duration::from_secs(6));
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let (mut by_a, mut by_b) = (WindowedIds::default(), WindowedIds::default());
    send_ids(&mut Conn::open(a.addr), &[1, 2, 3], WINDOW_SECS, &mut by_a);
    // b is cut off from Redis, then answers its ids.
    link.set(LinkFault::Blackhole);
    send_ids(
        &mut Conn::open(b.addr),
        &[3, 4, 5, 6],
        WINDOW_SECS,
        &mut by_b,
    );
    // a reports the window without b, which is no longer live.
    let reports = reports_of(&[&a], first, WINDOW_SECS, Duration::from_secs(10));
    assert_eq!(reports.len(), 1, "{reports:?}");
    by_a.assert_count(first, reports[0].unique_requests);
    // b is back and stopped at once, before it would have settled the window itself: it
    // pushes its ids, finds the report without them and amends it.
    link.set(LinkFault::Pass);
    let (status, b_reports) = b.terminate(Duration::from_secs(15));
    assert!(status.success());
    let own: Vec<&Report> = b_reports
        .iter()
        .filter(|r| r.start_secs() == first * WINDOW_SECS)
        .collect();
    assert_eq!(own.len(), 1, "b's reports: {b_reports:?}");
    assert_eq!(
        (own[0].mode.as_str(), own[0].amended),
        ("distributed", true)
    );
    by_a.merge(by_b);
    by_a.assert_count(first, own[0].unique_requests);
}

#[test]
fn an_instance_restarted_under_the_same_id_within_a_window_is_not_taken_for_the_one_before() {
    // A window long enough to stop b and start it again within it.
    let window_secs = 4;
    let redis = RedisServer::start();
    let link = FaultProxy::start(([127, 0, 0, 1], redis.port).into());
    let delay = Duration::from_secs(6);
    let a = instance(&redis, "a")
        .window_secs(window_secs)
        .report_max_delay(delay)
        .start();
    let b = || {
        instance(&redis, "b")
            .window_secs(window_secs)
            .report_max_delay(delay)
            .redis_url(&link_url(&link))
            .start()
    };
    let first_b = b();
    let first = sleep_until_next_window(window_secs, MARGIN);
    let (mut by_a, mut by_first_b, mut by_second_b) = Default::default();
    send_ids(&mut Conn::open(a.addr), &[1, 2, 3], window_secs, &mut by_a);
    send_ids(
        &mut Conn::open(first_b.addr),
        &[3, 4, 5],
        window_secs,
        &mut by_first_b,
    );
    // The first b pushes its ids, marks the window flushed and leaves; the second, under the
    // same id, cannot reach Redis until a has reported the window.
    let (status, _) = first_b.terminate(Duration::from_secs(10));
    assert!(status.success());
    link.set(LinkFault::Blackhole);
    let second_b = b();
    send_ids(
        &mut Conn::open(second_b.addr),
        &[6, 7],
        window_secs,
        &mut by_second_b,
    );
    let reports = reports_of(&[&a], first, window_secs, Duration::from_secs(10));
    link.set(LinkFault::Pass);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].mode, "distributed");
    let mut pushed = by_a;
    pushed.merge(by_first_b);
    pushed.assert_count(first, reports[0].unique_requests);
    // The first b's flush mark is not the second's: the second b amends the report with the
    // ids it lacks, as an instance cut off from Redis does.
    let deadline = Instant::now() + delay + Duration::from_secs(5);
    let own = loop {
        let own: Vec<Report> = second_b
            .reports()
            .into_iter()
            .filter(|r| r.start_secs() == first * window_secs)
            .collect();
        if !own.is_empty() || Instant::now() > deadline {
            break own;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(own.len(), 1, "the second b's reports: {own:?}");
    assert_eq!(
        (own[0].mode.as_str(), own[0].amended),
        ("distributed", true)
    );
    pushed.merge(by_second_b);
    pushed.assert_count(first, own[0].unique_requests);
}

#[test]
fn a_stopped_instance_pushes_its_ids_and_the_other_reports_them() {
    stopped_instance(&RedisServer::start());
}

#[test]
fn cluster_a_stopped_instance_pushes_its_ids_and_the_other_reports_them() {
    stopped_instance(&RedisCluster::start());
}

/// Stops `verve` (SIGTERM) within window `first`: it leaves the window's report to others.
fn stop_within(verve: Verve, first: u64) {
    let (status, reports) = verve.terminate(Duration::from_secs(10));
    assert!(status.success());
    assert!(
        reports.iter().all(|r| r.start_secs() < first * WINDOW_SECS),
        "{reports:?}"
    );
}

fn stopped_instance(redis: &impl SharedRedis) {
    let a = instance(redis, "a").start();
    let b = instance(redis, "b").start();
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let mut seen = WindowedIds::default();
    send_ids(&mut Conn::open(a.addr), &[1, 2, 3], WINDOW_SECS, &mut seen);
    send_ids(
        &mut Conn::open(b.addr),
        &[3, 4, 5, 6],
        WINDOW_SECS,
        &mut seen,
    );
    stop_within(b, first);
    let reports = reports_of(&[&a], first, WINDOW_SECS, Duration::from_secs(10));
    assert_eq!(reports.len(), 1, "{reports:?}");
    seen.assert_count(first, reports[0].unique_requests);
}

/// Every instance that held ids of a window left before it was settled (stopped within it,
/// `--durability off`, so no log brings the ids back): an instance started after the window
/// finds its ids in Redis and reports it (a 30-minute chaos run with `off` left one
/// unreported so).
#[test]
fn a_window_every_holder_left_unsettled_is_reported_by_an_instance_started_after_it() {
    let redis = RedisServer::start();
    let options = |name| instance(&redis, name).durability(Durability::Off);
    let a = options("a").start();
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let mut seen = WindowedIds::default();
    send_ids(
        &mut Conn::open(a.addr),
        &[1, 2, 3, 4, 5],
        WINDOW_SECS,
        &mut seen,
    );
    stop_within(a, first);
    let after = std::time::UNIX_EPOCH + Duration::from_secs((first + 1) * WINDOW_SECS);
    if let Ok(wait) = after.duration_since(SystemTime::now()) {
        thread::sleep(wait + MARGIN);
    }
    let c = options("c").start();
    let reports = reports_of(&[&c], first, WINDOW_SECS, Duration::from_secs(15));
    assert_eq!(reports.len(), 1, "{reports:?}");
    seen.assert_count(first, reports[0].unique_requests);
    // The windows before it that nobody held ids of get no report.
    assert!(
        c.reports()
            .iter()
            .all(|r| r.start_secs() >= first * WINDOW_SECS),
        "{:?}",
        c.reports()
    );
}

/// A window whose ids are in Redis but whose Redis restarted after it ended is not adopted:
/// its claim may have gone with the restart, its reporter killed meanwhile, and it would be
/// reported twice (a 30-minute chaos run with `off` did so, before this check). Here the ids
/// are put back by hand, as a live instance that had not settled the window replays them.
#[test]
fn a_window_whose_redis_restarted_after_it_ended_is_not_adopted() {
    let mut redis = RedisServer::start();
    let a = instance(&redis, "a").durability(Durability::Off).start();
    let first = sleep_until_next_window(WINDOW_SECS, MARGIN);
    let mut seen = WindowedIds::default();
    send_ids(&mut Conn::open(a.addr), &[1, 2, 3], WINDOW_SECS, &mut seen);
    stop_within(a, first);
    let keys = redis_cli(redis.port, &["--scan", "--pattern", "verve:w:*"]).unwrap();
    let held: Vec<(String, Vec<String>)> = keys
        .lines()
        .map(|k| {
            let ids = redis_cli(redis.port, &["SMEMBERS", k]).unwrap();
            (k.to_owned(), ids.lines().map(str::to_owned).collect())
        })
        .collect();
    assert!(!held.is_empty(), "a pushed nothing");
    let after = std::time::UNIX_EPOCH + Duration::from_secs((first + 1) * WINDOW_SECS);
    if let Ok(wait) = after.duration_since(SystemTime::now()) {
        thread::sleep(wait + MARGIN);
    }
    redis.restart();
    for (key, ids) in &held {
        let mut args = vec!["SADD", key.as_str()];
        args.extend(ids.iter().map(String::as_str));
        redis_cli(redis.port, &args).unwrap();
    }
    let c = instance(&redis, "c").durability(Durability::Off).start();
    let reports = reports_of(&[&c], first, WINDOW_SECS, Duration::from_secs(8));
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn callbacks_carry_the_global_count() {
    callbacks_global_count(&RedisServer::start());
}

#[test]
fn cluster_callbacks_carry_the_global_count() {
    callbacks_global_count(&RedisCluster::start());
}

fn callbacks_global_count(redis: &impl SharedRedis) {
    let peer = crate::common::CallbackPeer::start(crate::common::PeerBehaviour::Status(200));
    let a = instance(redis, "a")
        .callback_allow_private()
        .window_secs(3600)
        .start();
    let b = instance(redis, "b")
        .callback_allow_private()
        .window_secs(3600)
        .start();
    let endpoint = crate::common::percent_encode(&peer.url("/hook"));
    // Wait until both are connected to Redis.
    for v in [&a, &b] {
        assert!(
            v.wait_for_log("redis: connected", Duration::from_secs(10))
                .is_some()
        );
    }
    let mut ca = Conn::open(a.addr);
    let mut cb = Conn::open(b.addr);
    for id in 1..=3 {
        assert_eq!(ca.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    // Give a's recorder a round to push its ids.
    thread::sleep(Duration::from_millis(100));
    let answer = cb.get(&format!("/api/verve/accept?id=4&endpoint={endpoint}"));
    assert_eq!(answer.status, 200);
    let received = peer.wait_for(1, Duration::from_secs(10));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["count"], 4, "{body}");
}

/// Callbacks that wait for their window's global count are bounded like the callback queue:
/// with Redis stalled (no answer, no error), past `--callback-queue` of them the rest are
/// shed, counted by reason and logged, and the ones kept are sent once Redis answers.
#[test]
fn callbacks_waiting_for_a_stalled_redis_are_bounded() {
    let redis = RedisServer::start();
    let peer = crate::common::CallbackPeer::start(crate::common::PeerBehaviour::Status(200));
    let a = instance(&redis, "a")
        .callback_allow_private()
        .callback_queue(10)
        .window_secs(3600)
        .start();
    assert!(
        a.wait_for_log("redis: connected", Duration::from_secs(10))
            .is_some()
    );
    let endpoint = crate::common::percent_encode(&peer.url("/hook"));
    // In step with Redis: a callback that waited for the global count has come.
    let mut conn = Conn::open(a.addr);
    let first = conn.get(&format!("/api/verve/accept?id=0&endpoint={endpoint}"));
    assert_eq!(first.status, 200);
    peer.wait_for(1, Duration::from_secs(10));
    redis.pause();
    let mut batch = Vec::new();
    for id in 1..=50 {
        batch.extend_from_slice(
            format!(
                "GET /api/verve/accept?id={id}&endpoint={endpoint} HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    conn.send(&batch);
    for _ in 1..=50 {
        assert_eq!(conn.read_answer(false).unwrap().status, 200);
    }
    assert!(
        a.wait_for_log("too many callbacks waiting for the global count", WAIT_LOG)
            .is_some()
    );
    let scrape = crate::common::scrape(a.addr);
    let shed = crate::common::metric(
        &scrape,
        r#"verve_callbacks_shed_total{reason="waiting_for_count"}"#,
    );
    assert!((40..=50).contains(&shed), "{shed} shed:\n{scrape}");
    redis.resume();
    let sent = 1 + 50 - shed as usize;
    peer.wait_for(sent, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        peer.wait_for(sent, Duration::ZERO).len(),
        sent,
        "a shed callback was sent"
    );
}

/// Redis paused across a window's end for longer than the heartbeat expiry: when it answers
/// again every heartbeat looks stale, so the election waits for no flush mark, and the
/// window's count must still hold every id. (The 30-minute chaos run of seed 101 lost the
/// winner's own ids in this shape; this test has not reproduced that timing, so it guards the
/// shape, not that defect.)
#[test]
fn after_a_pause_longer_than_the_heartbeat_the_reporter_counts_its_own_ids() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a").start();
    let b = instance(&redis, "b").start();
    let load = Load::start(&[a.addr, b.addr]);
    // Paused 0.3 s before the window's end, so that the election starts (at the grace's end)
    // before the response timeout finds Redis gone, and resumed 1.8 s later.
    let first = thread::scope(|scope| {
        load.run_windows(3, |k| {
            if k == 0 {
                thread::sleep(Duration::from_millis(700));
                redis.pause();
                scope.spawn(|| {
                    thread::sleep(Duration::from_millis(1800));
                    redis.resume();
                });
            }
        })
    });
    let seen = union(&load.finish());
    reports_of(&[&a, &b], first, WINDOW_SECS, Duration::from_secs(15));
    thread::sleep(Duration::from_secs(3));
    let reports: Vec<Report> = [&a, &b]
        .iter()
        .flat_map(|v| v.reports())
        .filter(|r| r.start_secs() == first * WINDOW_SECS)
        .collect();
    assert!(
        reports.iter().all(|r| r.mode == "distributed"),
        "{reports:?}"
    );
    // The window's count is its largest: the report, or an amendment of it.
    let count = reports.iter().map(|r| r.unique_requests).max().unwrap();
    seen.assert_count(first, count);
}

/// Defect 14 of docs/reliability.md: the claimant's `WAIT` for a replica is cut by a restart
/// of the whole cluster, which comes back empty. The other instance had seen the claim and
/// forgotten its ids, so the claimant's next count lacks them: not knowing whether it had
/// claimed, it reports the count it read then.
#[test]
fn cluster_a_claim_cut_off_in_its_replica_wait_and_emptied_is_reported_with_every_id() {
    let mut cluster = RedisCluster::start();
    let options = |name| instance(&cluster, name).report_max_delay(Duration::from_secs(5));
    let (a, b) = (options("a").start(), options("b").start());
    let load = Load::start(&[a.addr, b.addr]);
    let first = load.run_windows(1, |_| {});
    let seen = union(&load.finish());
    // No replica acknowledges the claim: the claimant waits the whole 500 ms for one.
    cluster.stop_replicas(true);
    let start = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(first * WINDOW_SECS),
    );
    let claim = format!("verve:reported:{start}");
    let master = cluster.master_of_key(&claim);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(master, &["EXISTS", &claim]).is_none_or(|n| n.trim() != "1") {
        assert!(Instant::now() < deadline, "nobody claimed the window");
        thread::sleep(Duration::from_millis(5));
    }
    // The other instance, settling every 50 ms, sees the claim and leaves the window.
    thread::sleep(Duration::from_millis(200));
    cluster.kill_all();
    cluster.start_all_empty();
    let reports = reports_of(&[&a, &b], first, WINDOW_SECS, Duration::from_secs(30));
    assert_eq!(reports.len(), 1, "{reports:?}");
    seen.assert_count(first, reports[0].unique_requests);
}

/// A master loses writes it acknowledged after an instance marked them flushed: killed, it
/// starts again empty before the cluster fails it over, and its replica syncs the emptiness.
/// The instance is stopped meanwhile, so the reporter counts without it; the count must not
/// take the lost ids for counted (a mark kept on another master did: the 50-second chaos
/// run of seed 2, cluster mode, lost 856 ids so), and once back the instance pushes them
/// again and amends the report.
#[test]
fn cluster_a_master_that_loses_acknowledged_ids_loses_their_flush_marks_too() {
    let mut cluster = RedisCluster::start();
    // A long heartbeat: c, idle and stopped mid-window, counts as live (and holds the
    // report back, waiting for its mark) until after the loss.
    let options = |name| {
        instance(&cluster, name)
            .redis_heartbeat(Duration::from_secs(4))
            .report_max_delay(Duration::from_secs(30))
    };
    let (a, b, c) = (
        options("a").start(),
        options("b").start(),
        options("c").start(),
    );
    // The instances settle no window until a heartbeat and a probe backoff after they found
    // Redis (5 s): the windows before the loaded one must be settled before the restart, or
    // b waits for a and c, stopped, to set their claims on them again (defect 15's wait).
    thread::sleep(Duration::from_secs(6));
    let load = Load::start(&[a.addr, b.addr]);
    let mut losing = None;
    let first = load.run_windows(1, |_| {
        // A master other than the one of `verve:flushed:<w>`, where every shard's marks were
        // kept before, and other than the one of the window's claim: a restart of that one
        // would make b wait for a and c, stopped, to set their claims again (defect 15's
        // wait), past a's --report-max-delay-secs.
        let w = crate::common::window_of(SystemTime::now(), WINDOW_SECS);
        let start = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(w * WINDOW_SECS),
        );
        let marks_before = cluster.master_of_key(&format!("verve:flushed:{start}"));
        let claim = cluster.master_of_key(&format!("verve:reported:{start}"));
        losing = cluster
            .masters()
            .into_iter()
            .find(|&m| m != marks_before && m != claim);
        c.signal(libc::SIGSTOP);
    });
    let seen = union(&load.finish());
    // 150 ms after the window's end: the marks are set at the grace's end (500 ms).
    thread::sleep(Duration::from_millis(850));
    a.signal(libc::SIGSTOP);
    let master = losing.unwrap();
    cluster.kill(master);
    cluster.restart_node(master);
    cluster.wait_ready(Duration::from_secs(30));
    assert!(
        cluster.masters().contains(&master),
        "{master} was failed over"
    );
    let reported = reports_of(&[&b], first, WINDOW_SECS, Duration::from_secs(30));
    assert_eq!(reported.len(), 1, "{reported:?}");
    a.signal(libc::SIGCONT);
    c.signal(libc::SIGCONT);
    // a amends the report with its ids (its process alone has them).
    let amended = a
        .wait_for_log("amending its count", Duration::from_secs(20))
        .is_some();
    thread::sleep(Duration::from_secs(1));
    let reports: Vec<Report> = [&a, &b, &c]
        .iter()
        .flat_map(|v| v.reports())
        .filter(|r| r.start_secs() == first * WINDOW_SECS)
        .collect();
    assert!(amended, "{reports:?}");
    assert!(
        reports.iter().all(|r| r.mode == "distributed"),
        "{reports:?}"
    );
    // The window's count is its largest: the amendment.
    let count = reports.iter().map(|r| r.unique_requests).max().unwrap();
    seen.assert_count(first, count);
}
