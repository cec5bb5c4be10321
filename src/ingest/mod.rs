//! The one path from workers to the recorder: batches of ids and callback requests, in arrival
//! order per worker, over a bounded channel, with a per-worker watermark that tells the
//! recorder when a window can no longer receive ids from that worker, and the per-window
//! count of ids handed over that `--max-window-ids` bounds (`window_bound`).

pub mod window_bound;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use ureq::http::Uri;

use crate::id_set::IdSetView;
use crate::trace::TraceContext;
use crate::window::WindowIndex;
use window_bound::{PerWindow, WindowIdCounts};

/// Items a worker buffers before it hands a batch over, whichever comes first of this and the
/// end of its event-loop round.
pub const MAX_BATCH: usize = 512;

/// Emptied batches kept for reuse, per worker.
const SPARE_BATCHES_PER_WORKER: usize = 128;

/// What a worker hands to the recorder.
#[derive(Debug)]
pub enum Ingest {
    /// An id answered `ok`; handed over only when new to the worker in this window.
    Id {
        /// The window the id counts in.
        window: WindowIndex,
        /// The id.
        id: i64,
    },
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

/// An accept request that named a callback endpoint.
#[derive(Debug)]
pub struct CallbackRequest {
    /// The window its id counts in.
    pub window: WindowIndex,
    /// The id.
    pub id: i64,
    /// Where the count goes.
    pub endpoint: Uri,
    /// The request's trace context, which the callback continues.
    pub trace: Option<TraceContext>,
}

/// One cache line per worker so that a worker's watermark writes do not contend with another's.
#[repr(align(128))]
#[derive(Debug)]
struct Watermark(AtomicU64);

/// The watermark of a worker that holds no unsent items.
pub const NOTHING_PENDING: WindowIndex = WindowIndex::MAX;

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

/// Creates the channel for `workers` workers holding at most `capacity` batches; the ids
/// handed over are counted per window in `counts`.
pub fn channel(
    workers: usize,
    capacity: usize,
    counts: &Arc<WindowIdCounts>,
) -> (Vec<IngestSender>, IngestReceiver) {
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
    let senders = (0..workers)
        .map(|index| IngestSender {
            tx: Some(tx.clone()),
            spare: spare_rx.clone(),
            watermarks: Arc::clone(&watermarks),
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
    (senders, receiver)
}

/// A worker's end of the channel, its watermark and its view of the window counts.
#[derive(Debug)]
pub struct IngestSender {
    /// `None` once the worker has finished.
    tx: Option<Sender<Vec<Ingest>>>,
    spare: Receiver<Vec<Ingest>>,
    watermarks: Arc<Watermarks>,
    counts: Arc<WindowIdCounts>,
    index: usize,
}

impl IngestSender {
    /// The worker this end belongs to.
    pub fn worker(&self) -> usize {
        self.index
    }

    /// `--max-window-ids`.
    pub fn window_id_limit(&self) -> u64 {
        self.counts.limit()
    }

    /// The items of `window` handed over and not taken back by the recorder.
    pub fn handed_over(&self, window: WindowIndex) -> u64 {
        self.counts.get(window)
    }

    /// Whether the recorder has counted `id` in `window` (a lookup under a lock: for the
    /// requests past `--max-window-ids` only).
    pub fn is_counted(&self, window: WindowIndex, id: i64) -> bool {
        self.counts.is_counted(window, id)
    }

    /// The worker holds unsent items of `window` (and of none before it).
    pub fn mark_pending(&self, window: WindowIndex) {
        self.watermarks.0[self.index]
            .0
            .store(window, Ordering::Release);
    }

    /// The worker holds no unsent items.
    pub fn mark_nothing_pending(&self) {
        self.mark_pending(NOTHING_PENDING);
    }

    /// An emptied batch to fill, reused when the recorder gave one back.
    pub fn spare_batch(&self) -> Vec<Ingest> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(MAX_BATCH))
    }

    /// Hands a batch to the recorder; gives it back when the channel is full, the recorder is
    /// gone or this end is closed.
    pub fn send(&self, batch: Vec<Ingest>) -> Result<(), Vec<Ingest>> {
        let Some(tx) = &self.tx else {
            return Err(batch);
        };
        // Counted before the send, so that the recorder never takes back what was not added.
        per_window(&batch, |window, items| self.counts.add(window, items));
        tx.try_send(batch).map_err(|e| {
            let (TrySendError::Full(batch) | TrySendError::Disconnected(batch)) = e;
            per_window(&batch, |window, items| self.counts.remove(window, items));
            batch
        })
    }

    /// Lets go of the channel: once every worker has, the recorder sees them gone.
    pub fn close(&mut self) {
        self.tx = None;
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
    /// No batch is waiting.
    Empty,
    /// Every worker has dropped its buffer and everything sent has been received.
    Disconnected,
}

impl IngestReceiver {
    /// The next waiting batch.
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

    /// No batch is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Gives an emptied batch back for reuse.
    pub fn recycle(&self, mut batch: Vec<Ingest>) {
        batch.clear();
        let _ = self.spare.try_send(batch);
    }

    /// The workers' watermarks.
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

    /// The recorder holds `ids` distinct ids of `window` read back from the write-ahead log:
    /// they take room under `--max-window-ids` as ids handed over do.
    pub fn count_recovered(&self, window: WindowIndex, ids: u64) {
        self.counts.add(window, ids);
    }

    /// `items` items of `window` received were counted already (or came too late to count):
    /// they no longer take room under `--max-window-ids`.
    pub fn not_counted(&self, window: WindowIndex, items: u64) {
        self.counts.remove(window, items);
    }
}
