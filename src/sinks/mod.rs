//! Where the recorder's output goes: every window report to each `ReportSink` (the stats log,
//! and Kafka when configured), and callbacks to the callback pool (`callbacks`). Callbacks are
//! not window reports (one per request, stamped with the count so far, sent over HTTP by a
//! pool of threads), so they have their own queue rather than this trait.

pub mod callbacks;
pub(crate) mod kafka;
pub(crate) mod stats_log;

use std::time::Duration;

use crate::report::WindowReport;

/// A destination of window reports, called from the recorder thread: it must not block.
pub trait ReportSink: Send {
    /// Takes one report (queues it, or writes it without waiting).
    fn write(&mut self, report: &WindowReport);

    /// Called every recorder round: serves what the sink has pending (delivery results).
    fn poll(&mut self) {}

    /// At shutdown: waits up to `timeout` for the reports taken to reach their destination.
    fn finish(&mut self, _timeout: Duration) {}
}
