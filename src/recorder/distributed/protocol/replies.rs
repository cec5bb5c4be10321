//! Reading Redis's replies: `None` for a reply that is not what its command answers.

use std::time::SystemTime;

use redis::{FromRedisValue, Value};

use super::super::keys::restart_of;
use super::super::nodes::{self, server_started};
use super::memory::Tally;
use crate::wal::seen::Restart;

/// Who a lease or claim key names, from its `GET`: `Some(None)` when nobody; `None` when the
/// reply is not a string.
#[allow(
    clippy::option_option,
    reason = "the reply's two absences differ: no holder, or not a string at all"
)]
pub(super) fn holder(value: &Value) -> Option<Option<String>> {
    FromRedisValue::from_redis_value(value).ok()
}

/// Whether a `GET` reply names `me`.
pub(super) fn held_by(value: &Value, me: &str) -> Option<bool> {
    Some(holder(value)?.as_deref() == Some(me))
}

/// The replicas a `ROLE` reply of a master lists.
pub(super) fn replicas(role: &Value) -> usize {
    match role {
        Value::Array(fields) => match fields.get(2) {
            Some(Value::Array(replicas)) => replicas.len(),
            _ => 0,
        },
        _ => 0,
    }
}

pub(super) fn number<T: FromRedisValue>(value: &Value) -> Option<T> {
    T::from_redis_value(value).ok()
}

/// The members of a set or sorted set.
pub(super) fn members(value: &Value) -> Option<Vec<String>> {
    FromRedisValue::from_redis_value(value).ok()
}

/// A window's tally from the replies to `commands::tally`: the instances whose flush marks
/// are on every shard, and the sum of the shards' sizes.
pub(super) fn tally(values: &[Value]) -> Option<Tally> {
    let mut marked: Option<Vec<String>> = None;
    let mut count = 0;
    for shard in values.chunks(2) {
        let marks = members(&shard[0])?;
        count += number::<u64>(&shard[1])?;
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

/// When each server of the replies to `commands::info` started (`nodes::server_started`).
pub(super) fn started(infos: &[Value], here: SystemTime) -> Option<Vec<SystemTime>> {
    infos
        .iter()
        .map(|info| {
            let info: String = FromRedisValue::from_redis_value(info).ok()?;
            server_started(&info, here)
        })
        .collect()
}

/// The run id of the server of an `INFO server` reply: new at every start.
pub(super) fn run_id(info: &Value) -> Option<String> {
    let info: String = FromRedisValue::from_redis_value(info).ok()?;
    nodes::run_id(&info).map(str::to_owned)
}

/// The masters found restarted, from `commands::restarts`; a member that does not read as one
/// (not written by verve) is passed over.
pub(super) fn restarts(value: &Value) -> Option<Vec<Restart>> {
    let members = members(value)?;
    Some(members.iter().filter_map(|m| restart_of(m)).collect())
}

/// Whether another's report counted this instance's flush mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CountedHere {
    Yes,
    No,
    /// The record is gone with data Redis lost.
    CannotTell,
}

/// Whether another's report counted this instance's flush mark, from the `GET` of
/// `commands::counted`. Without the record, it cannot be told where Redis lost data since the
/// window ended (`lost`; the simulator's seed 311 took it to have, and this instance's ids
/// were in no report); otherwise it went by expiry with the window's keys, and is taken to
/// have.
pub(super) fn counted_here(value: &Value, me: &str, lost: bool) -> Option<CountedHere> {
    let counted: Option<String> = FromRedisValue::from_redis_value(value).ok()?;
    Some(match counted {
        Some(counted) if !counted.lines().any(|i| i == me) => CountedHere::No,
        None if lost => CountedHere::CannotTell,
        _ => CountedHere::Yes,
    })
}
