//! Claims set again where Redis may have lost them, and those an earlier process was making
//! when it died.
//!
//! This instance's claims on windows it has reported are set again, with the records of whose
//! marks their counts had, where Redis lost them (a restarted server): without a claim
//! another instance would report the window a second time, without the record an instance
//! whose ids the count lacks would take them for counted. A published count is then marked
//! lost (for an amend horizon from now): the window's ids went with it, so an amendment's
//! count would be short of the report's ids. This where Redis lost it within the claim's amend
//! horizon only; past it, the count is gone by its expiry. Elsewhere within that horizon the
//! count the report was written with is set where it is missing. Once the claims are set, this
//! process says so (`verve:returned`, scored by when), naming each master by the run id it
//! had as the claims were set, so that the others, waiting for a claimant to come back after
//! a restart, stop waiting for it where the claim's master has not restarted again since.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use redis::Value;

use super::super::keys::{self, Key};
use super::super::nodes::Routed;
use super::commands::{self, NO_ARGS, keyed};
use super::memory::Memory;
use super::replies::{self, holder};
use super::{Context, Effect, Next, Round, millis};
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// The published count of a window whose ids a restarted Redis lost after its report.
const LOST: &str = "lost";

/// Where setting the claims again stands.
#[derive(Debug)]
pub(crate) enum Reassert {
    /// Whose the claims are that an earlier process was making when it died, or this one
    /// when Redis failed.
    Resolving { pending: Vec<Claim> },
    /// When the servers holding the ids and counts of recent claims started.
    Started {
        windows: BTreeSet<WindowIndex>,
        asked: Vec<(WindowIndex, usize)>,
        held: Vec<Key>,
    },
    /// The claims set again, then the run ids of the last `masters` answers' masters read.
    Set { masters: usize },
    /// The word that they are set.
    Said,
}

impl Reassert {
    pub(crate) fn start(memory: &Memory, cx: &Context) -> Next<Self> {
        // Those an earlier process was making when it died, and this process's own whose
        // outcome a failure hid: whether they were made.
        let pending: Vec<Claim> = memory
            .claiming
            .values()
            .chain(memory.counted.values().filter(|c| !c.confirmed))
            .cloned()
            .collect();
        if pending.is_empty() {
            return set_again(memory, cx);
        }
        let cmds = pending
            .iter()
            .map(|c| {
                keyed(
                    &keys::reported(&cx.clock.start_rfc3339(c.window)),
                    "GET",
                    NO_ARGS,
                )
            })
            .collect();
        Next::run(Reassert::Resolving { pending }, cmds)
    }
}

impl Round for Reassert {
    type Outcome = ();

    fn step(self, replies: Option<Vec<Value>>, memory: &mut Memory, cx: &Context) -> Next<Self> {
        match self {
            Reassert::Resolving { pending } => {
                let effects = replies
                    .map(|values| resolve_claiming(pending, &values, memory))
                    .unwrap_or_default();
                set_again(memory, cx).after(effects)
            }
            Reassert::Started {
                windows,
                asked,
                held,
            } => {
                let started = replies.and_then(|values| {
                    let (infos, restarted) = values.split_at(held.len());
                    cx.data_started(infos, restarted.first()?, &held)
                });
                let mut lost = BTreeSet::new();
                if let Some(started) = started {
                    let mut at = started.into_iter();
                    for (window, servers) in asked {
                        let servers: Vec<SystemTime> = at.by_ref().take(servers).collect();
                        // Unless a round since forgot the claim, at the keys' expiry.
                        if let Some(claim) = memory.counted.get(&window)
                            && servers.iter().any(|&s| lost_while_amendable(claim, s, cx))
                        {
                            lost.insert(window);
                        }
                    }
                }
                claims(&windows, &lost, memory, cx)
            }
            Reassert::Set { masters } => match replies {
                Some(values) => say_returned(&values[values.len() - masters..], cx),
                None => Next::done(()),
            },
            Reassert::Said => Next::done(()),
        }
    }
}

/// Whether the claims an earlier process was making when it died, or this process was when
/// Redis failed, were made: held in its name, they are this instance's (set again from now
/// on, like the others); held by another, forgotten. Where Redis holds none (lost, or never
/// made), the count stays the floor of this process's, should it report the window (the
/// simulator's seed 1195: a claimant killed while its claim waited for a replica, the others
/// having left the window to it, then Redis lost the claim and the others' ids).
fn resolve_claiming(pending: Vec<Claim>, values: &[Value], memory: &mut Memory) -> Vec<Effect> {
    let mut effects = Vec::new();
    for (claim, value) in pending.into_iter().zip(values) {
        let Some(Some(holder)) = holder(value) else {
            continue;
        };
        memory.claiming.remove(&claim.window);
        if holder == claim.holder {
            let made = Claim {
                confirmed: true,
                ..claim
            };
            effects.push(Effect::KeepClaim(made.clone()));
            memory.counted.insert(made.window, made);
        } else {
            effects.push(Effect::ForgetClaim(claim.window));
            memory.counted.remove(&claim.window);
        }
    }
    effects
}

/// The windows whose claims go again: every claim made here or by an earlier process, within
/// the keys' expiry, reported or not yet: a claim the others saw, and forgot their ids for,
/// that Redis lost while its report was not written would let another report the window
/// without them (the simulator's seed 307: a claimant cut off as it waited for a replica).
/// Where a claim's amend horizon may not be over, first when the servers of its ids and
/// count started.
fn set_again(memory: &Memory, cx: &Context) -> Next<Reassert> {
    let windows: BTreeSet<WindowIndex> = memory
        .counted
        .values()
        .filter(|c| c.confirmed)
        .map(|c| c.window)
        .collect();
    let mut held: Vec<Key> = Vec::new();
    let mut asked = Vec::new();
    for &window in &windows {
        let Some(claim) = memory.counted.get(&window) else {
            continue;
        };
        if amend_horizon_end(claim, cx) + cx.settings.claims_return_wait <= cx.time.now() {
            continue;
        }
        let start = cx.clock.start_rfc3339(window);
        let before = held.len();
        held.extend(keys::id_shards(&start, cx.settings.shards));
        held.push(keys::published(&start));
        asked.push((window, held.len() - before));
    }
    if asked.is_empty() {
        return claims(&windows, &BTreeSet::new(), memory, cx);
    }
    let mut started = commands::info(&held);
    started.push(commands::restarts(0));
    Next::run(
        Reassert::Started {
            windows,
            asked,
            held,
        },
        started,
    )
}

/// The claims, their records and, where Redis may have lost the window's ids or count while
/// its report could be amended (`lost`), the count marked lost; then the word that they are
/// set (the claims first: a reader of the word finds them).
fn claims(
    windows: &BTreeSet<WindowIndex>,
    lost: &BTreeSet<WindowIndex>,
    memory: &Memory,
    cx: &Context,
) -> Next<Reassert> {
    let ttl = cx.key_ttl_secs();
    let mut cmds: Vec<Routed> = Vec::new();
    for &window in windows {
        let start = cx.clock.start_rfc3339(window);
        let counted = memory.counted.get(&window);
        // In the claimant's name: an earlier process of this instance, when it made the
        // claim.
        let holder = counted.map_or(cx.me(), |c| c.holder.as_str());
        cmds.push(keyed(
            &keys::reported(&start),
            "SET",
            (holder, "NX", "EX", ttl),
        ));
        let Some(claim) = counted else {
            continue;
        };
        cmds.push(keyed(
            &keys::counted(&start),
            "SET",
            (&claim.marks, "NX", "EX", ttl),
        ));
        let published = keys::published(&start);
        if lost.contains(&window) {
            // Over the count, where it survived: an amendment counting what is left would
            // publish too few (the simulator's seed 197 did).
            cmds.push(keyed(&published, "SET", (LOST, "XX", "KEEPTTL")));
            cmds.push(keyed(
                &published,
                "SET",
                (LOST, "NX", "PX", millis(cx.settings.amend_horizon).max(1)),
            ));
        } else if let Ok(left) = amend_horizon_end(claim, cx).duration_since(cx.time.now())
            && !left.is_zero()
        {
            // The count the report was written with, where Redis lost it or never took it
            // (the round that publishes it is best effort): without it, an amendment takes
            // the ids it brings for too late (the simulator's seed 1319, a master hung as
            // the report was retired). Not over a count an amendment has grown.
            cmds.push(keyed(
                &published,
                "SET",
                (claim.count, "NX", "PX", millis(left).max(1)),
            ));
        }
    }
    // Each master's run id, read after the claims on the same connection: the claims on it
    // were set on the server of that run id (a restart in between breaks the connection).
    let masters = commands::info_of_every_master(cx);
    let set = Reassert::Set {
        masters: masters.len(),
    };
    cmds.extend(masters);
    if cmds.is_empty() {
        return Next::done(());
    }
    Next::run(set, cmds)
}

/// Says that this process has set its claims again on the masters of `infos` (their `INFO
/// server`) as they are now (`verve:returned`, scored by when): a master restarted since has
/// another run id, and an election on it waits for this process to set them again (defect
/// 33, two restarts within the second `INFO server` dates a start to).
fn say_returned(infos: &[Value], cx: &Context) -> Next<Reassert> {
    let returned = keys::returned();
    let now = cx.now_ms();
    let said: Vec<(u64, String)> = infos
        .iter()
        .filter_map(replies::run_id)
        .map(|run_id| (now, keys::returned_member(cx.me(), &run_id)))
        .collect();
    if said.is_empty() {
        return Next::done(());
    }
    let horizon = now.saturating_sub(millis(cx.settings.key_ttl));
    let say = vec![
        keyed(&returned, "ZADD", said),
        keyed(&returned, "ZREMRANGEBYSCORE", ("-inf", horizon)),
    ];
    Next::run(Reassert::Said, say)
}

fn amend_horizon_end(claim: &Claim, cx: &Context) -> SystemTime {
    claim.made_at + cx.settings.amend_horizon
}

/// Whether Redis may have lost ids of a claimed window, or its published count, while its
/// report could be amended: a server holding one of them started (`started`, its whole
/// second) between the claim and the amend horizon's end. An amendment would then count
/// what is left and publish too few.
fn lost_while_amendable(claim: &Claim, started: SystemTime, cx: &Context) -> bool {
    // A server started within the second `started` begins: after the claim, unless that
    // whole second came before it.
    claim.made_at < started + Duration::from_secs(1) && started < amend_horizon_end(claim, cx)
}
