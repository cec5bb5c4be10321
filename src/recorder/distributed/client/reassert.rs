//! Claims set again where Redis may have lost them, and those an earlier process was
//! making when it died.

use std::collections::BTreeSet;
use std::time::Duration;

use super::super::connect::Connect;
use super::super::keys;
use super::{NO_ARGS, Store, holder, keyed, millis};
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// The published count of a window whose ids a restarted Redis lost after its report.
const LOST: &str = "lost";

impl<C: Connect> Store<C> {
    /// Sets this instance's claims on windows it has reported again, and the records of whose
    /// marks their counts had, where Redis lost them (a restarted server): without a claim
    /// another instance would report the window a second time, without the record an
    /// instance whose ids the count lacks would take them for counted. A published count is
    /// then marked lost (for an amend horizon from now): the window's ids went with it, so an
    /// amendment's count would be short of the report's ids. This where Redis lost it within
    /// the claim's amend horizon only; past it, the count is gone by its expiry. Once the
    /// claims are set, this process says so (`verve:returned`, scored by when), so that the
    /// others, waiting for a claimant to come back after a restart, stop waiting for it.
    pub(super) async fn reassert(&self, windows: &[WindowIndex]) {
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
        // A server started within the second `started` begins: after the claim, unless
        // that whole second came before it.
        self.nodes_started(&held).await.is_some_and(|started| {
            started.iter().any(|&started| {
                claim.made_at < started + Duration::from_secs(1) && started < horizon_end
            })
        })
    }
}
