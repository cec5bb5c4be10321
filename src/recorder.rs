//! The recorder thread: owns the instance-wide set of every open window, writes each window's
//! report once it has closed and every worker has handed over its ids, and stamps callback
//! jobs with the count so far.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::callback::{CallbackJob, CallbackQueue};
use crate::ingest::{Ingest, IngestReceiver, RecvStop};
use crate::report::{Mode, WindowReport};
use crate::stats_log;
use crate::window::{IdSet, WindowClock, WindowIndex};

/// The recorder looks for batches this often rather than blocking on the channel: a blocked
/// receiver makes crossbeam spin, yield and wake it on sends, which cost more CPU per request
/// than the counting itself. It adds at most this much delay to callbacks.
const POLL: Duration = Duration::from_millis(1);

pub struct Recorder {
    clock: WindowClock,
    grace: Duration,
    ingest: IngestReceiver,
    callbacks: CallbackQueue,
    /// Sets of the windows not yet reported.
    open: BTreeMap<WindowIndex, IdSet>,
    /// The oldest window not yet reported; every window from start-up on gets a report.
    next_report: WindowIndex,
    /// Items that arrived for an already reported window (a worker stalled past the grace).
    late_items: u64,
}

impl Recorder {
    pub fn new(
        clock: WindowClock,
        grace: Duration,
        ingest: IngestReceiver,
        callbacks: CallbackQueue,
    ) -> Self {
        Recorder {
            clock,
            grace,
            ingest,
            callbacks,
            open: BTreeMap::new(),
            next_report: clock.window_of(SystemTime::now()),
            late_items: 0,
        }
    }

    /// Runs until every worker has gone, then reports what is left: closed windows as
    /// complete, the current one as partial.
    pub fn run(mut self) {
        loop {
            let workers_gone = self.drain() == RecvStop::Disconnected;
            if workers_gone {
                break;
            }
            self.report_due(SystemTime::now());
            std::thread::sleep(POLL);
        }
        self.report_at_shutdown(SystemTime::now());
    }

    /// Applies every batch waiting in the channel; says why it stopped.
    fn drain(&mut self) -> RecvStop {
        loop {
            match self.ingest.try_recv() {
                Ok(batch) => self.apply(batch),
                Err(stop) => return stop,
            }
        }
    }

    /// The batch path: counts a worker's batch into its windows and queues its callbacks.
    pub fn apply(&mut self, mut batch: Vec<Ingest>) {
        for item in batch.drain(..) {
            match item {
                Ingest::Id { window, id } => {
                    self.insert(window, id);
                }
                Ingest::Callback(request) => {
                    if let Some(count) = self.insert(request.window, request.id) {
                        self.callbacks.offer(CallbackJob {
                            endpoint: request.endpoint,
                            count,
                            window_start: self.clock.start_rfc3339(request.window),
                            window_secs: self.clock.secs(),
                        });
                    }
                }
            }
        }
        self.ingest.recycle(batch);
    }

    /// Adds an id to its window and returns the window's count so far, or `None` for a window
    /// already reported.
    fn insert(&mut self, window: WindowIndex, id: i64) -> Option<u64> {
        if window < self.next_report {
            self.late_items += 1;
            log::error!(
                "id {id} of window {} arrived after its report ({} late in all)",
                self.clock.start_rfc3339(window),
                self.late_items
            );
            return None;
        }
        let set = self.open.entry(window).or_default();
        set.insert(id);
        Some(set.len() as u64)
    }

    /// Reports every window whose grace has passed, unless a worker still holds ids of it
    /// (then the next round tries again).
    fn report_due(&mut self, now: SystemTime) {
        while self.clock.end(self.next_report) + self.grace <= now
            && self.ingest.watermarks().all_past(self.next_report)
        {
            self.drain();
            self.report_next(false);
        }
    }

    fn report_at_shutdown(&mut self, now: SystemTime) {
        let current = self.clock.window_of(now);
        while self.next_report <= current {
            let partial = self.next_report == current;
            self.report_next(partial);
        }
    }

    fn report_next(&mut self, partial: bool) {
        let w = self.next_report;
        let count = self.open.remove(&w).map_or(0, |set| set.len() as u64);
        stats_log::write_report(&WindowReport {
            window_start: self.clock.start_rfc3339(w),
            window_secs: self.clock.secs(),
            unique_requests: count,
            mode: Mode::Standalone,
            partial,
        });
        self.next_report = w + 1;
    }
}
