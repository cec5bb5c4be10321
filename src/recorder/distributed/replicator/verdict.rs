//! What becomes of a window whose grace has passed: its verdict, from where its report
//! stands in Redis (`due`), and the requests its conclusion sends.

use std::time::SystemTime;

use super::super::client::Request;
use super::due::{Ask, Due, Event, Facts, Redis};
use super::{Replicator, SETTLE_RETRY};
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
        let stage = match self.due {
            Some((w, stage)) if w == window => stage,
            _ => Due::START,
        };
        let event = match self.settled.take() {
            Some((w, Some(settlement))) if w == window => Event::Answered(settlement),
            Some((w, None)) if w == window => Event::Failed,
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
        };
        let (stage, verdict, ask) = stage.on(event, &facts);
        self.due = Some((window, stage));
        match ask {
            Some(Ask::Reassert) => self.link.send(Request::Reassert),
            Some(Ask::Settle { overdue, adopt }) => self.ask(Request::Settle {
                window,
                overdue,
                adopt,
            }),
            Some(Ask::Amend) => self.ask(Request::Amend { window }),
            None => {}
        }
        verdict
    }

    /// Sends an election or amendment, unless one is in flight or the last was sent less than
    /// `SETTLE_RETRY` ago.
    fn ask(&mut self, request: Request) {
        let now = self.link.time().instant();
        if !self.settling
            && self
                .last_settle
                .is_none_or(|t| now.saturating_duration_since(t) >= SETTLE_RETRY)
        {
            self.settling = true;
            self.last_settle = Some(now);
            self.link.send(request);
        }
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
        if self.due.is_some_and(|(w, _)| w == window) {
            self.due = None;
        }
    }
}
