//! What a simulated run must show, window by window: one report of the window (and amendments
//! at most), its final count equal to the number of distinct ids acknowledged in it, and no
//! count of an instance's own (`degraded`), since no fault lasts `--report-max-delay-secs`.
//! One exception, tied to the fault that explains it: when a Redis server lost data (a
//! restart, a failover) after the window ended, within twice the delay, an instance whose ids
//! the report may lack cannot amend it and writes its own count (`degraded`) instead.

use std::time::SystemTime;

use crate::report::Mode;
use crate::window::WindowIndex;

use super::world::{REPORT_MAX_DELAY, Run, WINDOW};

/// What the checker found in a run.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    /// Simulated milliseconds the run took.
    pub(super) steps: u64,
    pub(super) windows: u64,
    /// Windows with an instance's own count beside the report, each explained by a loss.
    pub(super) admitted: Vec<String>,
    pub(super) wrong: Vec<String>,
}

/// The data loss that explains a degraded report of `window`, if any.
fn loss_after(run: &Run, window: WindowIndex) -> Option<SystemTime> {
    let end = WINDOW.end(window);
    run.faults
        .iter()
        .filter(|f| f.lost_data && f.at >= end && f.at <= end + 2 * REPORT_MAX_DELAY)
        .map(|f| f.at)
        .next()
}

pub(super) fn check(run: &Run) -> Verdict {
    let mut verdict = Verdict {
        steps: run.steps,
        ..Verdict::default()
    };
    for window in run.windows.clone() {
        let start = WINDOW.start_rfc3339(window);
        let acked = run.acked.get(&window).map_or(0, |ids| ids.len() as u64);
        let reports: Vec<_> = run
            .reports
            .iter()
            .filter(|(_, r)| r.window_start == start)
            .collect();
        verdict.windows += 1;
        let first = reports
            .iter()
            .filter(|(_, r)| r.mode == Mode::Distributed && !r.amended)
            .count();
        let degraded = reports.iter().any(|(_, r)| r.mode == Mode::Degraded);
        let count = reports
            .iter()
            .filter(|(_, r)| r.mode == Mode::Distributed)
            .map(|(_, r)| r.unique_requests)
            .max();
        let described = reports
            .iter()
            .map(|(i, r)| format!("instance {i}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        let said = format!("window {start} ({acked} distinct ids acknowledged): {described}");
        if acked == 0 && reports.is_empty() {
            continue;
        }
        if first > 1 {
            verdict
                .wrong
                .push(format!("reported {first} times: {said}"));
        } else if degraded {
            match loss_after(run, window) {
                Some(at) => verdict.admitted.push(format!(
                    "redis lost data at {}: {said}",
                    humantime::format_rfc3339_millis(at)
                )),
                None => verdict.wrong.push(format!(
                    "an instance's own count, and no fault explains it: {said}"
                )),
            }
        } else if count != Some(acked) {
            verdict.wrong.push(format!("final count {count:?}: {said}"));
        }
    }
    verdict
}
