//! The Redis thread: everything verve says to Redis, off the recorder's thread. The recorder
//! sends requests and reads replies without ever waiting; here each request is a task on a
//! tokio current-thread runtime that lives only on this thread (the workers never run on
//! tokio), so many pushes are in flight at once and a slow or stalled Redis delays replies,
//! never the recorder. The thread also announces the instance with a heartbeat.
//!
//! Its parts: `link` (the recorder's end: requests, replies, settings), `thread` (the loop
//! that serves the requests, the heartbeat, the pushes), `election` (who settles a window's
//! report), `claim` (the report's claim and its count), `reassert` (claims set again after
//! Redis lost data) and `amend` (amended reports).

mod amend;
mod claim;
mod election;
mod link;
mod reassert;
mod thread;

#[cfg(test)]
pub(super) use amend::PUBLISH_LARGER;
pub(crate) use link::{Counted, Reply, Request, Settlement};
pub use link::{RedisLink, RedisSettings};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::{Cmd, FromRedisValue, ToRedisArgs, Value};

use super::connect::Connect;
use super::health::RedisHealth;
use super::keys::Key;
use super::nodes::{Nodes, Routed};
use crate::clock::Clock;
use crate::wal::WalDir;
use crate::wal::claims::Claim;
use crate::window::{WindowClock, WindowIndex};

/// Ids per `SADD` command.
const IDS_PER_COMMAND: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
    use std::time::UNIX_EPOCH;

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
