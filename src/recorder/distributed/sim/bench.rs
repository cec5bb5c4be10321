//! The bench the state table's tests run on (`transitions`, `recorder_rows`): a process's
//! Redis thread (the real one) against one simulated server whose keys a test sets
//! beforehand, on a paused clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, Value};

use super::super::client::{RedisLink, Reply, Request};
use super::super::keys;
use super::super::nodes::run_id;
use super::super::protocol::{Counted, Settlement};
use super::super::{RedisHealth, RedisSettings, Topology};
use super::connection::SimConnect;
use super::servers::Servers;
use super::world::WINDOW;
use crate::clock::Clock;
use crate::config::{DistributedSettings, RedisTarget};
use crate::metrics::Metrics;
use crate::wal::WalDir;
use crate::window::WindowIndex;

pub(super) const SERVER: &str = "sim-0:6379";
pub(super) const ME: &str = "i0/2";
pub(super) const OTHER: &str = "i1/1";
/// How far the server's clock is behind the instance's: hosts' clocks differ, within the grace.
const SERVER_BEHIND: Duration = Duration::from_millis(60);

/// One process's Redis thread against one simulated server.
pub(super) struct Bench {
    pub(super) servers: Arc<Mutex<Servers>>,
    pub(super) link: RedisLink,
    pub(super) clock: Clock,
    /// The health the link reports.
    pub(super) health: Arc<RedisHealth>,
}

/// Runs a test on a paused clock, its tasks on this thread.
pub(super) fn on_paused_clock<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    tokio::task::LocalSet::new().block_on(&runtime, test());
}

impl Bench {
    /// The process `process`, started at `Bench::ORIGIN`; with `settled`, two seconds on,
    /// once it may settle reports (a heartbeat and a probe backoff after finding Redis).
    pub(super) async fn new(process: &str, settled: bool) -> Bench {
        Bench::with_log(process, settled, None).await
    }

    /// 2026-12-06T00:00:10Z.
    pub(super) fn origin() -> SystemTime {
        UNIX_EPOCH + Duration::from_hours(499_032) + Duration::from_secs(10)
    }

    /// As `new`, the process keeping its claims in (and reading an earlier process's from)
    /// the log's directory `kept`.
    pub(super) async fn with_log(process: &str, settled: bool, kept: Option<Arc<WalDir>>) -> Bench {
        Bench::started(process, settled, kept, 0).await
    }

    /// As `new`, against a Redis Cluster of one master (`SERVER`) with a replica, which
    /// receives the master's writes only when the test says (`Servers::replicate`).
    pub(super) async fn with_replica(process: &str) -> Bench {
        Bench::started(process, true, None, 1).await
    }

    /// As `with_replica`, with a second master serving the upper half of the slots.
    pub(super) async fn with_two_masters(process: &str) -> Bench {
        Bench::started(process, true, None, 2).await
    }

    async fn started(
        process: &str,
        settled: bool,
        kept: Option<Arc<WalDir>>,
        masters: u16,
    ) -> Bench {
        let base = tokio::time::Instant::now();
        let elapsed = move || tokio::time::Instant::now() - base;
        let origin = Bench::origin();
        let clock = Clock::driven(origin, elapsed);
        let server_clock = Clock::driven(origin - SERVER_BEHIND, elapsed);
        let servers = Arc::new(Mutex::new(Servers::new(masters, server_clock)));
        let url = format!("redis://{SERVER}");
        let (redis, topology) = if masters == 0 {
            let topology = Topology::single(&url).expect("a Redis URL");
            (RedisTarget::Single(url), topology)
        } else {
            let seeds = vec![url];
            let topology = Topology::cluster(&seeds).expect("Redis URLs");
            (RedisTarget::Cluster(seeds), topology)
        };
        let distributed = DistributedSettings {
            redis,
            shards: 1,
            report_max_delay: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
        };
        let settings = RedisSettings::new(topology, process.to_owned(), WINDOW, &distributed);
        let health = Arc::new(RedisHealth::new(clock.clone()));
        let metrics = Arc::new(Metrics::new(1));
        let (link, thread) = RedisLink::new(settings, WINDOW, Arc::clone(&health), metrics, kept);
        tokio::task::spawn_local(thread.serve(SimConnect {
            servers: Arc::clone(&servers),
            paused: Arc::default(),
            cut_off: Arc::default(),
        }));
        let bench = Bench {
            servers,
            link,
            clock,
            health,
        };
        bench.wait(if settled { 2_100 } else { 50 }).await;
        assert!(bench.link.health().is_up());
        bench
    }

    pub(super) async fn wait(&self, millis: u64) {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    /// This instance's clock in milliseconds since the Unix epoch, as scores are.
    pub(super) fn now_ms(&self) -> String {
        let now = self.clock.now().duration_since(UNIX_EPOCH).unwrap();
        now.as_millis().to_string()
    }

    /// The window that ended a second ago.
    pub(super) fn window(&self) -> WindowIndex {
        WINDOW.window_of(self.clock.now()) - 1
    }

    pub(super) fn start(window: WindowIndex) -> String {
        WINDOW.start_rfc3339(window)
    }

    /// A command at the master of its key (of the first shard, for a command without one), as
    /// redis-cli would send it.
    pub(super) fn redis(&self, args: &[&str]) -> Value {
        let key = if args[0] == "INFO" { None } else { args.get(1) };
        self.redis_beside(key.map_or("", |k| k), args)
    }

    /// A command at the master serving `key`'s slot (of the first shard, for `""`).
    fn redis_beside(&self, key: &str, args: &[&str]) -> Value {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut servers = self.servers.lock().unwrap();
        let master = if key.is_empty() {
            servers.master(0)
        } else {
            servers.master_of_key(key.as_bytes())
        };
        let master = master.to_owned();
        servers.run(&master, &args)
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        FromRedisValue::from_redis_value(&self.redis(&["GET", key])).unwrap()
    }

    /// `verve:<kind>:<window start>`.
    pub(super) fn window_key(&self, kind: &str, window: WindowIndex) -> Option<String> {
        self.get(&format!("verve:{kind}:{}", Bench::start(window)))
    }

    pub(super) fn set_window_key(&self, kind: &str, window: WindowIndex, value: &str) {
        let key = format!("verve:{kind}:{}", Bench::start(window));
        self.redis(&["SET", &key, value]);
    }

    /// The shard serving `key`.
    pub(super) fn shard_of_key(&self, key: &str) -> usize {
        self.servers.lock().unwrap().shard_of_key(key.as_bytes())
    }

    /// The shard holding `window`'s report claim.
    pub(super) fn shard_of_claim(&self, window: WindowIndex) -> usize {
        self.shard_of_key(&format!("verve:reported:{}", Bench::start(window)))
    }

    /// `process` says it has set its claims again on the master holding `window`'s claim, as
    /// that master is now: as its `Reassert` round would.
    pub(super) fn say_returned(&self, process: &str, window: WindowIndex) {
        let claim = format!("verve:reported:{}", Bench::start(window));
        let info = self.redis_beside(&claim, &["INFO", "server"]);
        let info: String = FromRedisValue::from_redis_value(&info).unwrap();
        let run_id = run_id(&info).expect("a run id");
        let member = keys::returned_member(process, run_id);
        self.redis(&["ZADD", "verve:returned", &self.now_ms(), &member]);
    }

    /// Waits until the server's clock is `millis` into a second.
    pub(super) async fn wait_for_the_servers_second_at(&self, millis: u32) {
        let server_now = self.clock.now() - SERVER_BEHIND;
        let into = server_now
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        self.wait(u64::from((1_000 + millis - into) % 1_000)).await;
    }

    /// `window`'s ids in Redis, and the flush marks of `marked` beside them.
    pub(super) fn ids_and_marks(&self, window: WindowIndex, ids: &[&str], marked: &[&str]) {
        let shard = format!("verve:w:{}", Bench::start(window));
        self.redis(&[&["SADD", &shard][..], ids].concat());
        let marks = format!("verve:flushed:{{{shard}}}");
        for process in marked {
            self.redis(&["SADD", &marks, process]);
        }
    }

    /// The answer to `request`, past what the thread tells of its own accord.
    pub(super) async fn ask(&self, request: Request) -> Reply {
        self.link.send(request);
        loop {
            self.wait(1).await;
            match self.link.try_reply() {
                None | Some(Reply::UnsureClaims(_)) => {}
                Some(reply) => return reply,
            }
        }
    }

    pub(super) async fn settle(
        &self,
        window: WindowIndex,
        overdue: bool,
        adopt: bool,
    ) -> Settlement {
        let request = Request::Settle {
            window,
            overdue,
            adopt,
        };
        match self.ask(request).await {
            Reply::Settled {
                settlement: Some(settlement),
                ..
            } => settlement,
            _ => panic!("no settlement"),
        }
    }

    pub(super) async fn check_counted(&self, window: WindowIndex) -> Option<Counted> {
        match self.ask(Request::CheckCounted { window }).await {
            Reply::Checked { check, .. } => check,
            _ => panic!("not an answer to the check"),
        }
    }

    pub(super) async fn amend(&self, window: WindowIndex) -> Settlement {
        match self.ask(Request::Amend { window }).await {
            Reply::Settled {
                settlement: Some(settlement),
                ..
            } => settlement,
            _ => panic!("no settlement"),
        }
    }
}
