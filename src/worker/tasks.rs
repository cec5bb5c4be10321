//! A worker's tasks besides its connections, for any runtime (monoio here, tokio in the
//! baseline): handing batches over once per event-loop round, and the last hand-over at
//! shutdown.

use std::future::Future;
use std::time::Duration;

use std::fs::File;
use std::io;
use std::time::Instant;

use super::notify::{LocalBroadcast, LocalNotify, yield_now};
use crate::metrics::Metrics;
use crate::wal::worker_log::{SyncJob, WorkerLog};

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

/// The ends of a worker's log that its sync task works with.
pub struct LogSync<'a> {
    /// Rung when an answer waits for its records' sync (`--durability host`).
    pub wanted: &'a LocalNotify,
    /// Rung after every sync.
    pub done: &'a LocalBroadcast,
    /// The background sync's interval (`--wal-fsync-ms`).
    pub interval: Duration,
    /// Where each sync's time is counted.
    pub metrics: &'a Metrics,
}

/// A worker's log sync task, for any runtime: when an answer waits for it, or each interval,
/// lets go of the segments of reported windows (an idle worker would hold their deleted files'
/// space) and syncs what the worker's log (reached through `with_log`) holds unsynced with
/// `sync_data`
/// (the runtime's fdatasync, off the worker's thread where it can be), tells the log and
/// wakes the answers waiting. Group commit: one sync covers every record appended before it
/// began.
pub async fn sync_log<Sleep, Synced>(
    ends: LogSync<'_>,
    with_log: impl Fn(&mut dyn FnMut(&mut WorkerLog)),
    sync_data: impl Fn(File) -> Synced,
    sleep: impl Fn(Duration) -> Sleep,
) where
    Sleep: Future<Output = ()>,
    Synced: Future<Output = io::Result<()>>,
{
    loop {
        let asked = ends.wanted.notified();
        let tick = sleep(ends.interval);
        futures_util::pin_mut!(asked, tick);
        futures_util::future::select(asked, tick).await;
        let mut job = None;
        with_log(&mut |log| {
            log.release_retired();
            job = log.sync_job();
        });
        let Some(SyncJob { files, upto }) = job else {
            continue;
        };
        let started = Instant::now();
        let mut result = Ok(());
        for file in files {
            if let Err(e) = sync_data(file).await {
                result = Err(e);
            }
        }
        ends.metrics.wal_synced(started.elapsed());
        let mut result = Some(result);
        with_log(&mut |log| {
            if let Some(result) = result.take() {
                log.sync_done(upto, result);
            }
        });
        ends.done.notify_all();
    }
}

/// `--durability host`, for any runtime: waits until `synced` (the worker's log asked whether
/// the records before an answer are on disk) says yes, asking the sync task (`wanted`)
/// for a sync; false when the sync that covered them failed.
pub async fn wait_for_sync(
    wanted: &LocalNotify,
    done: &LocalBroadcast,
    mut synced: impl FnMut() -> Option<bool>,
) -> bool {
    if let Some(synced) = synced() {
        return synced;
    }
    wanted.notify();
    done.wait_for(synced).await
}
