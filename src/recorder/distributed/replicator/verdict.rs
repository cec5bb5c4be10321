//! What becomes of a window whose grace has passed: its verdict, from where its report
//! stands in Redis (`due`), and the requests its conclusion sends.

use std::time::{Instant, SystemTime};

use super::super::client::Request;
use super::due::{Ask, Due, Event, Facts, Redis};
use super::{Concluding, Replicator, SETTLE_RETRY};
use crate::report::Mode;
use crate::window::WindowIndex;

/// What to do with a window whose grace has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Wait,
    Report(u64, Mode),
    /// The window was reported without ids of this instance: its count with them, as an
    /// amended report.
    Amended(u64),
    /// This instance's own count, as `mode=degraded`, and why.
    Degraded(u64, &'static str),
    /// Another instance reports it.
    Skip,
    /// The window was reported without this instance's ids (this many), and can no longer
    /// be amended: they are late.
    Late(u64),
}

impl Replicator {
    /// Where the report of a window whose grace has passed stands (`Due`, driven by this
    /// round and the answer that has come); `local` is this instance's count,
    /// `overdue` says that `--report-max-delay-secs` has passed once and twice, `due` is when
    /// its grace passed. `adopt`: a window from before this process started that it holds no
    /// id of.
    pub(crate) fn settle(
        &mut self,
        window: WindowIndex,
        local: u64,
        overdue: [bool; 2],
        due: SystemTime,
        adopt: bool,
    ) -> Verdict {
        if self.asking == Some(window) {
            return Verdict::Wait;
        }
        let concluding = self.due.get(&window).copied().unwrap_or(Concluding {
            stage: Due::START,
            asked: None,
        });
        let event = match self.settled {
            Some((w, settlement)) if w == window => {
                self.settled = None;
                settlement.map_or(Event::Failed, Event::Answered)
            }
            _ => Event::Tick,
        };
        let facts = Facts {
            local,
            overdue,
            adopt,
            redis: if !self.in_step() {
                Redis::OutOfStep
            } else if self.flushed.contains(&window) {
                Redis::Flushed
            } else {
                Redis::Unflushed
            },
            lost_since_due: self.link.health().lost_data_since(due),
            unsure_claim: self.unsure_claims.get(&window).copied(),
        };
        let (stage, verdict, ask) = concluding.stage.on(event, &facts);
        let request = match ask {
            Some(Ask::Reassert) => {
                self.link.send(Request::Reassert);
                None
            }
            Some(Ask::Settle { overdue, adopt }) => Some(Request::Settle {
                window,
                overdue,
                adopt,
            }),
            Some(Ask::Amend) => Some(Request::Amend { window }),
            None => None,
        };
        let asked = match request {
            Some(request) if self.may_ask(concluding.asked) => {
                self.settling = true;
                self.asking = Some(window);
                self.link.send(request);
                Some(self.link.time().instant())
            }
            _ => concluding.asked,
        };
        self.due.insert(window, Concluding { stage, asked });
        verdict
    }

    /// Whether a window that last asked at `asked` may ask again: unless an election or
    /// amendment is in flight, or it asked less than `SETTLE_RETRY` ago. The windows ask in
    /// turn, the earliest first, each at most once per `SETTLE_RETRY`.
    fn may_ask(&self, asked: Option<Instant>) -> bool {
        let now = self.link.time().instant();
        !self.settling && asked.is_none_or(|t| now.saturating_duration_since(t) >= SETTLE_RETRY)
    }

    /// The window is reported (here or elsewhere): its bookkeeping goes. `local`: this
    /// instance's count of it; `due`: when its grace passed.
    pub(crate) fn forget(&mut self, window: WindowIndex, local: u64, due: SystemTime) {
        if local == 0 {
            self.concluded_empty.push((window, due));
        }
        if let Some(at) = self.pending.iter().position(|(w, _)| *w == window) {
            self.pending_ids -= self.pending.remove(at).1.len();
        }
        self.global.remove(&window);
        self.flushed.remove(&window);
        self.due.remove(&window);
    }
}
