//! A worker's side of the hand-over: the ids it has seen in its current window, the batch it
//! is filling and its end of the channel. Only ids new to the worker in their window go: each
//! batch is checked against the worker's first-seen set when it is handed over, not request by
//! request, so that the set's cache misses, started by a prefetch when the request is
//! accepted, overlap the rest of the event-loop round.

use std::sync::Arc;

use super::first_seen::FirstSeen;
use crate::ingest::{Ingest, IngestSender, MAX_BATCH, NOTHING_PENDING};
use crate::metrics::Metrics;
use crate::wal::worker_log::WorkerLog;
use crate::window::WindowIndex;

/// One buffer per end of the channel, counting in `metrics`.
pub fn ingest_buffers(senders: Vec<IngestSender>, metrics: &Arc<Metrics>) -> Vec<IngestBuffer> {
    senders
        .into_iter()
        .map(|sender| IngestBuffer::new(sender, Arc::clone(metrics)))
        .collect()
}

/// A worker's batch for the recorder.
pub struct IngestBuffer {
    first_seen: FirstSeen,
    /// Accepted and not yet handed over, in arrival order. The first `checked` are new to the
    /// worker (or callbacks, which always go); the rest are not checked yet.
    items: Vec<Ingest>,
    checked: usize,
    /// Local copy of this worker's watermark, to skip redundant atomic stores.
    pending_since: WindowIndex,
    sender: IngestSender,
    metrics: Arc<Metrics>,
    /// The worker's write-ahead log, unless `--durability off`: the ids new to the worker
    /// are logged when they are checked against the first-seen set.
    log: Option<WorkerLog>,
}

impl IngestBuffer {
    /// A buffer sending through `sender`, counting what it hands over in `metrics`.
    pub fn new(sender: IngestSender, metrics: Arc<Metrics>) -> IngestBuffer {
        IngestBuffer {
            first_seen: FirstSeen::default(),
            items: Vec::with_capacity(MAX_BATCH),
            checked: 0,
            pending_since: NOTHING_PENDING,
            sender,
            metrics,
            log: None,
        }
    }

    /// Logs the ids new to the worker in `log` before they are answered (`settle`).
    #[must_use]
    pub fn with_log(mut self, log: WorkerLog) -> IngestBuffer {
        self.log = Some(log);
        self
    }

    /// The worker's write-ahead log, if any.
    pub fn log(&mut self) -> Option<&mut WorkerLog> {
        self.log.as_mut()
    }

    /// Whether the log can take one more id of `window` (always, without a log). False means
    /// the id cannot be made durable: the caller answers `503`. An id the worker has logged
    /// already needs no room.
    pub fn log_room(&mut self, window: WindowIndex, id: i64) -> bool {
        let unchecked = self.items.len() - self.checked;
        match &mut self.log {
            None => true,
            // The cheap test first: the set lookup may miss the cache, and is needed only when
            // the log must grow and cannot.
            Some(log) => {
                log.has_room(window, unchecked + 1)
                    || self.first_seen.contains(window, id)
                    || log.reserve(window, unchecked + 1)
            }
        }
    }

    /// The log records the answers given so far must wait for to be on disk
    /// (`WorkerLog::records_to_await`); `None` when answers need not wait.
    pub fn records_to_await(&self) -> Option<u64> {
        self.log.as_ref().and_then(WorkerLog::records_to_await)
    }

    /// Whether the first `records` log records are on disk: `Some(false)` when their sync
    /// failed, `None` while it is to come.
    pub fn records_synced(&self, records: u64) -> Option<bool> {
        self.log.as_ref().and_then(|l| l.is_synced(records))
    }

    /// Checks what was accepted since the last call and logs the ids new to the worker: call
    /// it before the answers that said `ok` to them go out. Nothing to do without a log.
    pub fn settle(&mut self) {
        if self.log.is_some() {
            self.keep_new();
        }
    }

    /// `--max-window-ids`.
    pub fn window_id_limit(&self) -> u64 {
        self.sender.window_id_limit()
    }

    /// Whether `window` holds `--max-window-ids` ids, counting this worker's unsent items:
    /// then only an id this worker has counted already may still be answered `ok`. Near the
    /// bound the batch's repeats are dropped first, so that they take no room.
    pub fn window_full(&mut self, window: WindowIndex) -> bool {
        let counted = self.sender.handed_over(window);
        let limit = self.sender.window_id_limit();
        if counted + (self.items.len() as u64) < limit {
            return false;
        }
        self.keep_new();
        counted + (self.items.len() as u64) >= limit
    }

    /// Makes room for one item: true when the batch has room or could be handed over. False
    /// means the batch is full and so is the channel: the caller answers `503`.
    pub fn make_room(&mut self) -> bool {
        self.items.len() < MAX_BATCH || self.flush()
    }

    /// Appends an item; call `make_room` first.
    pub fn push(&mut self, item: Ingest) {
        let (window, id) = item.window_and_id();
        if window < self.pending_since {
            self.pending_since = window;
            self.sender.mark_pending(window);
        }
        // Checked at the hand-over: start loading the id's place in the set now.
        self.first_seen.prefetch(window, id);
        self.items.push(item);
    }

    /// Whether the worker has handed `id` over in `window` already (or is about to: it is in
    /// the checked part of the batch).
    pub fn has_seen(&self, window: WindowIndex, id: i64) -> bool {
        self.first_seen.contains(window, id)
    }

    /// Whether the recorder has counted `id` in `window` (a lookup under a lock: for the
    /// requests past `--max-window-ids` only).
    pub fn is_counted(&self, window: WindowIndex, id: i64) -> bool {
        self.sender.is_counted(window, id)
    }

    /// Starts loading where `id` goes in the first-seen set, for a request not yet accepted.
    pub fn prefetch(&self, window: WindowIndex, id: i64) {
        self.first_seen.prefetch(window, id);
    }

    /// Drops the unchecked ids this worker has already seen in their window, and logs the new
    /// ones. A callback's id is recorded too, but the callback always goes: it waits for the
    /// recorder's count.
    fn keep_new(&mut self) {
        let checked = self.checked;
        let mut kept = checked;
        for at in checked..self.items.len() {
            let (window, id) = self.items[at].window_and_id();
            let new = self.first_seen.insert(window, id);
            if new && let Some(log) = &mut self.log {
                log.stage(window, id);
            }
            if new || matches!(self.items[at], Ingest::Callback(_)) {
                self.items.swap(kept, at);
                kept += 1;
            }
        }
        self.items.truncate(kept);
        if let Some(log) = &mut self.log {
            log.commit();
        }
        if self.items.is_empty() {
            // Only repeats: no flush will come to release the window.
            self.mark_nothing_pending();
        }
        self.metrics
            .ids_forwarded(self.sender.worker(), (kept - checked) as u64);
        self.checked = kept;
    }

    /// Nothing waits to be handed over.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Flushes and lets go of the channel, so that the recorder sees this worker end even if
    /// the buffer itself outlives the worker. False while the channel is full.
    pub fn finish(&mut self) -> bool {
        let flushed = self.flush();
        if flushed {
            self.sender.close();
        }
        flushed
    }

    /// Hands the batch to the recorder. False when the channel is full (or the recorder is
    /// gone); the items stay here and a later flush sends them.
    pub fn flush(&mut self) -> bool {
        self.keep_new();
        if self.items.is_empty() {
            self.mark_nothing_pending();
            return true;
        }
        let batch = std::mem::replace(&mut self.items, self.sender.spare_batch());
        match self.sender.send(batch) {
            Ok(()) => {
                self.checked = 0;
                self.mark_nothing_pending();
                true
            }
            Err(batch) => {
                self.items = batch;
                false
            }
        }
    }

    fn mark_nothing_pending(&mut self) {
        if self.pending_since != NOTHING_PENDING {
            self.pending_since = NOTHING_PENDING;
            self.sender.mark_nothing_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WalSettings;
    use crate::ingest::{CallbackRequest, IngestReceiver, channel, window_bound::WindowIdCounts};
    use crate::wal::WalDir;
    use std::time::Duration;
    use ureq::http::Uri;

    fn buffers(
        workers: usize,
        capacity: usize,
        metrics: &Arc<Metrics>,
        counts: &Arc<WindowIdCounts>,
    ) -> (Vec<IngestBuffer>, IngestReceiver) {
        let (senders, receiver) = channel(workers, capacity, counts);
        (ingest_buffers(senders, metrics), receiver)
    }

    fn metrics(workers: usize) -> Arc<Metrics> {
        Arc::new(Metrics::new(workers))
    }

    fn counts(limit: u64) -> Arc<WindowIdCounts> {
        Arc::new(WindowIdCounts::new(limit))
    }

    fn endpoint() -> Uri {
        Uri::from_static("http://example.com/hook")
    }

    #[test]
    fn only_ids_new_to_the_worker_in_their_window_are_handed_over() {
        let metrics = metrics(1);
        let (mut buffers, receiver) = buffers(1, 8, &metrics, &counts(u64::MAX));
        let buffer = &mut buffers[0];
        for (window, id) in [(3, 1), (3, 2), (3, 1), (3, 2), (4, 1)] {
            buffer.push(Ingest::Id { window, id });
        }
        let callback = CallbackRequest {
            window: 4,
            id: 1,
            endpoint: endpoint(),
            trace: None,
        };
        buffer.push(Ingest::Callback(Box::new(callback)));
        assert!(buffer.flush());
        buffer.push(Ingest::Id { window: 4, id: 1 });
        buffer.push(Ingest::Id { window: 4, id: 5 });
        assert!(buffer.flush());

        let batches: Vec<Vec<(WindowIndex, i64, bool)>> = (0..2)
            .map(|_| {
                let batch = receiver.try_recv().unwrap();
                batch
                    .iter()
                    .map(|item| {
                        let (window, id) = item.window_and_id();
                        (window, id, matches!(item, Ingest::Callback(_)))
                    })
                    .collect()
            })
            .collect();
        // The callback goes although its id was seen: it waits for the recorder's count.
        assert_eq!(
            batches,
            [
                vec![(3, 1, false), (3, 2, false), (4, 1, false), (4, 1, true)],
                vec![(4, 5, false)],
            ]
        );
        assert!(receiver.try_recv().is_err());
        assert!(metrics.render().contains("verve_ids_forwarded_total 5"));
    }

    #[test]
    fn a_batch_of_repeated_ids_sends_nothing_and_releases_its_window() {
        let (mut buffers, receiver) = buffers(1, 8, &metrics(1), &counts(u64::MAX));
        buffers[0].push(Ingest::Id { window: 3, id: 9 });
        assert!(buffers[0].flush());
        assert!(receiver.try_recv().is_ok());
        buffers[0].push(Ingest::Id { window: 3, id: 9 });
        assert!(!receiver.watermarks().all_past(3));
        assert!(buffers[0].flush());
        assert!(receiver.try_recv().is_err());
        assert!(receiver.watermarks().all_past(3));
    }

    #[test]
    fn a_settled_round_of_repeats_releases_its_window_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = metrics(1);
        let (mut buffers, receiver) = buffers(1, 8, &metrics, &counts(u64::MAX));
        let wal = Arc::new(WalDir::open(dir.path(), Arc::clone(&metrics)).unwrap());
        let settings = WalSettings {
            dir: dir.path().to_owned(),
            host: false,
            fsync_interval: Duration::from_secs(1),
        };
        let mut buffer = buffers
            .pop()
            .unwrap()
            .with_log(WorkerLog::new(wal, 0, &settings));
        for _ in 0..2 {
            assert!(buffer.log_room(3, 9));
            buffer.push(Ingest::Id { window: 3, id: 9 });
            buffer.settle();
            assert!(!buffer.is_empty() || receiver.watermarks().all_past(3));
            assert!(buffer.flush());
        }
        assert_eq!(receiver.try_recv().unwrap().len(), 1);
        assert!(receiver.try_recv().is_err());
        assert!(receiver.watermarks().all_past(3));
        assert_eq!(buffer.log().unwrap().appended(), 1);
    }

    #[test]
    fn a_full_channel_refuses_new_items_and_keeps_the_queued_ones() {
        let (mut buffers, receiver) = buffers(1, 1, &metrics(1), &counts(u64::MAX));
        let buffer = &mut buffers[0];
        let mut pushed = 0;
        while buffer.make_room() {
            buffer.push(Ingest::Id {
                window: 3,
                id: pushed,
            });
            pushed += 1;
        }
        // One batch in the channel, one full batch held by the worker.
        assert_eq!(pushed, 2 * MAX_BATCH as i64);
        assert!(!receiver.watermarks().all_past(3));
        let first = receiver.try_recv().unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        receiver.recycle(first);
        assert!(buffer.make_room());
        let second = receiver.try_recv().unwrap();
        let ids: Vec<i64> = second
            .iter()
            .map(|i| match i {
                Ingest::Id { id, .. } => *id,
                Ingest::Callback(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            ids,
            (MAX_BATCH as i64..2 * MAX_BATCH as i64).collect::<Vec<_>>()
        );
        assert!(receiver.watermarks().all_past(3));
    }

    #[test]
    fn watermark_holds_the_oldest_unsent_window() {
        let (mut buffers, receiver) = buffers(2, 8, &metrics(2), &counts(u64::MAX));
        buffers[1].push(Ingest::Id { window: 5, id: 1 });
        buffers[1].push(Ingest::Id { window: 6, id: 2 });
        assert!(receiver.watermarks().all_past(4));
        assert!(!receiver.watermarks().all_past(5));
        assert!(buffers[1].flush());
        assert!(receiver.watermarks().all_past(u64::MAX - 1));
    }

    #[test]
    fn a_window_is_full_at_the_bound_counting_unsent_items_but_not_repeats() {
        let counts = counts(4);
        let (mut buffers, receiver) = buffers(2, 8, &metrics(2), &counts);
        for id in [1, 2, 1, 1, 1] {
            buffers[0].push(Ingest::Id { window: 3, id });
        }
        // Five unsent items, two of them distinct: the repeats are dropped to make room.
        assert!(!buffers[0].window_full(3));
        buffers[0].push(Ingest::Id { window: 3, id: 3 });
        assert!(buffers[0].flush());
        assert_eq!(counts.get(3), 3);
        buffers[1].push(Ingest::Id { window: 3, id: 1 });
        assert!(buffers[1].window_full(3));
        assert!(!buffers[1].window_full(4));
        // The recorder found id 1 counted already: it gives the room back.
        assert!(buffers[1].flush());
        receiver.not_counted(3, 1);
        assert_eq!(counts.get(3), 3);
        assert!(!buffers[1].window_full(3));
    }
}
