//! The recorder's end of the Redis thread: what it asks, what it is told, and the settings.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::super::connect::{Connect, RedisClients};
use super::super::health::RedisHealth;
use super::super::nodes::{Nodes, Topology};
use super::super::protocol::{Counted, Memory, Settlement};
use super::Store;
use crate::clock::Clock;
use crate::config::DistributedSettings;
use crate::metrics::Metrics;
use crate::wal::WalDir;
use crate::window::{WindowClock, WindowIndex};

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
    /// Sets the report claims this instance has made again, each with the record of whose
    /// marks its count had, where no claim is there (a restarted Redis lost it), then says
    /// that this process has (`verve:returned`). Nothing is replied.
    Reassert,
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
    /// The report claims this process may hold whose outcome it does not know (an earlier
    /// process's kept beside the log, or one Redis failed on the way of), with the counts
    /// they were made with; told at the start and whenever they change.
    UnsureClaims(Vec<(WindowIndex, u64)>),
    /// `None` when Redis failed on the way.
    Checked {
        window: WindowIndex,
        check: Option<Counted>,
    },
    Left,
}

/// The recorder's end of the Redis thread.
pub struct RedisLink {
    requests: Option<UnboundedSender<Request>>,
    replies: Receiver<Reply>,
    health: Arc<RedisHealth>,
    /// How long the per-window keys (report claims among them) live.
    key_ttl: Duration,
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
    pub(in crate::recorder::distributed) fn new(
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
        let kept_reports = kept
            .as_ref()
            .map(|wal| wal.kept_reports(since))
            .unwrap_or_default();
        let sightings = kept.as_ref().and_then(|wal| wal.sightings());
        if let Some(wal) = &kept {
            health.recall_restarts(wal.restarts_seen());
        }
        let memory = Memory::recovered(kept_reports, sightings);
        let link = RedisLink {
            requests: Some(request_tx),
            replies: reply_rx,
            health: Arc::clone(&health),
            key_ttl,
            thread: None,
        };
        let thread = ThreadStart {
            settings,
            clock,
            health,
            metrics,
            kept,
            memory,
            requests: request_rx,
            replies: reply_tx,
        };
        (link, thread)
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
pub(in crate::recorder::distributed) struct ThreadStart {
    settings: RedisSettings,
    clock: WindowClock,
    health: Arc<RedisHealth>,
    metrics: Arc<Metrics>,
    kept: Option<Arc<WalDir>>,
    memory: Memory,
    requests: UnboundedReceiver<Request>,
    replies: Sender<Reply>,
}

impl ThreadStart {
    /// Serves the recorder's requests with connections `connect` opens, until the recorder
    /// drops its end.
    pub(in crate::recorder::distributed) async fn serve<C: Connect>(self, connect: C) {
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
            late_logged: RefCell::default(),
            memory: RefCell::new(self.memory),
            unsure_told: RefCell::new(Vec::new()),
            kept: self.kept,
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
