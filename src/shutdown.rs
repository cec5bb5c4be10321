//! Telling the workers to stop: one socket pair per worker, so that each worker's runtime
//! (`io_uring` or epoll) wakes on an ordinary read. The rest of the service stops in order as
//! the workers drop their ends of the channels.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::{logs, systemd};

/// The sending side: `trigger` tells every worker to stop.
pub struct ShutdownTrigger {
    writers: Vec<UnixStream>,
}

/// A worker's receiving side.
pub struct ShutdownListener {
    reader: UnixStream,
}

/// One listener per worker.
pub fn channel(workers: usize) -> io::Result<(ShutdownTrigger, Vec<ShutdownListener>)> {
    let mut writers = Vec::with_capacity(workers);
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (writer, reader) = UnixStream::pair()?;
        writers.push(writer);
        listeners.push(ShutdownListener { reader });
    }
    Ok((ShutdownTrigger { writers }, listeners))
}

impl ShutdownTrigger {
    /// Starts the shutdown: every listener's wait ends.
    pub fn trigger(&mut self) {
        for w in &mut self.writers {
            // A worker that has already stopped has closed its end; nothing to tell it.
            let _ = w.write_all(b"x");
        }
    }

    /// Triggers on the first SIGTERM or SIGINT (and tells systemd); a second one exits at
    /// once. SIGHUP reopens the stats log and the callback log.
    pub fn on_signals(mut self) -> io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        std::thread::Builder::new()
            .name("verve-signals".into())
            .spawn(move || {
                let mut stopping = false;
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        match logs::reopen() {
                            Ok(()) => log::info!("SIGHUP: stats log and callback log reopened"),
                            Err(e) => log::error!("SIGHUP: {e}"),
                        }
                    } else if !stopping {
                        log::info!("signal {sig}: shutting down");
                        systemd::notify_stopping();
                        self.trigger();
                        stopping = true;
                    } else {
                        log::warn!("signal {sig} again: exiting now");
                        std::process::exit(130);
                    }
                }
            })?;
        Ok(())
    }
}

impl ShutdownListener {
    /// The socket to read, for a runtime other than monoio: readable (one byte, or end of
    /// file) means stop.
    pub fn into_std(self) -> UnixStream {
        self.reader
    }

    /// Registers with the current monoio runtime.
    pub fn register(self) -> io::Result<ShutdownWait> {
        self.reader.set_nonblocking(true)?;
        Ok(ShutdownWait {
            reader: monoio::net::UnixStream::from_std(self.reader)?,
        })
    }
}

/// A worker's listener, registered with its runtime.
pub struct ShutdownWait {
    reader: monoio::net::UnixStream,
}

impl ShutdownWait {
    /// Completes when the trigger fires, or when the trigger is gone.
    pub async fn wait(mut self) {
        use monoio::io::AsyncReadRent;
        let (_, _) = self.reader.read(vec![0u8; 1]).await;
    }
}
