//! The stats log: one `key=value` line per window report, under the log target
//! `logs::STATS_TARGET`, which the logger writes to `--stats-log`.

use super::ReportSink;
use crate::logs::STATS_TARGET;
use crate::report::WindowReport;

/// Writes each report as a stats line.
#[derive(Debug, Default)]
pub(crate) struct StatsLog;

impl ReportSink for StatsLog {
    fn write(&mut self, report: &WindowReport) {
        log::info!(target: STATS_TARGET, "{report}");
    }
}
