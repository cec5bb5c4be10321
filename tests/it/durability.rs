//! Durable acknowledgements: every id answered `ok` is in its window's report, across a
//! SIGKILL and a restart, a torn segment, a full disk; and `--durability host` answers only
//! once the log is on disk.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use verve::config::{DriverChoice, Durability};
use verve::wal::record;

use crate::common::redis_cli;
use crate::common::{
    Conn, Killed, RedisServer, Report, TansuBroker, Tmpfs, Verve, kafka_records, metric,
    reports_of, scrape, sleep_until_next_window, window_of,
};

const WAIT: Duration = Duration::from_secs(20);
const TOPIC: &str = "verve-unique-counts";

/// Sends `ids` pipelined, `per_write` requests a write, and returns those answered `ok`;
/// every other answer must be `503 failed`.
fn send(verve: &Verve, ids: impl IntoIterator<Item = i64>, per_write: usize) -> BTreeSet<i64> {
    let mut conn = Conn::open(verve.addr);
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut ok = BTreeSet::new();
    for chunk in ids.chunks(per_write) {
        let mut batch = Vec::new();
        for id in chunk {
            batch.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        conn.send(&batch);
        for &id in chunk {
            let answer = conn.read_answer(false).expect("an answer");
            match (answer.status, answer.body_str()) {
                (200, "ok") => {
                    ok.insert(id);
                }
                (503, "failed") => {}
                other => panic!("id {id}: {other:?}"),
            }
        }
    }
    ok
}

/// The reports of window `w` (of `secs`), waiting for the first, then a moment for a second.
fn reports_of_window(verve: &Verve, w: u64, secs: u64) -> Vec<Report> {
    reports_of(&[verve], w, secs, WAIT)
}

/// The RFC 3339 start of window `w` of `secs`, as verve names it in Redis.
fn window_start(w: u64, secs: u64) -> String {
    humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(w * secs)).to_string()
}

fn assert_still_in(w: u64, secs: u64) {
    assert_eq!(
        window_of(SystemTime::now(), secs),
        w,
        "the test's steps took longer than its window"
    );
}

#[test]
fn ids_answered_ok_survive_a_sigkill_and_the_window_reports_them_all_once() {
    const SECS: u64 = 6;
    let options = Verve::options()
        .workers(2)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300));
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = options.start();
    let before = send(&verve, 0..1000, 50);
    assert_eq!(before.len(), 1000);
    let verve = verve.kill().restart();
    let after = send(&verve, 1000..1010, 10);
    assert_eq!(after.len(), 10);
    assert_still_in(w, SECS);

    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(
        (report.unique_requests, report.partial, report.recovered),
        (1010, false, false),
        "{report:?}"
    );
    assert!(
        verve
            .wait_for_log("wal: read back 1000 logged ids of 1 windows", WAIT)
            .is_some()
    );
}

#[test]
fn a_window_that_closed_while_verve_was_down_is_reported_at_start_once_marked_recovered() {
    const SECS: u64 = 2;
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .window_secs(SECS)
        .report_grace(Duration::from_millis(200))
        .start();
    let ok = send(&verve, (0..600).map(|i| i * 7 - 2000), 40);
    assert_eq!(ok.len(), 600);
    let killed = verve.kill();
    sleep_until_next_window(SECS, Duration::from_millis(500));
    let started = Instant::now();
    let verve = killed.restart();

    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (reports[0].unique_requests, reports[0].recovered),
        (600, true),
        "{reports:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "not at start");
    // Its segments go once it is reported: a later start reports it no more.
    let wal = verve.dir.path().join("wal");
    let left: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(&format!("{w}-")))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    let verve = verve.kill().restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(reports_of_window(&verve, w, SECS).len(), 1);
}

#[test]
fn a_segment_torn_in_the_middle_of_a_record_keeps_every_whole_record_before_it() {
    const SECS: u64 = 6;
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .workers(1)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300))
        .start();
    let ok = send(&verve, 0..300, 30);
    assert_eq!(ok.len(), 300);
    let killed = verve.kill();

    // The first half of one more record of three ids: as if the process died mid-copy, or
    // the disk kept part of a page.
    let segment = std::fs::read_dir(killed.wal_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{w}-"))
        })
        .expect("the window's segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = record::decode(&bytes).unwrap();
    assert_eq!(whole.ids.len(), 300);
    let mut torn = vec![0; record::record_len(3)];
    record::encode(&[7001, 7002, 7003], &mut torn);
    let cut = 2 + torn.len() / 2;
    bytes[whole.good_len..whole.good_len + cut].copy_from_slice(&torn[..cut]);
    std::fs::write(&segment, &bytes).unwrap();

    let verve = killed.restart();
    let line = verve
        .wait_for_log("torn or corrupt tail", WAIT)
        .expect("a line about the cut");
    assert!(line.contains(&segment.display().to_string()), "{line}");
    assert!(line.contains(&format!("cut {cut} bytes")), "{line}");
    assert_eq!(
        metric(&scrape(verve.addr), "verve_wal_torn_bytes_total"),
        cut as u64
    );
    assert_still_in(w, SECS);
    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].unique_requests, 300, "{reports:?}");
}

#[test]
fn a_full_disk_answers_503_and_readyz_says_so_until_space_returns_and_loses_nothing() {
    const SECS: u64 = 12;
    let disk = Tmpfs::mount(192);
    let w = sleep_until_next_window(SECS, Duration::from_millis(200));
    let verve = Verve::options()
        .workers(1)
        .window_secs(SECS)
        .report_grace(Duration::from_millis(300))
        .wal_dir(disk.path())
        .start();

    // A segment starts at 128 KiB and doubles: the second allocation does not fit.
    let mut ok = BTreeSet::new();
    let mut next = 0;
    while ok.len() == next as usize {
        assert!(next < 100_000, "the disk never filled");
        ok.extend(send(&verve, next..next + 500, 50));
        next += 500;
    }
    let mut conn = Conn::open(verve.addr);
    let ready = conn.get("/readyz");
    assert_eq!(
        (ready.status, ready.body_str()),
        (503, "not ready: write-ahead log not writable")
    );
    assert!(metric(&scrape(verve.addr), "verve_wal_errors_total") > 0);
    // Ids answered ok before the disk filled still get ok: they need no room.
    let again: Vec<i64> = ok.iter().copied().take(100).collect();
    assert_eq!(send(&verve, again, 50).len(), 100);

    disk.resize(8192);
    let more = send(&verve, next..next + 1000, 50);
    assert_eq!(more.len(), 1000, "space returned");
    ok.extend(more);
    assert_eq!(conn.get("/readyz").status, 200);

    let verve = verve.kill().restart();
    assert_still_in(w, SECS);
    let reports = reports_of_window(&verve, w, SECS);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].unique_requests, ok.len() as u64, "{reports:?}");
}

/// A verve whose every `fdatasync` strace holds for `held` (the epoll driver syncs with the
/// system call; `io_uring` would sync without one), and the directory of strace's output.
fn verve_with_slow_syncs(
    durability: Durability,
    fsync: Duration,
    held: Duration,
) -> (Verve, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.out");
    let inject = format!("inject=fdatasync:delay_enter={}", held.as_micros());
    let verve = Verve::options()
        .under(&[
            "strace",
            "-f",
            "-o",
            trace.to_str().unwrap(),
            "-e",
            "trace=fdatasync",
            "-e",
            &inject,
        ])
        .workers(1)
        .driver(DriverChoice::Epoll)
        .durability(durability)
        .wal_fsync(fsync)
        .start();
    (verve, dir)
}

/// The round trip of `/api/verve/accept?id=<id>` on a new connection, answered `ok`.
fn answer_time(verve: &Verve, id: i64) -> Duration {
    let mut conn = Conn::open(verve.addr);
    let started = Instant::now();
    let answer = conn.get(&format!("/api/verve/accept?id={id}"));
    assert_eq!((answer.status, answer.body_str()), (200, "ok"));
    started.elapsed()
}

#[test]
fn host_durability_answers_only_once_the_log_is_synced() {
    let held = Duration::from_millis(1500);
    let (host, _trace) = verve_with_slow_syncs(Durability::Host, Duration::from_hours(1), held);
    let took = answer_time(&host, 42);
    assert!(took >= held, "answered in {took:?}");
    // The same verve in process mode answers before any sync.
    let (process, _trace) =
        verve_with_slow_syncs(Durability::Process, Duration::from_hours(1), held);
    let took = answer_time(&process, 42);
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
}

#[test]
fn process_durability_answers_wait_for_a_sync_later_than_the_interval() {
    // Synced every half second, each sync held 3 s: the first one, begun about 0.5 s after
    // id 1's record, ends about 3.5 s after it.
    let (verve, _trace) = verve_with_slow_syncs(
        Durability::Process,
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let first = answer_time(&verve, 1);
    assert!(first < Duration::from_secs(1), "answered in {first:?}");
    thread::sleep(Duration::from_millis(1200));
    // Id 1's record is over a second unsynced: a host crash now would lose more than a
    // second of answers, so this answer waits for the sync, about 2.3 s.
    let late = answer_time(&verve, 2);
    assert!(late >= Duration::from_millis(1500), "answered in {late:?}");
    assert!(metric(&scrape(verve.addr), "verve_wal_late_syncs_total") >= 1);
    assert!(
        verve
            .wait_for_log(
                "a sync of its log ended more than --wal-fsync-ms",
                Duration::from_secs(5)
            )
            .is_some()
    );
}

/// Ids a load thread sent: answered `ok`, and sent without an answer (the instance died).
#[derive(Default)]
struct Sent {
    ok: BTreeSet<i64>,
    unanswered: BTreeSet<i64>,
}

/// Pipelined load of fresh ids (`base` + n, 64 a write) on `addr` until `stop`; a connection
/// that dies ends it.
fn load_until(addr: std::net::SocketAddr, base: i64, stop: &AtomicBool) -> Sent {
    let mut sent = Sent::default();
    let Ok(mut conn) = Conn::try_open(addr) else {
        return sent;
    };
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<i64> = (next..next + 64).collect();
        next += 64;
        let mut batch = Vec::new();
        for id in &ids {
            batch.extend_from_slice(
                format!("GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            );
        }
        if conn.try_send(&batch).is_err() {
            sent.unanswered.extend(ids);
            break;
        }
        for (at, &id) in ids.iter().enumerate() {
            let Ok(answer) = conn.read_answer(false) else {
                sent.unanswered.extend(&ids[at..]);
                return sent;
            };
            assert_eq!((answer.status, answer.body_str()), (200, "ok"));
            sent.ok.insert(id);
        }
    }
    sent
}

/// Load on `addr` from another thread until the returned flag is set.
fn load(addr: std::net::SocketAddr, base: i64) -> (Arc<AtomicBool>, thread::JoinHandle<Sent>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    (stop, thread::spawn(move || load_until(addr, base, &flag)))
}

/// The ids of window `w` (of `secs`) in the Redis on `port`.
fn members(port: u16, w: u64, secs: u64) -> BTreeSet<i64> {
    let key = format!("verve:w:{}", window_start(w, secs));
    redis_cli(port, &["smembers", &key])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Asserts by id that every id answered `ok` is in `held`, and nothing never sent.
fn assert_held(sent: &Sent, held: &BTreeSet<i64>) {
    let lost: Vec<&i64> = sent.ok.difference(held).collect();
    assert!(
        lost.is_empty(),
        "{} answered ok and not in Redis: {lost:?}",
        lost.len()
    );
    let extra: Vec<&i64> = held
        .iter()
        .filter(|id| !sent.ok.contains(id) && !sent.unanswered.contains(id))
        .collect();
    assert!(extra.is_empty(), "in Redis and never sent: {extra:?}");
}

/// Two distributed instances, a and b, under pipelined load in one window of `secs`; Redis
/// stops answering (a partition without a reset) and a is killed, so that what a answered
/// last is only in its log.
struct KilledWithIdsOnlyInItsLog {
    redis: RedisServer,
    /// Where both send their reports.
    broker: TansuBroker,
    a: Killed,
    b: Verve,
    w: u64,
    /// What a answered.
    by_a: Sent,
    /// What b answered.
    by_b: Sent,
}

impl KilledWithIdsOnlyInItsLog {
    fn start(secs: u64, max_delay: Duration) -> Self {
        let redis = RedisServer::start();
        let broker = TansuBroker::start_memory();
        broker.create_topic(TOPIC);
        let options = |name: &str| {
            Verve::options()
                .kafka_brokers(&broker.bootstrap())
                .workers(1)
                .window_secs(secs)
                .report_grace(Duration::from_millis(500))
                .report_max_delay(max_delay)
                .redis_heartbeat(Duration::from_secs(1))
                .instance_id(name)
                .redis(&redis)
        };
        let w = sleep_until_next_window(secs, Duration::from_millis(200));
        let a = options("a").start();
        let b = options("b").start();
        let (stop_a, load_a) = load(a.addr, 1_000_000_000);
        let (stop_b, load_b) = load(b.addr, 2_000_000_000);
        thread::sleep(Duration::from_millis(700));
        redis.pause();
        thread::sleep(Duration::from_millis(500));
        let a = a.kill();
        redis.resume();
        for stop in [&stop_a, &stop_b] {
            stop.store(true, Ordering::Relaxed);
        }
        let (by_a, by_b) = (load_a.join().unwrap(), load_b.join().unwrap());
        assert_still_in(w, secs);
        assert!(by_a.ok.len() > 500, "only {} ids answered", by_a.ok.len());
        KilledWithIdsOnlyInItsLog {
            redis,
            broker,
            a,
            b,
            w,
            by_a,
            by_b,
        }
    }

    /// Every id answered `ok` by either.
    fn sent(&self) -> Sent {
        let mut sent = Sent::default();
        for by in [&self.by_a, &self.by_b] {
            sent.ok.extend(&by.ok);
            sent.unanswered.extend(&by.unanswered);
        }
        sent
    }

    /// b's report of the window, written while a is down: it lacks a's last ids.
    fn reported_without_a(&self, secs: u64) -> Report {
        let reports = reports_of(&[&self.b], self.w, secs, WAIT);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(
            (reports[0].mode.as_str(), reports[0].amended),
            ("distributed", false)
        );
        reports[0].clone()
    }
}

#[test]
fn a_distributed_instance_killed_under_load_pushes_every_id_it_answered_after_its_restart() {
    const SECS: u64 = 8;
    let killed = KilledWithIdsOnlyInItsLog::start(SECS, Duration::from_mins(1));
    let mut sent = killed.sent();
    let w = killed.w;
    let a = killed.a.restart();
    let (stop, load_again) = load(a.addr, 3_000_000_000);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let again = load_again.join().unwrap();
    sent.ok.extend(again.ok);
    sent.unanswered.extend(again.unanswered);
    assert_still_in(w, SECS);

    // By id: every id answered ok reaches the window's set in Redis (read before the report),
    // and nothing that was not sent.
    let port = killed.redis.port;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut held = members(port, w, SECS);
    while !sent.ok.is_subset(&held) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        held = members(port, w, SECS);
    }
    assert_held(&sent, &held);

    let reports = reports_of(&[&a, &killed.b], w, SECS, WAIT);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].mode, "distributed", "{reports:?}");
    assert_eq!(reports[0].unique_requests, held.len() as u64, "{reports:?}");
}

#[test]
fn an_instance_restarted_after_its_window_was_reported_without_its_logged_ids_amends_the_report() {
    const SECS: u64 = 4;
    let killed = KilledWithIdsOnlyInItsLog::start(SECS, Duration::from_mins(1));
    let first = killed.reported_without_a(SECS);
    let (w, port) = (killed.w, killed.redis.port);
    let sent = killed.sent();
    let a = killed.a.restart();
    let amended = reports_of(&[&a], w, SECS, WAIT);
    assert_eq!(amended.len(), 1, "{amended:?}");
    let amended = &amended[0];
    assert_eq!(
        (amended.mode.as_str(), amended.amended, amended.recovered),
        ("distributed", true, true),
        "{amended:?}"
    );
    assert!(
        a.log_lines().iter().any(|l| l.contains(&format!(
            "amending its count to {}",
            amended.unique_requests
        ))),
        "{:?}",
        a.log_lines()
    );
    // By id: the window's ids are still in Redis (for the amend horizon): every id answered
    // ok, and the amended count is theirs, larger than the first report's.
    let held = members(port, w, SECS);
    assert_held(&sent, &held);
    assert_eq!(amended.unique_requests, held.len() as u64);
    assert!(
        amended.unique_requests > first.unique_requests,
        "{first:?} {amended:?}"
    );
    // Nothing more: b writes nothing else, a amends once.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(reports_of_window(&killed.b, w, SECS).len(), 1);
    assert_eq!(reports_of_window(&a, w, SECS).len(), 1);
    // In Kafka, under the window's key: the first count, then the amended one, marked so.
    let records: Vec<(String, serde_json::Value)> =
        kafka_records(&killed.broker.bootstrap(), TOPIC, 2, WAIT)
            .into_iter()
            .filter(|(key, _)| *key == window_start(w, SECS))
            .collect();
    let counts: Vec<(u64, bool, bool)> = records
        .iter()
        .map(|(_, v)| {
            (
                v["unique_requests"].as_u64().unwrap(),
                v["amended"].as_bool().unwrap_or_default(),
                v["recovered"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            (first.unique_requests, false, false),
            (amended.unique_requests, true, true)
        ],
        "{records:?}"
    );
}

#[test]
fn ids_read_back_past_the_amend_horizon_are_counted_late_and_logged_once() {
    const SECS: u64 = 4;
    let max_delay = Duration::from_secs(2);
    let killed = KilledWithIdsOnlyInItsLog::start(SECS, max_delay);
    let first = killed.reported_without_a(SECS);
    // The window's published count expires `max_delay` after its report.
    let past = first.written_at + max_delay + Duration::from_secs(1);
    thread::sleep(past.duration_since(SystemTime::now()).unwrap_or_default());
    let w = killed.w;
    let (ok, unanswered) = (killed.by_a.ok.len(), killed.by_a.unanswered.len());
    let a = killed.a.restart();
    let line = a
        .wait_for_log("too late to amend", WAIT)
        .expect("the late ids are logged");
    assert!(line.contains(&window_start(w, SECS)), "{line}");
    let late = metric(&scrape(a.addr), "verve_late_ids_total") as usize;
    assert!(
        (ok..=ok + unanswered).contains(&late),
        "{late} late, {ok} answered ok"
    );
    thread::sleep(Duration::from_secs(1));
    let of_w: Vec<Report> = a
        .reports()
        .into_iter()
        .filter(|r| r.start_secs() == w * SECS)
        .collect();
    assert!(of_w.is_empty(), "{of_w:?}");
    let said = a
        .log_lines()
        .iter()
        .filter(|l| l.contains("too late to amend"))
        .count();
    assert_eq!(said, 1);
}
