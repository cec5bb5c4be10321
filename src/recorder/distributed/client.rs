//! The Redis thread: everything verve says to Redis, off the recorder's thread. The recorder
//! sends requests and reads replies without ever waiting; here each request is a task on a
//! tokio current-thread runtime that lives only on this thread (the workers never run on
//! tokio), so many pushes are in flight at once and a slow or stalled Redis delays replies,
//! never the recorder. The thread also announces the instance with a heartbeat.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{Cmd, FromRedisValue, ToRedisArgs, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::health::RedisHealth;
use super::keys::{self, Key};
use super::nodes::{Connect, Nodes, RedisClients, Routed, Topology};
use crate::clock::Clock;
use crate::config::DistributedSettings;
use crate::metrics::Metrics;
use crate::wal::WalDir;
use crate::wal::claims::Claim;
use crate::window::{WindowClock, WindowIndex};

/// Ids per `SADD` command.
const IDS_PER_COMMAND: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the winner of an election waits for a replica to hold the window's reported
/// marker before it writes the report (and tries again later when none does).
const WAIT_REPLICA_MS: u64 = 500;
/// How much longer a reported window's ids stay in Redis than its published count: an
/// amendment that finds the count finds the ids it was read with, even where the keys are
/// on masters whose expiries run a moment apart.
const AMEND_MARGIN: Duration = Duration::from_secs(5);
/// Publishes a window's count when it is larger than the one published (`verve:count:<w>`),
/// keeping its expiry; returns the count published before, -1 when there is none (the
/// window can no longer be amended) or -2 when Redis lost the window's ids (`LOST`). One
/// script, so that of two instances amending at once only the larger count is published
/// last.
pub(super) const PUBLISH_LARGER: &str = "local published = redis.call('GET', KEYS[1]) \
    if not published then return -1 end \
    published = tonumber(published) \
    if not published then return -2 end \
    if tonumber(ARGV[1]) > published then \
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end \
    return published";
/// The published count of a window whose ids a restarted Redis lost after its report.
const LOST: &str = "lost";

/// What the Redis thread needs to know.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The Redis node or cluster.
    pub topology: Topology,
    /// This process's name in Redis (heartbeat, flush marks, lease, claims): the instance id
    /// and a start-up token, so that a restart under the same id is another process.
    pub process: String,
    /// Keys each window's ids are spread over.
    pub shards: u32,
    /// Expiry of every per-window key.
    pub key_ttl: Duration,
    /// An instance whose heartbeat is older than this counts as gone; an election lease
    /// lasts this long.
    pub heartbeat_ttl: Duration,
    /// How long a reported window's ids stay in Redis, so that an instance whose ids the
    /// report lacks can amend it (`--report-max-delay-secs`).
    pub amend_horizon: Duration,
    /// How long after a Redis server restarted a window that ended before it waits for the
    /// instances that could have claimed its report to set their claims again.
    pub claims_return_wait: Duration,
}

impl RedisSettings {
    /// The settings of the process named `process`, for windows of `clock`, as configured.
    pub fn new(
        topology: Topology,
        process: String,
        clock: WindowClock,
        distributed: &DistributedSettings,
    ) -> RedisSettings {
        RedisSettings {
            topology,
            process,
            shards: distributed.shards,
            key_ttl: Duration::from_secs(clock.secs())
                + distributed.report_max_delay
                + Duration::from_mins(10),
            heartbeat_ttl: distributed.heartbeat,
            amend_horizon: distributed.report_max_delay,
            claims_return_wait: 2 * distributed.report_max_delay,
        }
    }
}

pub(crate) enum Request {
    /// Adds ids to their windows' sets, then reads the global count of each of `count`.
    Push {
        seq: u64,
        ids: Vec<(WindowIndex, Vec<i64>)>,
        count: Vec<WindowIndex>,
    },
    /// Says that all of this instance's ids of the window are in Redis.
    MarkFlushed {
        generation: u64,
        window: WindowIndex,
    },
    /// Tries to settle the window's report: elect this instance, wait for every live
    /// instance's flush mark (unless `overdue`), read the count, claim the report. `adopt`:
    /// a window from before this process started that it holds no id of, reported only when
    /// Redis holds ids of it (every instance that held them left before it was settled).
    Settle {
        window: WindowIndex,
        overdue: bool,
        adopt: bool,
    },
    /// Sets this instance's claims on windows it has reported again, each with the record of
    /// whose marks its count had, where no claim is there (a restarted Redis lost it), then
    /// says that this process has (`verve:returned`). Nothing is replied.
    Reassert { windows: Vec<WindowIndex> },
    /// Once this instance's ids of a window reported without them are in Redis: publishes
    /// the window's count again when it has grown (an amended report).
    Amend { window: WindowIndex },
    /// At shutdown, once the window is marked flushed: whether a report of it by another
    /// instance had this instance's ids.
    CheckCounted { window: WindowIndex },
    /// Says that this instance has gone (at shutdown), so that reporters stop waiting for it.
    Leave,
}

pub(crate) enum Reply {
    /// `None` when Redis did not take them all.
    Pushed {
        seq: u64,
        counts: Option<Vec<(WindowIndex, u64)>>,
    },
    Flushed {
        generation: u64,
        window: WindowIndex,
        ok: bool,
    },
    /// `None` when Redis failed on the way.
    Settled {
        window: WindowIndex,
        settlement: Option<Settlement>,
    },
    /// `None` when Redis failed on the way.
    Checked {
        window: WindowIndex,
        check: Option<Counted>,
    },
    Left,
}

/// Whether a window's report holds this instance's ids, as it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Reported by another with this instance's flush mark, or not being reported yet (the
    /// reporter will find the mark).
    Yes,
    /// Reported by another without this instance's flush mark.
    No,
    /// Another instance holds the lease: it may have read the flush marks already.
    Settling,
}

/// How an attempt to settle a window's report ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// This instance reports the window, with this global count.
    Won(u64),
    /// Another instance reports it; `counted_here` says whether its count had this
    /// instance's flush mark (all of this instance's ids).
    ByOther { counted_here: bool },
    /// This instance has claimed the report, with this global count, and no replica holds
    /// the claim yet: the others, seeing the claim, leave the window to it.
    Claimed(u64),
    /// A window to adopt that this instance leaves alone: Redis holds no ids of it, or the
    /// node of its claim started after it ended (a claim may have gone with a restart, its
    /// reporter with it, and the window would be reported twice).
    NotAdopted,
    /// Not yet, and why: another instance holds the lease, a flush mark is missing, or Redis
    /// answers again only since less than a heartbeat and a probe backoff.
    NotYet(&'static str),
    /// This instance has published the window's count again, grown by ids the report
    /// lacked: it writes the amended report.
    Amended(u64),
    /// The window's ids are no longer kept to amend its report (its count has expired).
    PastAmends,
    /// Redis holds fewer of the window's ids than its report counted: it lost some since,
    /// and how many of this instance's ids the report had cannot be told.
    LostSinceReport,
}

/// The recorder's end of the Redis thread.
pub struct RedisLink {
    requests: Option<UnboundedSender<Request>>,
    replies: Receiver<Reply>,
    health: Arc<RedisHealth>,
    /// How long the per-window keys (report claims among them) live.
    key_ttl: Duration,
    /// The report claims an earlier process of this instance made, read back from the log's
    /// directory, and when each was made.
    recovered_claims: Vec<(WindowIndex, SystemTime)>,
    thread: Option<JoinHandle<()>>,
}

impl RedisLink {
    /// Starts the Redis thread. With the write-ahead log's directory (`kept`), the report
    /// claims this instance makes are kept there, and those an earlier process of it made
    /// within the keys' expiry are set again whenever Redis may have lost them.
    pub fn start(
        settings: RedisSettings,
        clock: WindowClock,
        health: Arc<RedisHealth>,
        metrics: Arc<Metrics>,
        kept: Option<Arc<WalDir>>,
    ) -> std::io::Result<RedisLink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (mut link, thread) = RedisLink::new(settings, clock, health, metrics, kept);
        link.thread = Some(
            std::thread::Builder::new()
                .name("verve-redis".into())
                .spawn(move || runtime.block_on(thread.serve(RedisClients)))?,
        );
        Ok(link)
    }

    /// The recorder's end, and what the Redis thread starts from; the caller runs the
    /// thread's part on a runtime of its choice.
    pub(super) fn new(
        settings: RedisSettings,
        clock: WindowClock,
        health: Arc<RedisHealth>,
        metrics: Arc<Metrics>,
        kept: Option<Arc<WalDir>>,
    ) -> (RedisLink, ThreadStart) {
        let (request_tx, request_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let key_ttl = settings.key_ttl;
        let since = health.time().now() - key_ttl;
        let (claims, claiming): (Vec<Claim>, Vec<Claim>) = kept
            .as_ref()
            .map(|wal| wal.kept_claims(since))
            .unwrap_or_default()
            .into_iter()
            .partition(|c| c.confirmed);
        let claims: BTreeMap<WindowIndex, Claim> =
            claims.into_iter().map(|c| (c.window, c)).collect();
        // Claims an earlier process was making when it died: it may hold them, so their
        // counts are the floor of this process's, should it report those windows.
        let unsure = claiming.iter().map(|c| (c.window, Tally::of(c))).collect();
        let claiming = claiming.into_iter().map(|c| (c.window, c)).collect();
        let recovered_claims = claims.values().map(|c| (c.window, c.made_at)).collect();
        let link = RedisLink {
            requests: Some(request_tx),
            replies: reply_rx,
            health: Arc::clone(&health),
            key_ttl,
            recovered_claims,
            thread: None,
        };
        let thread = ThreadStart {
            settings,
            clock,
            health,
            metrics,
            kept,
            claims,
            claiming,
            unsure,
            requests: request_rx,
            replies: reply_tx,
        };
        (link, thread)
    }

    /// The report claims an earlier process of this instance made (see `start`), and when.
    pub(crate) fn recovered_claims(&self) -> &[(WindowIndex, SystemTime)] {
        &self.recovered_claims
    }

    /// Queues a request; never waits.
    pub(crate) fn send(&self, request: Request) {
        if let Some(requests) = &self.requests {
            // Fails only once the thread has gone, at the end of a shutdown.
            let _ = requests.send(request);
        }
    }

    pub(crate) fn try_reply(&self) -> Option<Reply> {
        self.replies.try_recv().ok()
    }

    pub(crate) fn health(&self) -> &RedisHealth {
        &self.health
    }

    /// The clock the Redis thread reads.
    pub(crate) fn time(&self) -> &Clock {
        self.health.time()
    }

    /// How long the per-window keys, report claims among them, live in Redis.
    pub(crate) fn key_ttl(&self) -> Duration {
        self.key_ttl
    }
}

/// What the Redis thread starts from.
pub(super) struct ThreadStart {
    settings: RedisSettings,
    clock: WindowClock,
    health: Arc<RedisHealth>,
    metrics: Arc<Metrics>,
    kept: Option<Arc<WalDir>>,
    claims: BTreeMap<WindowIndex, Claim>,
    claiming: BTreeMap<WindowIndex, Claim>,
    unsure: BTreeMap<WindowIndex, Tally>,
    requests: UnboundedReceiver<Request>,
    replies: Sender<Reply>,
}

impl ThreadStart {
    /// Serves the recorder's requests with connections `connect` opens, until the recorder
    /// drops its end.
    pub(super) async fn serve<C: Connect>(self, connect: C) {
        let nodes = Nodes::new(
            connect,
            self.settings.topology.clone(),
            Arc::clone(&self.health),
            self.metrics,
        );
        let store = Store {
            time: self.health.time().clone(),
            nodes,
            settings: self.settings,
            clock: self.clock,
            health: self.health,
            expiring: RefCell::new((0, HashSet::new())),
            late_logged: Cell::new(None),
            awaiting_logged: Cell::new(None),
            counted: RefCell::new(self.claims),
            unsure_claims: RefCell::new(self.unsure),
            claiming: RefCell::new(self.claiming),
            resolved: RefCell::default(),
            kept: self.kept,
            seen: RefCell::default(),
            seen_before_loss: RefCell::default(),
        };
        store.serve(self.requests, self.replies).await;
    }
}

impl Drop for RedisLink {
    /// The thread finishes the requests it has (each bounded by the response timeout) and
    /// ends.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Store<C: Connect> {
    time: Clock,
    nodes: Nodes<C>,
    settings: RedisSettings,
    clock: WindowClock,
    health: Arc<RedisHealth>,
    /// Id keys given their expiry, and the health epoch that holds for: Redis may have lost
    /// them (and their expiry) whenever the epoch moves on.
    expiring: RefCell<(u64, HashSet<String>)>,
    /// The last window said to be late, so that it is said once.
    late_logged: Cell<Option<WindowIndex>>,
    /// The last window said to wait for claimants to come back, so that it is said once.
    awaiting_logged: Cell<Option<WindowIndex>>,
    /// The report claims made here (or by an earlier process of this instance), with whose
    /// flush marks each count had (`verve:counted:<w>`), within the keys' expiry: set again
    /// when Redis may have lost them.
    counted: RefCell<BTreeMap<WindowIndex, Claim>>,
    /// Tallies of claims not settled yet: their outcome unknown (Redis failed after the
    /// count's record was written), no replica holding them yet, or taken over from an
    /// earlier process of this instance. The others may have seen the claim and forgotten
    /// their ids, so should Redis lose their ids, this instance's next tally lacks them
    /// (defect 14 of docs/reliability.md). Both tallies count ids of the window only, so the
    /// larger is reported.
    unsure_claims: RefCell<BTreeMap<WindowIndex, Tally>>,
    /// Claims an earlier process of this instance was making when it died, not known yet to
    /// have been made: the first look at Redis tells.
    claiming: RefCell<BTreeMap<WindowIndex, Claim>>,
    /// Those found made: set again with the claims the recorder names.
    resolved: RefCell<BTreeSet<WindowIndex>>,
    /// The write-ahead log's directory, where the claims are kept across restarts.
    kept: Option<Arc<WalDir>>,
    /// The instances this process has seen live.
    seen: RefCell<SeenLive>,
    /// What `seen` was when a Redis server was last found to have lost data: the instances
    /// that may have held report claims it lost.
    seen_before_loss: RefCell<SeenLive>,
}

/// Instances seen live in `verve:instances`, by instance id (a restart under the same id is
/// the same instance: its next process sets its claims again), and when.
#[derive(Debug, Clone, Default)]
struct SeenLive {
    /// When the instances were last read.
    read_at: Option<SystemTime>,
    /// Each instance id and when it was last seen live.
    last_seen: BTreeMap<String, SystemTime>,
}

impl SeenLive {
    /// The instances that could have claimed the report of a window that ended at `end`:
    /// those seen live since, and, when the instances were last read before `end` (this
    /// process was cut off from Redis), those live at that last read.
    fn could_have_claimed(&self, end: SystemTime) -> Vec<String> {
        let Some(read_at) = self.read_at else {
            return Vec::new();
        };
        let since = end.min(read_at);
        self.last_seen
            .iter()
            .filter(|&(_, &t)| t >= since)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The instance id of a process's name (`<instance>/<pid>-<started>`).
fn instance_of(process: &str) -> &str {
    process
        .rsplit_once('/')
        .map_or(process, |(instance, _)| instance)
}

impl<C: Connect> Store<C> {
    async fn serve(&self, mut requests: UnboundedReceiver<Request>, replies: Sender<Reply>) {
        let heartbeat_running = Cell::new(false);
        let mut tasks = FuturesUnordered::new();
        let mut next_heartbeat = tokio::time::Instant::now();
        let mut backoff = MIN_BACKOFF;
        loop {
            // In this order, not at random: the simulation replays a seed exactly. A task is
            // ready only when it ends, so the requests are not kept waiting long.
            tokio::select! {
                biased;
                Some(()) = tasks.next(), if !tasks.is_empty() => {}
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    tasks.push(self.handle(request, &replies).boxed_local());
                }
                () = tokio::time::sleep_until(next_heartbeat) => {
                    if !heartbeat_running.replace(true) {
                        tasks.push(self.heartbeat(&heartbeat_running).boxed_local());
                    }
                    // Every quarter of the expiry while Redis answers; with a backoff while
                    // it does not.
                    let wait = if self.health.is_up() {
                        backoff = MIN_BACKOFF;
                        self.settings.heartbeat_ttl / 4
                    } else {
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    };
                    next_heartbeat = tokio::time::Instant::now() + wait;
                }
            }
        }
        while tasks.next().await.is_some() {}
    }

    async fn handle(&self, request: Request, replies: &Sender<Reply>) {
        let reply = match request {
            Request::Push { seq, ids, count } => Reply::Pushed {
                seq,
                counts: self.push(ids, count).await,
            },
            Request::MarkFlushed { generation, window } => Reply::Flushed {
                generation,
                window,
                ok: self.mark_flushed(window).await.is_some(),
            },
            Request::Settle {
                window,
                overdue,
                adopt,
            } => {
                let settlement = self.settle(window, overdue, adopt).await;
                let why = match settlement {
                    Some(Settlement::NotYet(why)) => Some(why),
                    Some(Settlement::Claimed(_)) => Some("the claim is not on a replica yet"),
                    _ => None,
                };
                if let Some(why) = why
                    && overdue
                    && self.late_logged.replace(Some(window)) != Some(window)
                {
                    log::warn!(
                        "window {}: report still not settled after --report-max-delay-secs: {why}",
                        self.clock.start_rfc3339(window)
                    );
                }
                Reply::Settled { window, settlement }
            }
            Request::Amend { window } => Reply::Settled {
                window,
                settlement: self.amend(window).await,
            },
            Request::Reassert { windows } => {
                self.reassert(&windows).await;
                return;
            }
            Request::CheckCounted { window } => Reply::Checked {
                window,
                check: self.check_counted(window).await,
            },
            Request::Leave => {
                let leave = keyed(&keys::instances(), "ZREM", &self.settings.process);
                let _ = self.run(vec![leave]).await;
                Reply::Left
            }
        };
        // The recorder has gone only at the end of a shutdown.
        let _ = replies.send(reply);
    }

    async fn run(&self, cmds: Vec<Routed>) -> Option<Vec<Value>> {
        self.nodes.run(&cmds).await.ok()
    }

    /// Announces the instance and reads which others are live; while Redis does not answer,
    /// probes every node first and says that Redis answers again once both succeed.
    async fn heartbeat(&self, running: &Cell<bool>) {
        if !self.health.is_up() {
            let probed_at = self.time.now();
            if let Err(e) = self.nodes.probe().await {
                self.health.failed(&e);
                running.set(false);
                return;
            }
            if self.health.lost_data_since(probed_at) {
                self.note_loss();
            }
        }
        let instances = keys::instances();
        let now = self.now_ms();
        let ttl = millis(self.settings.heartbeat_ttl);
        let horizon = now.saturating_sub(10 * ttl);
        let announce = keyed(&instances, "ZADD", (now, &self.settings.process));
        let forget = keyed(&instances, "ZREMRANGEBYSCORE", ("-inf", horizon));
        let live = keyed(
            &instances,
            "ZRANGEBYSCORE",
            (now.saturating_sub(ttl), "+inf"),
        );
        if let Some(values) = self.run(vec![announce, forget, live]).await {
            self.health.answered();
            if let Ok(live) = Vec::<String>::from_redis_value(&values[2]) {
                self.saw_live(&live);
            }
        }
        running.set(false);
    }

    /// Records the instances read live now, forgetting those not seen within the keys'
    /// expiry (no claim of theirs is left by then).
    fn saw_live(&self, live: &[String]) {
        let now = self.time.now();
        let mut seen = self.seen.borrow_mut();
        seen.read_at = Some(now);
        for process in live {
            seen.last_seen.insert(instance_of(process).to_owned(), now);
        }
        let horizon = now - self.settings.key_ttl;
        seen.last_seen.retain(|_, &mut t| t >= horizon);
    }

    /// A Redis server lost data: the instances seen live until now may have held claims it
    /// lost.
    fn note_loss(&self) {
        let seen = self.seen.borrow().clone();
        *self.seen_before_loss.borrow_mut() = seen;
    }

    async fn push(
        &self,
        ids: Vec<(WindowIndex, Vec<i64>)>,
        count: Vec<WindowIndex>,
    ) -> Option<Vec<(WindowIndex, u64)>> {
        let shards = self.settings.shards;
        let ttl = self.key_ttl_secs();
        let mut cmds = Vec::new();
        let epoch = self.health.epoch();
        let mut new_keys = Vec::new();
        for (window, ids) in ids {
            let keys = keys::id_shards(&self.clock.start_rfc3339(window), shards);
            let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); keys.len()];
            for id in ids {
                by_shard[keys::shard_of(id, shards)].push(id);
            }
            for (key, ids) in keys.iter().zip(by_shard) {
                if ids.is_empty() {
                    continue;
                }
                for chunk in ids.chunks(IDS_PER_COMMAND) {
                    cmds.push(keyed(key, "SADD", chunk));
                }
                if !self.expires(epoch, &key.name) {
                    cmds.push(keyed(key, "EXPIRE", ttl));
                    new_keys.push(key.name.clone());
                }
            }
        }
        if !cmds.is_empty() {
            self.run(cmds).await?;
        }
        self.expire_given(epoch, new_keys);
        let mut counts = Vec::with_capacity(count.len());
        for window in count {
            counts.push((window, self.count(window).await?));
        }
        Some(counts)
    }

    /// Milliseconds since the Unix epoch, as scores in Redis.
    fn now_ms(&self) -> u64 {
        self.time.now().duration_since(UNIX_EPOCH).map_or(0, millis)
    }

    /// Expiry of every per-window key, in whole seconds.
    fn key_ttl_secs(&self) -> u64 {
        self.settings.key_ttl.as_secs().max(1)
    }

    /// Keys given their expiry in this epoch.
    fn expire_given(&self, epoch: u64, keys: Vec<String>) {
        let mut expiring = self.expiring.borrow_mut();
        if expiring.0 == epoch {
            // Old windows' keys are forgotten now and then; another EXPIRE is harmless.
            if expiring.1.len() > 4096 {
                expiring.1.clear();
            }
            expiring.1.extend(keys);
        }
    }

    /// Whether the key has its expiry in this epoch.
    fn expires(&self, epoch: u64, key: &str) -> bool {
        let mut expiring = self.expiring.borrow_mut();
        if expiring.0 != epoch {
            *expiring = (epoch, HashSet::new());
        }
        expiring.1.contains(key)
    }

    /// A window's global count: the sum of its shards' sizes.
    async fn count(&self, window: WindowIndex) -> Option<u64> {
        let keys = keys::id_shards(&self.clock.start_rfc3339(window), self.settings.shards);
        let cmds = keys
            .iter()
            .map(|key| keyed(key, "SCARD", NO_ARGS))
            .collect();
        let sizes = self.run(cmds).await?;
        sizes.iter().map(|v| u64::from_redis_value(v).ok()).sum()
    }

    /// A window's count and the instances whose flush marks are on every shard. Each shard's
    /// marks are read before its size, from the same node in the same pipeline: a mark read
    /// vouches for ids the size read after it has.
    async fn tally(&self, window: WindowIndex) -> Option<Tally> {
        let shards = keys::id_shards(&self.clock.start_rfc3339(window), self.settings.shards);
        let cmds = shards
            .iter()
            .flat_map(|shard| {
                [
                    keyed(&keys::flushed(shard), "SMEMBERS", NO_ARGS),
                    keyed(shard, "SCARD", NO_ARGS),
                ]
            })
            .collect();
        let values = self.run(cmds).await?;
        let mut marked: Option<Vec<String>> = None;
        let mut count = 0;
        for shard in values.chunks(2) {
            let marks: Vec<String> = FromRedisValue::from_redis_value(&shard[0]).ok()?;
            count += u64::from_redis_value(&shard[1]).ok()?;
            marked = Some(match marked {
                None => marks,
                Some(everywhere) => everywhere
                    .into_iter()
                    .filter(|i| marks.contains(i))
                    .collect(),
            });
        }
        Some(Tally {
            marked: marked.unwrap_or_default(),
            count,
        })
    }

    /// Marks the window flushed by this instance on every shard, beside the ids.
    async fn mark_flushed(&self, window: WindowIndex) -> Option<()> {
        let shards = keys::id_shards(&self.clock.start_rfc3339(window), self.settings.shards);
        let ttl = self.key_ttl_secs();
        let cmds = shards
            .iter()
            .flat_map(|shard| {
                let marks = keys::flushed(shard);
                [
                    keyed(&marks, "SADD", &self.settings.process),
                    keyed(&marks, "EXPIRE", ttl),
                ]
            })
            .collect();
        self.run(cmds).await?;
        Some(())
    }

    /// This instance's flush mark is missing from a shard, though the recorder asks to count
    /// only once its marks are set: that shard's master lost writes it had acknowledged (a
    /// failover, a restart), this instance's ids with them, and no error said so here.
    fn own_marks_lost(&self, start: &str) -> Settlement {
        log::warn!(
            "window {start}: this instance's flush mark is gone from redis, and its ids with it; \
             pushing them again"
        );
        self.health.marks_lost();
        self.note_loss();
        Settlement::NotYet("this instance's flush mark is gone from redis: its ids go again")
    }

    /// One round of settling a window's report. Exactly one instance writes each report: the
    /// lease (`SET NX PX`) picks who waits for the flush marks and counts, and the reported
    /// marker, claimed with `SET NX` and held by a replica (`WAIT`) before the report is
    /// written, makes sure that a failover losing the lease cannot make a second reporter.
    async fn settle(&self, window: WindowIndex, overdue: bool, adopt: bool) -> Option<Settlement> {
        // After a Redis restart, give every live instance time to find Redis again (its
        // probes back off up to MAX_BACKOFF), then a heartbeat to announce itself and set its
        // report claims again: settled sooner, a window another instance reported just before
        // the restart would be reported twice (the chaos run of seed 101, host mode, did).
        let settled = self.health.up_since().is_some_and(|t| {
            self.time.instant().saturating_duration_since(t)
                >= self.settings.heartbeat_ttl + MAX_BACKOFF
        });
        if !settled {
            return Some(Settlement::NotYet(
                "redis answers again since less than a heartbeat and a probe backoff",
            ));
        }
        let start = self.clock.start_rfc3339(window);
        let (lease, reported) = (keys::lease(&start), keys::reported(&start));
        let end = self.clock.end(window);
        // When the claim's server started, read once, where it decides something: a window
        // to adopt, or one whose claim a restart found since its end may have taken.
        let lost_since_end = self.health.lost_data_since(end);
        let started = if adopt || lost_since_end {
            Some(self.node_started(&reported).await?)
        } else {
            None
        };
        if adopt && started.is_some_and(|t| t >= end) {
            return Some(Settlement::NotAdopted);
        }
        let awaited = match started {
            Some(started) if lost_since_end => self.awaited_claimants(end, started).await?,
            _ => Vec::new(),
        };
        if !awaited.is_empty() {
            if self.awaiting_logged.replace(Some(window)) != Some(window) {
                log::info!(
                    "window {start}: redis restarted after it ended; waiting for {} to set \
                     their report claims again",
                    awaited.join(", ")
                );
            }
            return Some(Settlement::NotYet(
                "redis restarted after the window ended: waiting for instances that could \
                 have claimed its report to set their claims again",
            ));
        }
        let me = &self.settings.process;
        let ttl_ms = millis(self.settings.heartbeat_ttl);
        let elect = vec![
            keyed(&reported, "GET", NO_ARGS),
            keyed(&lease, "SET", (me, "NX", "PX", ttl_ms)),
            keyed(&lease, "GET", NO_ARGS),
        ];
        let values = self.run(elect).await?;
        match holder(&values[0])? {
            // Another instance's claim; or, of a window this process does not hold from its
            // log, an earlier process's of this instance (it wrote the report, or its log is
            // gone with it).
            Some(holder) if holder != *me && (adopt || instance_of(&holder) != instance_of(me)) => {
                self.unsure_claims.borrow_mut().remove(&window);
                return self.by_other(&start).await;
            }
            // Ours, not on a replica yet when last tried: hold it again. Or an earlier
            // process's of this instance, killed before it wrote the report: the window's ids
            // are in this process's log, whose segments go only once the report is written, so
            // nobody else reports it (the simulator's seed 1 found the window unreported): this
            // process takes the claim over.
            Some(holder) => {
                if holder != *me {
                    self.take_over(window, &start, &holder).await?;
                }
                let tally = self.tally(window).await?;
                if !tally.marked.contains(me) {
                    return Some(self.own_marks_lost(&start));
                }
                return self.report_claimed(window, &start, overdue, tally).await;
            }
            None => {}
        }
        if !held_by(&values[2], me)? {
            return Some(Settlement::NotYet("another instance holds the lease"));
        }
        self.run(vec![keyed(&lease, "PEXPIRE", ttl_ms)]).await?;

        let tally = self.tally(window).await?;
        if !tally.marked.contains(me) {
            return Some(self.own_marks_lost(&start));
        }
        if adopt && tally.count == 0 {
            let _ = self.run(vec![keyed(&lease, "UNLINK", NO_ARGS)]).await;
            return Some(Settlement::NotAdopted);
        }
        let missing = self.unmarked_live_instances(&tally.marked).await?;
        if !missing.is_empty() {
            if !overdue {
                return Some(Settlement::NotYet(
                    "waiting for the flush marks of live instances",
                ));
            }
            log::warn!(
                "window {start}: reporting after --report-max-delay-secs without the flush \
                 marks of {}",
                missing.join(", ")
            );
        }
        self.report_claimed(window, &start, overdue, tally).await
    }

    /// Takes over the claim of an earlier process of this instance that died before it wrote
    /// the report. The others saw that claim and forgot their ids: should Redis have lost some
    /// since, its count has them (the simulator's seed 11 reported fewer), so the count
    /// reported here is at least that.
    async fn take_over(&self, window: WindowIndex, start: &str, holder: &str) -> Option<()> {
        log::warn!(
            "window {start}: claimed by {holder}, an earlier process of this instance that did \
             not write the report; reporting it here"
        );
        let me = &self.settings.process;
        let take_over = keyed(&keys::reported(start), "SET", (me, "XX", "KEEPTTL"));
        self.run(vec![take_over]).await?;
        if let Some(kept) = self.counted.borrow().get(&window)
            && kept.holder == holder
            && self
                .unsure_claims
                .borrow()
                .get(&window)
                .is_none_or(|unsure| unsure.count < kept.count)
        {
            self.unsure_claims
                .borrow_mut()
                .insert(window, Tally::of(kept));
        }
        Some(())
    }

    /// Claims the window's report with the count read; the lease is held (or was, when the
    /// claim was made).
    async fn report_claimed(
        &self,
        window: WindowIndex,
        start: &str,
        overdue: bool,
        tally: Tally,
    ) -> Option<Settlement> {
        // Kept until this claim's outcome is known: Redis may fail again on the way.
        let unsure = self.unsure_claims.borrow().get(&window).cloned();
        let Tally { marked, count } = match unsure {
            Some(unsure) if unsure.count > tally.count => {
                log::warn!(
                    "window {start}: counting {} ids, as when this instance last claimed its \
                     report: redis holds {} now",
                    unsure.count,
                    tally.count
                );
                unsure
            }
            _ => tally,
        };
        // Whose ids the count holds whole, written before the claim that others read it by.
        let marks = marked.join("\n");
        let counted = keyed(
            &keys::counted(start),
            "SET",
            (&marks, "EX", self.key_ttl_secs()),
        );
        self.run(vec![counted]).await?;
        self.remember_counted(window, marks, count);
        let tally = Tally { marked, count };
        self.unsure_claims.borrow_mut().insert(window, tally);
        if let (Some(wal), Some(claim)) = (&self.kept, self.counted.borrow().get(&window)) {
            wal.keep_claim(claim);
        }
        let claimed = self.claim(&keys::reported(start), overdue).await?;
        // A claim not on a replica yet is there for the others all the same: they leave the
        // window and forget their ids, so its count stays the floor of the next rounds' (the
        // simulator's seed 11 reported fewer after Redis lost ids between two rounds).
        if claimed != ClaimOutcome::NotReplicated {
            self.unsure_claims.borrow_mut().remove(&window);
        }
        if let (Some(wal), Some(claim)) = (&self.kept, self.counted.borrow().get(&window)) {
            if claimed == ClaimOutcome::Theirs {
                wal.forget_claim(window);
            } else {
                wal.keep_claim(&Claim {
                    confirmed: true,
                    ..claim.clone()
                });
            }
        }
        Some(match claimed {
            ClaimOutcome::Ours => {
                self.retire(start, count).await;
                Settlement::Won(count)
            }
            ClaimOutcome::Theirs => return self.by_other(start).await,
            ClaimOutcome::NotReplicated => Settlement::Claimed(count),
        })
    }

    fn remember_counted(&self, window: WindowIndex, marks: String, count: u64) {
        let mut counted = self.counted.borrow_mut();
        let now = self.time.now();
        let live = |w: WindowIndex| self.clock.end(w) + self.settings.key_ttl > now;
        self.unsure_claims.borrow_mut().retain(|&w, _| live(w));
        counted.retain(|&w, _| {
            let live = live(w);
            if let (false, Some(wal)) = (live, &self.kept) {
                wal.forget_claim(w);
            }
            live
        });
        counted.insert(
            window,
            Claim {
                window,
                holder: self.settings.process.clone(),
                count,
                marks,
                made_at: now,
                confirmed: false,
            },
        );
    }

    /// Sets this instance's claims on windows it has reported again, and the records of whose
    /// marks their counts had, where Redis lost them (a restarted server): without a claim
    /// another instance would report the window a second time, without the record an
    /// instance whose ids the count lacks would take them for counted. A published count is
    /// then marked lost (for an amend horizon from now): the window's ids went with it, so an
    /// amendment's count would be short of the report's ids. This where Redis lost it within
    /// the claim's amend horizon only; past it, the count is gone by its expiry. Once the
    /// claims are set, this process says so (`verve:returned`, scored by when), so that the
    /// others, waiting for a claimant to come back after a restart, stop waiting for it.
    async fn reassert(&self, windows: &[WindowIndex]) {
        self.resolve_claiming().await;
        let mut windows: BTreeSet<WindowIndex> = windows.iter().copied().collect();
        windows.extend(self.resolved.borrow().iter());
        let ttl = self.key_ttl_secs();
        let mut cmds = Vec::new();
        for window in windows {
            let start = self.clock.start_rfc3339(window);
            let counted = self.counted.borrow().get(&window).cloned();
            // In the claimant's name: an earlier process of this instance, when it made the
            // claim.
            let holder = counted
                .as_ref()
                .map_or(self.settings.process.as_str(), |c| c.holder.as_str());
            cmds.push(keyed(
                &keys::reported(&start),
                "SET",
                (holder, "NX", "EX", ttl),
            ));
            if let Some(claim) = &counted {
                cmds.push(keyed(
                    &keys::counted(&start),
                    "SET",
                    (&claim.marks, "NX", "EX", ttl),
                ));
                let published = keys::published(&start);
                if self.lost_while_amendable(claim, &start).await {
                    // Over the count, where it survived: an amendment counting what is left
                    // would publish too few (the simulator's seed 197 did).
                    cmds.push(keyed(&published, "SET", (LOST, "XX", "KEEPTTL")));
                    cmds.push(keyed(
                        &published,
                        "SET",
                        (LOST, "NX", "PX", millis(self.settings.amend_horizon).max(1)),
                    ));
                }
            }
        }
        // The claims first, then the word that they are set: a reader of the word finds them.
        if !cmds.is_empty() && self.run(cmds).await.is_none() {
            return;
        }
        let returned = keys::returned();
        let now = self.now_ms();
        let horizon = now.saturating_sub(millis(self.settings.key_ttl));
        let _ = self
            .run(vec![
                keyed(&returned, "ZADD", (now, &self.settings.process)),
                keyed(&returned, "ZREMRANGEBYSCORE", ("-inf", horizon)),
            ])
            .await;
    }

    /// Finds whether the claims an earlier process was making when it died were made: held
    /// in its name, they are this instance's (set again from now on, like the others); held
    /// by another, forgotten. Where Redis holds none (lost, or never made), the count stays
    /// the floor of this process's, should it report the window (the simulator's seed 1195:
    /// a claimant killed while its claim waited for a replica, the others having left the
    /// window to it, then Redis lost the claim and the others' ids).
    async fn resolve_claiming(&self) {
        let pending: Vec<Claim> = self.claiming.borrow().values().cloned().collect();
        if pending.is_empty() {
            return;
        }
        let cmds = pending
            .iter()
            .map(|c| {
                let start = self.clock.start_rfc3339(c.window);
                keyed(&keys::reported(&start), "GET", NO_ARGS)
            })
            .collect();
        let Some(values) = self.run(cmds).await else {
            return;
        };
        for (claim, value) in pending.into_iter().zip(values) {
            let Some(Some(holder)) = holder(&value) else {
                continue;
            };
            self.claiming.borrow_mut().remove(&claim.window);
            if let Some(wal) = &self.kept {
                if holder == claim.holder {
                    let made = Claim {
                        confirmed: true,
                        ..claim
                    };
                    wal.keep_claim(&made);
                    self.resolved.borrow_mut().insert(made.window);
                    self.counted.borrow_mut().insert(made.window, made);
                } else {
                    wal.forget_claim(claim.window);
                }
            }
        }
    }

    /// Whether Redis may have lost ids of a claimed window, or its published count, while
    /// its report could be amended: a server holding one of them started between the claim
    /// and the amend horizon's end, and that not longer ago than the others wait for a
    /// claimant to come back (an instance back in time that waited is not late). An
    /// amendment would then count what is left and publish too few.
    async fn lost_while_amendable(&self, claim: &Claim, start: &str) -> bool {
        let horizon_end = claim.made_at + self.settings.amend_horizon;
        if horizon_end + self.settings.claims_return_wait <= self.time.now() {
            return false;
        }
        let mut held = keys::id_shards(start, self.settings.shards);
        held.push(keys::published(start));
        self.nodes_started(&held).await.is_some_and(|started| {
            started
                .iter()
                .any(|&started| claim.made_at < started && started < horizon_end)
        })
    }

    /// Publishes the window's count again where it has grown since its report: this
    /// instance's ids, which the report lacked, are in Redis now. Within the amend horizon
    /// the window's ids are all still there, so the count read is the whole window's.
    async fn amend(&self, window: WindowIndex) -> Option<Settlement> {
        let start = self.clock.start_rfc3339(window);
        let Tally { marked, count } = self.tally(window).await?;
        let published = keys::published(&start);
        if !marked.contains(&self.settings.process) {
            // Gone with the window's ids at the end of the amend horizon, or lost with them.
            let exists = self.run(vec![keyed(&published, "EXISTS", NO_ARGS)]).await?;
            return Some(if u64::from_redis_value(&exists[0]).ok()? == 0 {
                Settlement::PastAmends
            } else {
                self.own_marks_lost(&start)
            });
        }
        let script = about(
            &published,
            redis::cmd("EVAL")
                .arg(PUBLISH_LARGER)
                .arg(1)
                .arg(&published.name)
                .arg(count)
                .to_owned(),
        );
        let before = self.run(vec![script]).await?;
        let before = i64::from_redis_value(&before[0]).ok()?;
        // Fewer ids than the report counted: Redis lost some since.
        Some(match u64::try_from(before) {
            Err(_) if before == -1 => Settlement::PastAmends,
            Ok(before) if count > before => Settlement::Amended(count),
            Ok(before) if count == before => Settlement::ByOther { counted_here: true },
            _ => Settlement::LostSinceReport,
        })
    }

    async fn check_counted(&self, window: WindowIndex) -> Option<Counted> {
        let start = self.clock.start_rfc3339(window);
        let values = self
            .run(vec![
                keyed(&keys::reported(&start), "GET", NO_ARGS),
                keyed(&keys::lease(&start), "GET", NO_ARGS),
            ])
            .await?;
        Some(match (holder(&values[0])?, holder(&values[1])?) {
            (Some(claimant), _) if claimant != self.settings.process => {
                match self.by_other(&start).await? {
                    Settlement::ByOther { counted_here: true } => Counted::Yes,
                    _ => Counted::No,
                }
            }
            (None, Some(leader)) if leader != self.settings.process => Counted::Settling,
            _ => Counted::Yes,
        })
    }

    /// Another instance has claimed the report: whether its count had this instance's flush
    /// mark. Without the record (a restarted Redis lost it), it is taken to have.
    async fn by_other(&self, start: &str) -> Option<Settlement> {
        let counted = self
            .run(vec![keyed(&keys::counted(start), "GET", NO_ARGS)])
            .await?;
        let counted: Option<String> = FromRedisValue::from_redis_value(&counted[0]).ok()?;
        let me = &self.settings.process;
        let counted_here = counted.is_none_or(|c| c.lines().any(|i| i == me));
        Some(Settlement::ByOther { counted_here })
    }

    /// Once a window's report is claimed its lease is read no more: it goes now. Its ids and
    /// their flush marks (which amendments read) stay for the amend horizon and then expire,
    /// rather than at the keys' expiry, so that Redis holds about one window more than the
    /// two being counted and reported; the count stays as long, for amendments to compare
    /// with. The claim stays until its expiry, so that nobody reports the window again. Best
    /// effort: what is left expires.
    async fn retire(&self, start: &str, count: u64) {
        let horizon = millis(self.settings.amend_horizon);
        let ids_ttl = horizon + millis(AMEND_MARGIN);
        let mut cmds: Vec<Routed> = keys::id_shards(start, self.settings.shards)
            .iter()
            .flat_map(|shard| {
                [
                    keyed(shard, "PEXPIRE", ids_ttl),
                    keyed(&keys::flushed(shard), "PEXPIRE", ids_ttl),
                ]
            })
            .collect();
        cmds.push(keyed(
            &keys::published(start),
            "SET",
            (count, "PX", horizon.max(1)),
        ));
        cmds.push(keyed(&keys::lease(start), "UNLINK", NO_ARGS));
        let _ = self.run(cmds).await;
    }

    /// Claims the window's report: the marker set if absent, then (when the node has
    /// replicas) held by at least one of them. Past `--report-max-delay-secs` a claim no
    /// replica acknowledges is taken all the same (with a warning): a window must be
    /// reported, and only a failover in that moment could report it twice.
    async fn claim(&self, reported: &Key, overdue: bool) -> Option<ClaimOutcome> {
        let me = &self.settings.process;
        let cmds = vec![
            keyed(reported, "SET", (me, "NX", "EX", self.key_ttl_secs())),
            keyed(reported, "GET", NO_ARGS),
            about(reported, redis::cmd("ROLE")),
        ];
        let values = self.run(cmds).await?;
        if !held_by(&values[1], me)? {
            return Some(ClaimOutcome::Theirs);
        }
        if replicas(&values[2]) == 0 {
            return Some(ClaimOutcome::Ours);
        }
        let wait = about(
            reported,
            redis::cmd("WAIT").arg(1).arg(WAIT_REPLICA_MS).to_owned(),
        );
        let acked = self.run(vec![wait]).await?;
        Some(if i64::from_redis_value(&acked[0]).ok()? >= 1 {
            ClaimOutcome::Ours
        } else if overdue {
            log::warn!(
                "{}: no replica acknowledged the report claim within --report-max-delay-secs; \
                 reporting all the same",
                reported.name
            );
            ClaimOutcome::Ours
        } else {
            ClaimOutcome::NotReplicated
        })
    }

    /// When the node that holds `key` started (`INFO server`'s uptime, in whole seconds, so
    /// that it errs towards a later start, by less than a second): it holds every claim set
    /// on `key` since.
    async fn node_started(&self, key: &Key) -> Option<SystemTime> {
        self.nodes_started(std::slice::from_ref(key)).await?.pop()
    }

    /// When the servers of `keys` started, in one call (a pipeline per server).
    async fn nodes_started(&self, keys: &[Key]) -> Option<Vec<SystemTime>> {
        let infos = keys
            .iter()
            .map(|key| about(key, redis::cmd("INFO").arg("server").to_owned()))
            .collect();
        let infos = self.run(infos).await?;
        let now = self.time.now();
        infos
            .iter()
            .map(|info| {
                let info: String = FromRedisValue::from_redis_value(info).ok()?;
                let uptime: u64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix("uptime_in_seconds:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(now - Duration::from_secs(uptime))
            })
            .collect()
    }

    /// The instances a window that ended at `end` waits for before anyone but its claimant
    /// settles it (defect 15 of docs/reliability.md): when the server of its claim, which
    /// `started` then, restarted after the window ended, the claim may have gone with it while
    /// its claimant was down, and the claimant's next process sets it again from its log's
    /// directory. Those of the instances that could have claimed it whose processes have not
    /// said since the restart that they set their claims again (`verve:returned`), until
    /// `claims_return_wait` after the restart; none otherwise.
    async fn awaited_claimants(&self, end: SystemTime, started: SystemTime) -> Option<Vec<String>> {
        if started < end || self.time.now() >= started + self.settings.claims_return_wait {
            return Some(Vec::new());
        }
        let could_have = self.seen_before_loss.borrow().could_have_claimed(end);
        if could_have.is_empty() {
            return Some(Vec::new());
        }
        // The start errs late by less than a second: a process that set its claims again in
        // that second counts.
        let since = millis(
            (started - Duration::from_secs(1))
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let returned = self.scored_since(&keys::returned(), since).await?;
        Some(
            could_have
                .into_iter()
                .filter(|id| !returned.iter().any(|p| instance_of(p) == id))
                .collect(),
        )
    }

    /// Live instances whose flush marks are not on every shard.
    async fn unmarked_live_instances(&self, marked: &[String]) -> Option<Vec<String>> {
        let since = self
            .now_ms()
            .saturating_sub(millis(self.settings.heartbeat_ttl));
        let live = self.scored_since(&keys::instances(), since).await?;
        Some(live.into_iter().filter(|i| !marked.contains(i)).collect())
    }

    /// The members of a sorted set of processes scored by a time (ms) at or after `since`.
    async fn scored_since(&self, key: &Key, since: u64) -> Option<Vec<String>> {
        let members = self
            .run(vec![keyed(key, "ZRANGEBYSCORE", (since, "+inf"))])
            .await?;
        FromRedisValue::from_redis_value(&members[0]).ok()
    }
}

/// What a window's shards held when read.
#[derive(Clone)]
struct Tally {
    /// The instances whose flush marks were on every shard: all their ids are in `count`.
    marked: Vec<String>,
    count: u64,
}

impl Tally {
    /// The tally a kept claim was made with.
    fn of(claim: &Claim) -> Tally {
        Tally {
            marked: claim.marks.lines().map(str::to_owned).collect(),
            count: claim.count,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOutcome {
    Ours,
    Theirs,
    NotReplicated,
}

/// For a command of just a key.
const NO_ARGS: &[&str] = &[];

/// `name key args...`, routed by the key.
fn keyed(key: &Key, name: &str, args: impl ToRedisArgs) -> Routed {
    about(key, redis::cmd(name).arg(&key.name).arg(args).to_owned())
}

/// A command without a key that must go to the node of `key` (`ROLE`, `WAIT`).
fn about(key: &Key, cmd: Cmd) -> Routed {
    Routed {
        slot: key.slot,
        cmd,
    }
}

/// Whether a `GET` reply names `me`; `None` for a reply that is not a string or nil.
fn held_by(value: &Value, me: &str) -> Option<bool> {
    Some(holder(value)?.as_deref() == Some(me))
}

/// Who a lease or claim key names, from its `GET`: `Some(None)` when nobody; `None` when the
/// reply is not a string.
#[allow(
    clippy::option_option,
    reason = "the reply's two absences differ: no holder, or not a string at all"
)]
fn holder(value: &Value) -> Option<Option<String>> {
    FromRedisValue::from_redis_value(value).ok()
}

/// The replicas a `ROLE` reply of a master lists.
fn replicas(role: &Value) -> usize {
    match role {
        Value::Array(fields) => match fields.get(2) {
            Some(Value::Array(replicas)) => replicas.len(),
            _ => 0,
        },
        _ => 0,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn seen(read_at: u64, last_seen: &[(&str, u64)]) -> SeenLive {
        SeenLive {
            read_at: Some(at(read_at)),
            last_seen: last_seen
                .iter()
                .map(|&(id, t)| (id.to_owned(), at(t)))
                .collect(),
        }
    }

    #[test]
    fn the_instances_that_could_have_claimed_a_window_are_those_seen_since_it_ended() {
        let seen = seen(200, &[("a", 200), ("b", 150), ("c", 90)]);
        assert_eq!(seen.could_have_claimed(at(100)), ["a", "b"]);
    }

    #[test]
    fn a_process_cut_off_before_the_window_ended_waits_for_those_live_at_its_last_look() {
        // Last read at 80, before the window's end at 100: a and b were live then and could
        // have claimed it since; c had gone before.
        let seen = seen(80, &[("a", 80), ("b", 80), ("c", 40)]);
        assert_eq!(seen.could_have_claimed(at(100)), ["a", "b"]);
    }

    #[test]
    fn a_process_that_never_read_the_instances_waits_for_nobody() {
        assert!(SeenLive::default().could_have_claimed(at(100)).is_empty());
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
}
