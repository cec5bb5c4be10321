//! The commands more than one round asks for, each routed by the key it names.

use redis::{Cmd, ToRedisArgs};

use super::super::keys::{self, Key};
use super::super::nodes::Routed;
use super::Context;

/// For a command of just a key.
pub(crate) const NO_ARGS: &[&str] = &[];

/// `name key args...`, routed by the key.
pub(crate) fn keyed(key: &Key, name: &str, args: impl ToRedisArgs) -> Routed {
    about(key, redis::cmd(name).arg(&key.name).arg(args).to_owned())
}

/// A command without a key that must go to the node of `key` (`ROLE`, `WAIT`, `INFO`).
pub(crate) fn about(key: &Key, cmd: Cmd) -> Routed {
    Routed {
        slot: key.slot,
        cmd,
    }
}

/// Each shard's flush marks, then its size, from the same node in the same pipeline: a mark
/// read vouches for the ids the size read after it has (read by `replies::tally`).
pub(super) fn tally(start: &str, shards: u32) -> Vec<Routed> {
    keys::id_shards(start, shards)
        .iter()
        .flat_map(|shard| {
            [
                keyed(&keys::flushed(shard), "SMEMBERS", NO_ARGS),
                keyed(shard, "SCARD", NO_ARGS),
            ]
        })
        .collect()
}

/// `INFO server` of the server of each key, to tell when it started (`replies::started`).
pub(super) fn info(keys: &[Key]) -> Vec<Routed> {
    keys.iter().map(|key| info_at(key.slot)).collect()
}

/// `INFO server` of every master, to tell their run ids (`replies::run_id`).
pub(super) fn info_of_every_master(cx: &Context) -> Vec<Routed> {
    cx.master_slots.iter().map(|&slot| info_at(slot)).collect()
}

fn info_at(slot: u16) -> Routed {
    Routed {
        slot,
        cmd: redis::cmd("INFO").arg("server").to_owned(),
    }
}

/// The masters found restarted since `since` (ms): `replies::restarts`.
pub(super) fn restarts(since: u64) -> Routed {
    scored_since(&keys::restarted(), since)
}

/// The members of a sorted set of processes scored by a time (ms) at or after `since`.
pub(super) fn scored_since(key: &Key, since: u64) -> Routed {
    keyed(key, "ZRANGEBYSCORE", (since, "+inf"))
}

/// Whose flush marks the count of the window's report had (`replies::counted_here`).
pub(super) fn counted(start: &str) -> Routed {
    keyed(&keys::counted(start), "GET", NO_ARGS)
}

/// Marks the window flushed by this instance on every shard, beside the ids: every id of
/// it this instance had is in Redis.
pub(crate) fn mark_flushed(start: &str, cx: &Context) -> Vec<Routed> {
    let ttl = cx.key_ttl_secs();
    keys::id_shards(start, cx.settings.shards)
        .iter()
        .flat_map(|shard| {
            let marks = keys::flushed(shard);
            [keyed(&marks, "SADD", cx.me()), keyed(&marks, "EXPIRE", ttl)]
        })
        .collect()
}
