//! systemd integration: `READY=1` once every worker listens, `STOPPING=1` at shutdown, and
//! `WATCHDOG=1` pings only while every worker's heartbeat advances. Without `NOTIFY_SOCKET`
//! (not under systemd) the notifications do nothing.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// How often a worker's heartbeat advances.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

#[repr(align(128))]
#[derive(Debug, Default)]
struct Beat(AtomicU64);

/// One counter per worker, advanced by a timer task on that worker: if a worker's event loop
/// is stuck, its counter stops.
#[derive(Debug)]
pub struct Heartbeats(Box<[Beat]>);

impl Heartbeats {
    /// The heartbeats of `workers` workers.
    pub fn new(workers: usize) -> Arc<Heartbeats> {
        Arc::new(Heartbeats((0..workers).map(|_| Beat::default()).collect()))
    }

    /// Worker `worker` is alive.
    pub fn beat(&self, worker: usize) {
        self.0[worker].0.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|b| b.0.load(Ordering::Relaxed)).collect()
    }
}

/// Tells systemd the service is ready (`READY=1`), when run under it.
pub fn notify_ready() {
    notify(NotifyState::Ready);
}

/// Tells systemd the service is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        log::warn!("systemd notification failed: {e}");
    }
}

/// With `WATCHDOG_USEC` set, pings systemd twice per watchdog period while every worker's
/// heartbeat has advanced since the last ping; a stalled worker withholds the ping, so that
/// systemd restarts verve.
pub fn start_watchdog(heartbeats: Arc<Heartbeats>) -> io::Result<()> {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return Ok(());
    };
    let interval = (period / 2).max(HEARTBEAT_INTERVAL * 2);
    std::thread::Builder::new()
        .name("verve-watchdog".into())
        .spawn(move || {
            let mut last = heartbeats.snapshot();
            loop {
                std::thread::sleep(interval);
                let now = heartbeats.snapshot();
                let stalled: Vec<usize> = (0..now.len()).filter(|&i| now[i] == last[i]).collect();
                if stalled.is_empty() {
                    notify(NotifyState::Watchdog);
                } else {
                    log::error!("workers {stalled:?} stalled: withholding the watchdog ping");
                }
                last = now;
            }
        })?;
    Ok(())
}
