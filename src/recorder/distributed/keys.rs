//! The keys verve keeps in Redis and the cluster slot each one hashes to.
//!
//! `<w>` is the window start in RFC 3339, e.g. `2026-11-24T06:21:00Z`:
//! - `verve:w:<w>` or `verve:w:<w>:<shard>`: the ids of a window (sets, with an expiry)
//! - `verve:instances`: sorted set of instance ids scored by their last heartbeat (ms)
//! - `verve:returned`: sorted set of `<process>@<run id>` scored by when the process last set
//!   its report claims again (ms), after Redis may have lost them, one member for each master
//!   (by its `run_id`) that then held them
//! - `verve:restarted:{verve:instances}`: sorted set of the Redis masters found restarted, as
//!   `<first slot>-<last slot>@<start, ms>` scored by the start, written by the instances
//!   that found them so, beside `verve:instances` (its hash tag: one master for a heartbeat)
//! - `verve:flushed:{<shard>}`: beside each shard key `<shard>` (its hash tag puts it in the
//!   shard's slot, so on the shard's master): the instances that have pushed all their ids of
//!   the window; a master that loses ids it acknowledged (a failover, a restart) loses the
//!   marks set after them too, so a mark vouches for ids that are still there
//! - `verve:report:<w>`: the election lease of the window's reporter
//! - `verve:reported:<w>`: set once the window's report is settled, before it is written
//! - `verve:counted:<w>`: the instances whose flush marks the report's count had (one per
//!   line), so that an instance whose mark came too late amends the report
//! - `verve:count:<w>`: the count last published for the window (its report, then each
//!   amendment); it expires when the window's ids may no longer be amended
//!
//! No window's key but the flush marks has a hash tag: in a Redis Cluster the shards of a
//! window land on different masters.

use std::time::{Duration, UNIX_EPOCH};

use super::protocol::millis_since_epoch;
use crate::id_set::hash_id;
use crate::wal::seen::Restart;

/// Slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// A key and the cluster slot it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) slot: u16,
}

impl Key {
    pub(crate) fn new(name: String) -> Key {
        let slot = slot_of(name.as_bytes());
        Key { name, slot }
    }
}

/// The shard keys of one window's ids; the shards are disjoint by id hash, so the window's
/// count is the sum of their sizes.
pub(crate) fn id_shards(window_start: &str, shards: u32) -> Vec<Key> {
    if shards <= 1 {
        vec![Key::new(format!("verve:w:{window_start}"))]
    } else {
        (0..shards)
            .map(|s| Key::new(format!("verve:w:{window_start}:{s}")))
            .collect()
    }
}

/// Which of `shards` keys an id goes to.
pub(crate) fn shard_of(id: i64, shards: u32) -> usize {
    (hash_id(id) % u64::from(shards.max(1))) as usize
}

/// The flush marks of one shard, in the shard's slot.
pub(crate) fn flushed(shard: &Key) -> Key {
    Key::new(format!("verve:flushed:{{{}}}", shard.name))
}

pub(crate) fn lease(window_start: &str) -> Key {
    Key::new(format!("verve:report:{window_start}"))
}

pub(crate) fn counted(window_start: &str) -> Key {
    Key::new(format!("verve:counted:{window_start}"))
}

pub(crate) fn published(window_start: &str) -> Key {
    Key::new(format!("verve:count:{window_start}"))
}

pub(crate) fn reported(window_start: &str) -> Key {
    Key::new(format!("verve:reported:{window_start}"))
}

pub(crate) fn instances() -> Key {
    Key::new("verve:instances".to_owned())
}

pub(crate) fn returned() -> Key {
    Key::new("verve:returned".to_owned())
}

pub(crate) fn restarted() -> Key {
    Key::new("verve:restarted:{verve:instances}".to_owned())
}

/// A member of `returned`: `process` has set its claims again on the master whose `run_id` is
/// `run_id`, or had none there.
pub(crate) fn returned_member(process: &str, run_id: &str) -> String {
    format!("{process}@{run_id}")
}

/// The process and the master's run id of a member of `returned`, if verve wrote it.
pub(crate) fn returned_of(member: &str) -> Option<(&str, &str)> {
    member.rsplit_once('@')
}

/// A restart as `restarted` keeps it: `<first slot>-<last slot>@<start, ms>`.
pub(crate) fn restart_member(restart: &Restart) -> String {
    let (first, last) = restart.slots;
    let started = millis_since_epoch(restart.started);
    format!("{first}-{last}@{started}")
}

/// A member of `restarted`, if verve wrote it.
pub(crate) fn restart_of(member: &str) -> Option<Restart> {
    let (slots, started) = member.split_once('@')?;
    let (first, last) = slots.split_once('-')?;
    Some(Restart {
        slots: (first.parse().ok()?, last.parse().ok()?),
        started: UNIX_EPOCH + Duration::from_millis(started.parse().ok()?),
    })
}

/// The cluster slot of a key: CRC16 (XMODEM) of the key, or of its hash tag (the part between
/// the first `{` and the next `}`, when not empty), modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.0.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag hashes the whole key.
        let whole = |k: &[u8]| crc16::State::<crc16::XMODEM>::calculate(k) % SLOTS;
        assert_eq!(slot_of(b"foo{}{bar}"), whole(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
    }

    #[test]
    fn a_windows_shards_spread_over_the_slots_of_three_masters() {
        let keys = id_shards("2026-11-24T06:21:00Z", 64);
        let mut per_third = [0; 3];
        for key in &keys {
            per_third[usize::from(key.slot) * 3 / usize::from(SLOTS)] += 1;
        }
        assert!(per_third.iter().all(|&n| n >= 10), "{per_third:?}");
    }

    #[test]
    fn a_shards_flush_marks_are_in_its_slot() {
        for shard in id_shards("2026-11-24T06:21:00Z", 64) {
            let marks = flushed(&shard);
            assert_eq!(marks.slot, shard.slot, "{}", marks.name);
            assert_eq!(marks.name, format!("verve:flushed:{{{}}}", shard.name));
        }
    }
}
