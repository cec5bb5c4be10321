//! A worker's tasks besides its connections, for any runtime (monoio here, tokio in the
//! baseline): handing batches over once per event-loop round, and the last hand-over at
//! shutdown.

use std::future::Future;
use std::time::Duration;

use super::notify::{LocalNotify, yield_now};

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
