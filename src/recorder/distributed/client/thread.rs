//! The Redis thread's loop: each request a task, the heartbeat, the pushes of ids, and the
//! protocol's rounds driven: their commands issued, their replies handed back.

use std::cell::Cell;
use std::collections::HashSet;

use crossbeam_channel::Sender;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{FromRedisValue, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::super::connect::Connect;
use super::super::keys;
use super::super::nodes::Routed;
use super::super::protocol::{
    Amend, Check, Context, Effect, MAX_BACKOFF, NO_ARGS, Next, Reassert, Round, Settle, Settlement,
    Then, keyed, mark_flushed, millis, millis_since_epoch,
};
use super::link::{Reply, Request};
use super::{IDS_PER_COMMAND, MIN_BACKOFF, Store};
use crate::window::WindowIndex;

impl<C: Connect> Store<C> {
    pub(super) async fn serve(
        &self,
        mut requests: UnboundedReceiver<Request>,
        replies: Sender<Reply>,
    ) {
        self.tell_unsure_claims(&replies);
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
                ok: self
                    .run(mark_flushed(
                        &self.clock.start_rfc3339(window),
                        &self.context(),
                    ))
                    .await
                    .is_some(),
            },
            Request::Settle {
                window,
                overdue,
                adopt,
            } => {
                let start = Settle::start(
                    window,
                    overdue,
                    adopt,
                    &self.memory.borrow(),
                    &self.context(),
                );
                let settlement = self.drive(start).await;
                let why = match settlement {
                    Some(Settlement::NotYet(why)) => Some(why),
                    Some(Settlement::Claimed(_)) => Some("the claim is not on a replica yet"),
                    _ => None,
                };
                if let Some(why) = why
                    && overdue
                    && self.late_logged.borrow_mut().first(window)
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
                settlement: self.drive(Amend::start(window, &self.context())).await,
            },
            Request::Reassert => {
                let start = Reassert::start(&self.memory.borrow(), &self.context());
                self.drive(start).await;
                self.tell_unsure_claims(replies);
                return;
            }
            Request::CheckCounted { window } => Reply::Checked {
                window,
                check: self.drive(Check::start(window, &self.context())).await,
            },
            Request::Leave => {
                let leave = keyed(&keys::instances(), "ZREM", &self.settings.process);
                let _ = self.run(vec![leave]).await;
                Reply::Left
            }
        };
        self.tell_unsure_claims(replies);
        // The recorder has gone only at the end of a shutdown.
        let _ = replies.send(reply);
    }

    /// Tells the recorder the claims this process may hold whose outcome it does not know,
    /// when they have changed: cut off from Redis, it writes such a window with the count its
    /// claim was made with, which the others may have left the window to.
    fn tell_unsure_claims(&self, replies: &Sender<Reply>) {
        let unsure = self.memory.borrow().unsure_counts();
        if *self.unsure_told.borrow() != unsure {
            let _ = replies.send(Reply::UnsureClaims(unsure.clone()));
            *self.unsure_told.borrow_mut() = unsure;
        }
    }

    async fn run(&self, cmds: Vec<Routed>) -> Option<Vec<Value>> {
        self.nodes.run(&cmds).await.ok()
    }

    /// What the protocol's rounds read.
    fn context(&self) -> Context<'_> {
        Context {
            settings: &self.settings,
            master_slots: self.nodes.master_slots(),
            clock: self.clock,
            time: &self.time,
            health: &self.health,
        }
    }

    /// Runs a round of the protocol from its first transition: does what it asks beside
    /// Redis, issues its commands and steps it with their replies, until it ends.
    async fn drive<R: Round>(&self, first: Next<R>) -> R::Outcome {
        let mut next = first;
        loop {
            for effect in next.effects {
                self.apply(effect);
            }
            let (state, cmds) = match next.then {
                Then::Done(outcome) => return outcome,
                Then::Run(state, cmds) => (state, cmds),
            };
            let replies = self.run(cmds).await;
            next = state.step(replies, &mut self.memory.borrow_mut(), &self.context());
        }
    }

    fn apply(&self, effect: Effect) {
        match effect {
            Effect::KeepClaim(claim) => {
                if let Some(wal) = &self.kept {
                    wal.keep_claim(&claim);
                }
            }
            Effect::ForgetClaim(window) => {
                if let Some(wal) = &self.kept {
                    wal.forget_claim(window);
                }
            }
            Effect::KeepAmending(window) => {
                if let Some(wal) = &self.kept {
                    wal.keep_amending(window);
                }
            }
            Effect::MarksLost => self.health.marks_lost(),
        }
    }

    /// Announces the instance and reads which others are live; while Redis does not answer,
    /// probes every node first and says that Redis answers again once both succeed.
    async fn heartbeat(&self, running: &Cell<bool>) {
        if !self.health.is_up()
            && let Err(e) = self.nodes.probe().await
        {
            self.health.failed(&e);
            running.set(false);
            return;
        }
        let instances = keys::instances();
        let now = self.context().now_ms();
        let ttl = millis(self.settings.heartbeat_ttl);
        let horizon = now.saturating_sub(10 * ttl);
        let announce = keyed(&instances, "ZADD", (now, &self.settings.process));
        let forget = keyed(&instances, "ZREMRANGEBYSCORE", ("-inf", horizon));
        let live = keyed(
            &instances,
            "ZRANGEBYSCORE",
            (now.saturating_sub(ttl), "+inf"),
        );
        let mut cmds = vec![announce, forget, live];
        // The masters this process (or an earlier one of this instance) found restarted, for
        // the processes that did not see it (one started since, one cut off then): while a
        // window's keys may live.
        let key_ttl = self.settings.key_ttl;
        let restarts = self.health.restarts_since(self.time.now() - key_ttl);
        if !restarts.is_empty() {
            let restarted = keys::restarted();
            let scored: Vec<(u64, String)> = restarts
                .iter()
                .map(|r| (millis_since_epoch(r.started), keys::restart_member(r)))
                .collect();
            cmds.push(keyed(&restarted, "ZADD", scored));
            cmds.push(keyed(&restarted, "EXPIRE", key_ttl.as_secs().max(1)));
            // And beside the log, for this instance's next process.
            if let Some(wal) = &self.kept {
                wal.keep_restarts(&restarts);
            }
        }
        if let Some(values) = self.run(cmds).await {
            self.health.answered();
            if let Ok(live) = Vec::<String>::from_redis_value(&values[2]) {
                let sightings = self.memory.borrow_mut().saw_live(
                    &live,
                    self.time.now(),
                    self.settings.key_ttl,
                    self.settings.heartbeat_ttl,
                );
                if let Some(wal) = &self.kept {
                    wal.keep_sightings(&sightings);
                }
            }
        }
        running.set(false);
    }

    async fn push(
        &self,
        ids: Vec<(WindowIndex, Vec<i64>)>,
        count: Vec<WindowIndex>,
    ) -> Option<Vec<(WindowIndex, u64)>> {
        let shards = self.settings.shards;
        let ttl = self.context().key_ttl_secs();
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
}
