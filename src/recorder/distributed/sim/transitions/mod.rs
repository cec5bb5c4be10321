//! The rows of ARCHITECTURE.md's state table that the Redis thread decides, one test each:
//! a process's Redis thread (the real one) against one simulated server whose keys a test
//! sets beforehand, one request (the event), and the settlement it answers and the keys it
//! leaves (the commands), on a paused clock.
//!
//! `electing`: the rows of the flush and the election; `amending_and_kept`: amendments, claims
//! kept and set again, the shutdown's question and a process's start.

mod amending_and_kept;
mod electing;

use std::sync::Arc;
use std::time::SystemTime;

use crate::metrics::Metrics;
use crate::wal::WalDir;
use crate::wal::claims::Claim;
use crate::window::WindowIndex;

/// An earlier process of this instance.
pub(super) const EARLIER: &str = "i0/1";

/// A log's directory for the process to keep its claims in; gone with the `TempDir`.
pub(super) fn log() -> (tempfile::TempDir, Arc<WalDir>) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(WalDir::open(dir.path(), Arc::new(Metrics::new(1))).unwrap());
    (dir, wal)
}

/// The claim of `window` an earlier process kept, counting 2 with its own marks, made at
/// `made_at`, made (`confirmed`) or being made.
pub(super) fn earlier_claim(window: WindowIndex, made_at: SystemTime, confirmed: bool) -> Claim {
    Claim {
        window,
        holder: EARLIER.to_owned(),
        count: 2,
        marks: EARLIER.to_owned(),
        made_at,
        confirmed,
        report_written: false,
    }
}
