//! The protocol as data: each round the Redis thread runs for the recorder (an election of a
//! window's report, an amendment, the shutdown's check, claims set again) is a state machine
//! without I/O. Its transition function takes the state, the event (the request that starts
//! the round, then the replies to the commands it asked for, or their failure) and what this
//! process remembers between rounds, and gives the next state with the commands to issue: Redis
//! commands, and the claims to keep in or delete from the log's directory. The Redis thread
//! (`client`) only issues the commands and hands back the replies; it decides nothing. The
//! rounds are `settle` (the election, and the claim in `claim`), `amend` (amended reports and
//! the check at shutdown) and `reassert` (claims set again where Redis may have lost them).

mod amend;
mod claim;
mod commands;
mod memory;
mod reassert;
mod replies;
mod settle;

#[cfg(test)]
pub(crate) use amend::PUBLISH_LARGER;
pub(crate) use amend::{Amend, Check};
pub(crate) use commands::{NO_ARGS, keyed, mark_flushed};
pub(crate) use memory::Memory;
pub(crate) use reassert::Reassert;
pub(crate) use settle::{MAX_BACKOFF, Settle};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use super::RedisSettings;
use super::health::RedisHealth;
use super::keys::Key;
use super::nodes::Routed;
use crate::clock::Clock;
use crate::wal::claims::Claim;
use crate::window::{WindowClock, WindowIndex};

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
    /// Redis holds fewer of the window's ids than its report counted, or lost the record of
    /// whose flush marks another's report counted: it lost data since, and how many of this
    /// instance's ids the report had cannot be told.
    LostSinceReport,
}

/// Whether a window's report holds this instance's ids, as it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Reported with this instance's flush mark.
    Yes,
    /// Reported by another without this instance's flush mark.
    No,
    /// Another instance holds the lease: it may have read the flush marks already.
    Settling,
    /// Nobody has claimed the report, nor holds the lease, or an earlier process of this
    /// instance claimed it and died before writing it: the instance leaving reports the
    /// window itself.
    Unsettled,
}

/// What a round reads but does not change: the settings, the clocks, the health of Redis.
pub(crate) struct Context<'a> {
    pub(crate) settings: &'a RedisSettings,
    /// A slot of each master: commands about no key routed by these reach every master.
    pub(crate) master_slots: Vec<u16>,
    pub(crate) clock: WindowClock,
    pub(crate) time: &'a Clock,
    pub(crate) health: &'a RedisHealth,
}

impl Context<'_> {
    /// This process's name in Redis.
    fn me(&self) -> &str {
        &self.settings.process
    }

    /// Expiry of every per-window key, in whole seconds.
    pub(crate) fn key_ttl_secs(&self) -> u64 {
        self.settings.key_ttl.as_secs().max(1)
    }

    /// When the data set holding each of `keys` began, from the replies to
    /// `commands::info(keys)` and to `commands::restarts`: its server's start or, where a
    /// master that served the key's slot was found restarted since (by this process or
    /// another), that restart: a replica that synced what the master came back with and then
    /// took over keeps its own start (defect 32).
    fn data_started(
        &self,
        infos: &[Value],
        restarted: &Value,
        keys: &[Key],
    ) -> Option<Vec<SystemTime>> {
        let started = replies::started(infos, self.time.now())?;
        let mut restarts = replies::restarts(restarted)?;
        restarts.extend(self.health.restarts_since(UNIX_EPOCH));
        let began = |server: SystemTime, key: &Key| {
            restarts
                .iter()
                .filter(|r| r.covers(key.slot))
                .map(|r| r.started)
                .fold(server, SystemTime::max)
        };
        Some(
            started
                .into_iter()
                .zip(keys)
                .map(|(server, key)| began(server, key))
                .collect(),
        )
    }

    /// Milliseconds since the Unix epoch, as scores in Redis.
    pub(crate) fn now_ms(&self) -> u64 {
        millis_since_epoch(self.time.now())
    }
}

/// What is done beside Redis, before the round's next commands go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// The claim kept in the log's directory (made, or being made).
    KeepClaim(Claim),
    /// The window's claim deleted from the log's directory.
    ForgetClaim(WindowIndex),
    /// Kept in the log's directory: an amended count of the window is about to be published.
    KeepAmending(WindowIndex),
    /// This instance's flush mark is gone from Redis: the health epoch moves on, so that its
    /// ids are pushed again.
    MarksLost,
}

/// A round: its states and its transition function.
pub(crate) trait Round: Sized {
    /// How the round ended.
    type Outcome;

    /// The state after the replies to the commands last asked for, `None` when Redis failed
    /// on the way (some of the commands may have been applied).
    fn step(self, replies: Option<Vec<Value>>, memory: &mut Memory, cx: &Context) -> Next<Self>;
}

/// A transition's result: what to do beside Redis, then the next state with its commands, or
/// the round's end.
pub(crate) struct Next<R: Round> {
    pub(crate) effects: Vec<Effect>,
    pub(crate) then: Then<R>,
}

pub(crate) enum Then<R: Round> {
    /// Issue the commands (one pipeline per node), then step the state with their replies.
    Run(R, Vec<Routed>),
    Done(R::Outcome),
}

impl<R: Round> Next<R> {
    fn run(state: R, commands: Vec<Routed>) -> Next<R> {
        Next {
            effects: Vec::new(),
            then: Then::Run(state, commands),
        }
    }

    fn done(outcome: R::Outcome) -> Next<R> {
        Next {
            effects: Vec::new(),
            then: Then::Done(outcome),
        }
    }

    /// The same, with `effects` done first.
    fn after(mut self, mut effects: Vec<Effect>) -> Next<R> {
        effects.append(&mut self.effects);
        self.effects = effects;
        self
    }
}

/// The instance id of a process's name (`<instance>/<pid>-<started>`).
pub(crate) fn instance_of(process: &str) -> &str {
    process
        .rsplit_once('/')
        .map_or(process, |(instance, _)| instance)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A time as Redis scores keep it: milliseconds since the Unix epoch.
pub(crate) fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod tests;
