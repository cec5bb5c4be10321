//! The write-ahead log of the ids answered `ok` (`--durability`, `--wal-dir`): each worker
//! appends the ids new to it in a window to a segment of its own (`WorkerLog`) before the
//! answers of that round go out, so that an `ok` outlives a crash of the process. At start the
//! segments left are read back (`WalDir::recover`); the recorder deletes a window's segments
//! once the window is reported.
//!
//! A segment's name is `<window>-<incarnation>-<worker>-<sequence>.wal`: the window first, so
//! that the recorder finds a window's segments by name, and the incarnation (when this
//! process started), so that a restarted process never writes into a segment of the one
//! before it.

pub mod claims;
pub mod record;
pub mod seen;
pub mod segment;
pub mod worker_log;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::window::WindowIndex;

/// A segment's file name ends so.
const SUFFIX: &str = ".wal";

/// The directory of the log, shared by the workers (which write segments) and the recorder
/// (which deletes them).
pub struct WalDir {
    path: PathBuf,
    incarnation: u128,
    /// Whether the log takes writes, for `/readyz`.
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Every window before this one is reported, its segments deleted: a worker still holding
    /// one of them lets it go, so that its space is freed.
    retired_before: AtomicU64,
}

/// Why the log cannot be used at start.
#[derive(Debug, thiserror::Error)]
#[error("--wal-dir {path}: {source}")]
pub struct WalDirError {
    path: PathBuf,
    source: io::Error,
}

/// What the segments left by earlier processes hold.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every id logged, by window (a window's ids repeat across workers and processes).
    pub windows: BTreeMap<WindowIndex, Vec<i64>>,
}

impl WalDir {
    /// Opens (creating it when missing) the log at `path`.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<WalDir, WalDirError> {
        let error = |source| WalDirError {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(path).map_err(error)?;
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let health = Arc::new(Health::default());
        health.set_up();
        Ok(WalDir {
            path: path.to_owned(),
            incarnation,
            health,
            metrics,
            retired_before: AtomicU64::new(0),
        })
    }

    /// Whether `window` and every window before it are reported, their segments deleted.
    pub fn is_retired(&self, window: WindowIndex) -> bool {
        window < self.retired_before.load(Ordering::Relaxed)
    }

    /// Keeps a report claim this process made in Redis (`claims`). A failure is logged: a
    /// restart then cannot set the claim again.
    pub fn keep_claim(&self, claim: &claims::Claim) {
        let what = format_args!("keep the report claim of window {}", claim.window);
        self.logged(what, claims::keep(&self.path, claim), ());
    }

    /// Says beside the report claim kept for `window`, if any, that its report is written,
    /// logging a failure (the next process would then report the window again, recovered).
    pub fn report_written(&self, window: WindowIndex) {
        let what = format_args!("mark the report of window {window} written");
        self.logged(what, claims::report_written(&self.path, window), ());
    }

    /// Deletes the report claim kept for `window` (past the keys' expiry), logging a failure.
    pub fn forget_claim(&self, window: WindowIndex) {
        let what = format_args!("delete the report claim of window {window}");
        self.logged(what, claims::forget(&self.path, window), ());
    }

    /// Keeps that an amended count of `window` is about to be published, until the window's
    /// report is written. A failure is logged: a kill before the amended report is written
    /// then leaves the amendment in no report.
    pub fn keep_amending(&self, window: WindowIndex) {
        let what = format_args!("keep the amendment of window {window}");
        self.logged(what, claims::keep_amending(&self.path, window), ());
    }

    /// The report claims and amendments kept, made at or after `since` (older ones are
    /// deleted).
    pub fn kept_reports(&self, since: SystemTime) -> claims::Kept {
        let what = format_args!("read the report claims");
        self.logged(
            what,
            claims::kept(&self.path, since),
            claims::Kept::default(),
        )
    }

    /// Keeps the live instances this process has read in Redis (`seen`). A failure is
    /// logged: a restart then knows fewer instances that could have claimed a report.
    pub fn keep_sightings(&self, sightings: &seen::Sightings) {
        let what = format_args!("keep the live instances read");
        self.logged(what, seen::keep(&self.path, sightings), ());
    }

    /// The live instances an earlier process of this instance read, if kept.
    pub fn sightings(&self) -> Option<seen::Sightings> {
        let what = format_args!("read the live instances kept");
        self.logged(what, seen::read(&self.path), None)
    }

    /// Keeps the Redis masters this process found restarted (`seen`). A failure is logged: a
    /// restart then may not know that a claim's data set began after its window ended.
    pub fn keep_restarts(&self, restarts: &[seen::Restart]) {
        let what = format_args!("keep the redis restarts found");
        self.logged(what, seen::keep_restarts(&self.path, restarts), ());
    }

    /// The Redis masters earlier processes of this instance found restarted, if kept.
    pub fn restarts_seen(&self) -> Vec<seen::Restart> {
        let what = format_args!("read the redis restarts kept");
        self.logged(what, seen::read_restarts(&self.path), Vec::new())
    }

    /// What `result` holds, or, logging its failure to `what` in the log's directory
    /// (`wal: cannot <what> in <dir>: <error>`), `fallback`: what is kept beside the log
    /// helps the next process, and its failure stops nothing.
    fn logged<T>(&self, what: fmt::Arguments, result: io::Result<T>, fallback: T) -> T {
        result.unwrap_or_else(|e| {
            log::error!("wal: cannot {what} in {}: {e}", self.path.display());
            fallback
        })
    }

    /// Whether the log takes writes.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The path of worker `worker`'s `sequence`th segment, of `window`.
    fn segment_path(&self, window: WindowIndex, worker: usize, sequence: u64) -> PathBuf {
        self.path.join(format!(
            "{window}-{}-{worker}-{sequence}{SUFFIX}",
            self.incarnation
        ))
    }

    /// The segments in the directory, with the window their name gives.
    fn segments(&self) -> io::Result<Vec<(WindowIndex, PathBuf)>> {
        let mut segments = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let path = entry?.path();
            let window = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.ends_with(SUFFIX))
                .and_then(|n| n.split('-').next())
                .and_then(|w| w.parse().ok());
            if let Some(window) = window {
                segments.push((window, path));
            }
        }
        Ok(segments)
    }

    /// Reads every segment: the ids of each whole record, by window. A torn or corrupt tail
    /// is cut off (the file truncated to its last whole record), counted and logged once per
    /// file; a file that is not a segment is left alone and logged.
    pub fn recover(&self) -> Result<Recovered, WalDirError> {
        let error = |source| WalDirError {
            path: self.path.clone(),
            source,
        };
        let mut recovered = Recovered::default();
        let mut bytes_held = 0;
        for (_, path) in self.segments().map_err(error)? {
            let bytes = fs::read(&path).map_err(error)?;
            let decoded = match record::decode(&bytes) {
                Ok(decoded) => decoded,
                Err(e) => {
                    log::warn!("wal: {} is left alone: {e}", path.display());
                    continue;
                }
            };
            if decoded.torn_len > 0 {
                log::warn!(
                    "wal: {}: cut {} bytes of a torn or corrupt tail after {} ids in whole \
                     records",
                    path.display(),
                    decoded.torn_len,
                    decoded.ids.len()
                );
                self.metrics.wal_torn(decoded.torn_len as u64);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(decoded.good_len as u64))
                    .map_err(error)?;
            }
            bytes_held += if decoded.torn_len > 0 {
                decoded.good_len
            } else {
                bytes.len()
            } as u64;
            self.metrics.wal_recovered(decoded.ids.len() as u64);
            recovered
                .windows
                .entry(decoded.window)
                .or_default()
                .extend(decoded.ids);
        }
        self.metrics.wal_allocated(bytes_held as i64);
        Ok(recovered)
    }

    /// Every window before `window` is reported: a worker still holding a segment of one lets
    /// it go. Said by the recorder, which may report a later window before an earlier one.
    pub fn reported_before(&self, window: WindowIndex) {
        self.retired_before.fetch_max(window, Ordering::Relaxed);
    }

    /// Deletes the segments of `window`, its report written. A failure is logged: the window
    /// is then reported again, marked recovered, after a restart.
    pub fn remove_window(&self, window: WindowIndex) {
        let segments = match self.segments() {
            Ok(segments) => segments,
            Err(e) => {
                log::error!("wal: cannot list {}: {e}", self.path.display());
                return;
            }
        };
        for (_, path) in segments.into_iter().filter(|(w, _)| *w == window) {
            let len = fs::metadata(&path).map_or(0, |m| m.len());
            match fs::remove_file(&path) {
                Ok(()) => self.metrics.wal_allocated(-(len as i64)),
                Err(e) => log::error!("wal: cannot delete {}: {e}", path.display()),
            }
        }
    }
}
