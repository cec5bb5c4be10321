//! The one path from workers to the recorder: batches of ids and callback requests, in arrival
//! order per worker, over a bounded channel, with a per-worker watermark that tells the
//! recorder when a window can no longer receive ids from that worker. Only ids new to the
//! worker in their window go: each batch is checked against the worker's first-seen set when
//! it is handed over, not request by request, so that the set's cache misses, started by a
//! prefetch when the request is accepted, overlap the rest of the event-loop round.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use ureq::http::Uri;

use crate::id_set::IdSetView;
use crate::metrics::Metrics;
use crate::notify::{LocalNotify, yield_now};
use crate::window::{FirstSeen, WindowIndex};
use crate::window_bound::{PerWindow, WindowIdCounts};

/// Items a worker buffers before it hands a batch over, whichever comes first of this and the
/// end of its event-loop round.
pub const MAX_BATCH: usize = 512;

/// Emptied batches kept for reuse, per worker.
const SPARE_BATCHES_PER_WORKER: usize = 128;

/// What a worker hands to the recorder.
#[derive(Debug)]
pub enum Ingest {
    /// An id answered `ok`; handed over only when new to the worker in this window.
    Id { window: WindowIndex, id: i64 },
    /// An `ok` request with an `endpoint`: the recorder counts its id, then stamps the count.
    Callback(Box<CallbackRequest>),
}

impl Ingest {
    /// The window the item counts in, and its id.
    pub fn window_and_id(&self) -> (WindowIndex, i64) {
        match self {
            Ingest::Id { window, id } => (*window, *id),
            Ingest::Callback(request) => (request.window, request.id),
        }
    }
}

#[derive(Debug)]
pub struct CallbackRequest {
    pub window: WindowIndex,
    pub id: i64,
    pub endpoint: Uri,
}

/// One cache line per worker so that a worker's watermark writes do not contend with another's.
#[repr(align(128))]
#[derive(Debug)]
struct Watermark(AtomicU64);

/// `NOTHING_PENDING` means the worker holds no unsent items.
const NOTHING_PENDING: u64 = u64::MAX;

/// Lowest window among the items each worker holds but has not yet sent.
#[derive(Debug)]
pub struct Watermarks(Box<[Watermark]>);

impl Watermarks {
    /// True when no worker still holds an unsent item of window `w` or earlier. Load this
    /// before draining the channel: a worker clears its mark only after its send, so the drain
    /// that follows sees everything of `w`.
    pub fn all_past(&self, w: WindowIndex) -> bool {
        self.0.iter().all(|m| m.0.load(Ordering::Acquire) > w)
    }
}

/// Creates the channel for `workers` workers holding at most `capacity` batches; each worker
/// counts the ids it hands over in `metrics`, and per window in `counts`.
pub fn channel(
    workers: usize,
    capacity: usize,
    metrics: &Arc<Metrics>,
    counts: &Arc<WindowIdCounts>,
) -> (Vec<IngestBuffer>, IngestReceiver) {
    let (tx, rx) = bounded(capacity);
    // Emptied batches go back to the workers so that the steady state allocates nothing. The
    // recorder drains every millisecond, and a busy worker hands over a batch per event-loop
    // round: keep about a drain's worth per worker (at most 12 KB each).
    let (spare_tx, spare_rx) = bounded(workers * SPARE_BATCHES_PER_WORKER);
    let watermarks = Arc::new(Watermarks(
        (0..workers)
            .map(|_| Watermark(AtomicU64::new(NOTHING_PENDING)))
            .collect(),
    ));
    let buffers = (0..workers)
        .map(|index| IngestBuffer {
            first_seen: FirstSeen::default(),
            items: Vec::with_capacity(MAX_BATCH),
            checked: 0,
            pending_since: NOTHING_PENDING,
            tx: Some(tx.clone()),
            spare: spare_rx.clone(),
            watermarks: Arc::clone(&watermarks),
            metrics: Arc::clone(metrics),
            counts: Arc::clone(counts),
            index,
        })
        .collect();
    let receiver = IngestReceiver {
        rx,
        spare: spare_tx,
        watermarks,
        counts: Arc::clone(counts),
    };
    (buffers, receiver)
}

/// A worker's side: the ids it has seen in its current window, the batch it is filling and its
/// end of the channel.
pub struct IngestBuffer {
    first_seen: FirstSeen,
    /// Accepted and not yet handed over, in arrival order. The first `checked` are new to the
    /// worker (or callbacks, which always go); the rest are not checked yet.
    items: Vec<Ingest>,
    checked: usize,
    /// Local copy of this worker's watermark, to skip redundant atomic stores.
    pending_since: WindowIndex,
    /// `None` once the worker has finished.
    tx: Option<Sender<Vec<Ingest>>>,
    spare: Receiver<Vec<Ingest>>,
    watermarks: Arc<Watermarks>,
    metrics: Arc<Metrics>,
    counts: Arc<WindowIdCounts>,
    index: usize,
}

impl IngestBuffer {
    /// `--max-window-ids`.
    pub fn window_id_limit(&self) -> u64 {
        self.counts.limit()
    }

    /// Whether `window` holds `--max-window-ids` ids, counting this worker's unsent items:
    /// then only an id this worker has counted already may still be answered `ok`. Near the
    /// bound the batch's repeats are dropped first, so that they take no room.
    pub fn window_full(&mut self, window: WindowIndex) -> bool {
        let counted = self.counts.get(window);
        let limit = self.counts.limit();
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
            self.watermarks.0[self.index]
                .0
                .store(window, Ordering::Release);
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
        self.counts.is_counted(window, id)
    }

    /// Starts loading where `id` goes in the first-seen set, for a request not yet accepted.
    pub fn prefetch(&self, window: WindowIndex, id: i64) {
        self.first_seen.prefetch(window, id);
    }

    /// Drops the unchecked ids this worker has already seen in their window. A callback's id
    /// is recorded too, but the callback always goes: it waits for the recorder's count.
    fn keep_new(&mut self) {
        let first_seen = &mut self.first_seen;
        let mut position = 0;
        let checked = self.checked;
        self.items.retain(|item| {
            position += 1;
            if position <= checked {
                return true;
            }
            let (window, id) = item.window_and_id();
            first_seen.insert(window, id) || matches!(item, Ingest::Callback(_))
        });
        self.metrics
            .ids_forwarded(self.index, (self.items.len() - checked) as u64);
        self.checked = self.items.len();
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Flushes and lets go of the channel, so that the recorder sees this worker end even if
    /// the buffer itself outlives the worker. False while the channel is full.
    pub fn finish(&mut self) -> bool {
        let flushed = self.flush();
        if flushed {
            self.tx = None;
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
        let Some(tx) = &self.tx else {
            return false;
        };
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(MAX_BATCH));
        let batch = std::mem::replace(&mut self.items, next);
        // Counted before the send, so that the recorder never takes back what was not added.
        per_window(&batch, |window, items| self.counts.add(window, items));
        match tx.try_send(batch) {
            Ok(()) => {
                self.checked = 0;
                self.mark_nothing_pending();
                true
            }
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                per_window(&batch, |window, items| self.counts.remove(window, items));
                self.items = batch;
                false
            }
        }
    }

    fn mark_nothing_pending(&mut self) {
        if self.pending_since != NOTHING_PENDING {
            self.pending_since = NOTHING_PENDING;
            self.watermarks.0[self.index]
                .0
                .store(NOTHING_PENDING, Ordering::Release);
        }
    }
}

/// Calls `f` with each window of a batch and its number of items.
fn per_window(batch: &[Ingest], mut f: impl FnMut(WindowIndex, u64)) {
    let mut sums = PerWindow::default();
    for item in batch {
        if let Some((window, items)) = sums.count(item.window_and_id().0) {
            f(window, items);
        }
    }
    if let Some((window, items)) = sums.finish() {
        f(window, items);
    }
}

/// A worker's flusher task, for any runtime: once per event-loop round in which ids arrived
/// (`notify`), hands the batch over with `flush`, retrying every millisecond while the channel
/// is full. `sleep` is the runtime's timer.
pub async fn flush_when_notified<Sleep: Future<Output = ()>>(
    notify: &LocalNotify,
    mut flush: impl FnMut() -> bool,
    sleep: impl Fn(Duration) -> Sleep,
) {
    loop {
        notify.notified().await;
        // Let the other connections woken in this round add their ids to the same batch.
        yield_now().await;
        while !flush() {
            sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A worker's last steps at shutdown, for any runtime: waits (until `timeout`) for its open
/// connections (`open`) to finish, then hands every id answered `ok` to the recorder and lets
/// go of the channel (`finish`), retrying every millisecond while the channel is full.
pub async fn finish_after_drain<Sleep: Future<Output = ()>>(
    worker: usize,
    open: impl Fn() -> usize,
    mut finish: impl FnMut() -> bool,
    sleep: impl Fn(Duration) -> Sleep,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    while open() > 0 && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    if open() > 0 {
        log::warn!(
            "worker {worker}: closing {} connections still busy after the shutdown timeout",
            open()
        );
    }
    while !finish() {
        sleep(Duration::from_millis(1)).await;
    }
}

/// The recorder's side.
#[derive(Debug)]
pub struct IngestReceiver {
    rx: Receiver<Vec<Ingest>>,
    spare: Sender<Vec<Ingest>>,
    watermarks: Arc<Watermarks>,
    counts: Arc<WindowIdCounts>,
}

/// Why `try_recv` returned no batch.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvStop {
    Empty,
    /// Every worker has dropped its buffer and everything sent has been received.
    Disconnected,
}

impl IngestReceiver {
    pub fn try_recv(&self) -> Result<Vec<Ingest>, RecvStop> {
        self.rx.try_recv().map_err(|e| match e {
            TryRecvError::Empty => RecvStop::Empty,
            TryRecvError::Disconnected => RecvStop::Disconnected,
        })
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Gives an emptied batch back for reuse.
    pub fn recycle(&self, mut batch: Vec<Ingest>) {
        batch.clear();
        let _ = self.spare.try_send(batch);
    }

    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    /// The recorder's set of `window`, new or grown, for workers to look ids up in.
    pub fn publish_ids(&self, window: WindowIndex, ids: IdSetView) {
        self.counts.publish(window, ids);
    }

    /// The recorder is about to clear `window`'s set.
    pub fn withdraw_ids(&self, window: WindowIndex) {
        self.counts.withdraw(window);
    }

    /// `items` items of `window` received were counted already (or came too late to count):
    /// they no longer take room under `--max-window-ids`.
    pub fn not_counted(&self, window: WindowIndex, items: u64) {
        self.counts.remove(window, items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (mut buffers, receiver) = channel(1, 8, &metrics, &counts(u64::MAX));
        let buffer = &mut buffers[0];
        for (window, id) in [(3, 1), (3, 2), (3, 1), (3, 2), (4, 1)] {
            buffer.push(Ingest::Id { window, id });
        }
        let callback = CallbackRequest {
            window: 4,
            id: 1,
            endpoint: endpoint(),
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
        let (mut buffers, receiver) = channel(1, 8, &metrics(1), &counts(u64::MAX));
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
    fn a_full_channel_refuses_new_items_and_keeps_the_queued_ones() {
        let (mut buffers, receiver) = channel(1, 1, &metrics(1), &counts(u64::MAX));
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
        let (mut buffers, receiver) = channel(2, 8, &metrics(2), &counts(u64::MAX));
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
        let (mut buffers, receiver) = channel(2, 8, &metrics(2), &counts);
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
