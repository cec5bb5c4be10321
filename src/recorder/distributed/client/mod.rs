//! The Redis thread: everything verve says to Redis, off the recorder's thread. The recorder
//! sends requests and reads replies without ever waiting; here each request is a task on a
//! tokio current-thread runtime that lives only on this thread (the workers never run on
//! tokio), so many pushes are in flight at once and a slow or stalled Redis delays replies,
//! never the recorder. The thread also announces the instance with a heartbeat.
//!
//! Its parts: `link` (the recorder's end: requests, replies, settings) and `thread` (the loop
//! that serves the requests, the heartbeat, the pushes, and the driver of the protocol's
//! rounds, which decide what to say to Redis: `protocol`).

mod link;
mod thread;

pub use link::{RedisLink, RedisSettings};
pub(crate) use link::{Reply, Request};

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::connect::Connect;
use super::health::RedisHealth;
use super::nodes::Nodes;
use super::protocol::Memory;
use super::said_once::SaidOnce;
use crate::clock::Clock;
use crate::wal::WalDir;
use crate::window::{WindowClock, WindowIndex};

/// Ids per `SADD` command.
const IDS_PER_COMMAND: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);

struct Store<C: Connect> {
    time: Clock,
    nodes: Nodes<C>,
    settings: RedisSettings,
    clock: WindowClock,
    health: Arc<RedisHealth>,
    /// Id keys given their expiry, and the health epoch that holds for: Redis may have lost
    /// them (and their expiry) whenever the epoch moves on.
    expiring: RefCell<(u64, HashSet<String>)>,
    /// The windows said to be late, so that each is said once.
    late_logged: RefCell<SaidOnce>,
    /// What this process remembers between the protocol's rounds.
    memory: RefCell<Memory>,
    /// The claims of unknown outcome last told to the recorder (`Reply::UnsureClaims`).
    unsure_told: RefCell<Vec<(WindowIndex, u64)>>,
    /// The write-ahead log's directory, where the claims are kept across restarts.
    kept: Option<Arc<WalDir>>,
}
