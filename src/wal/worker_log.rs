//! A worker's own log: its current segment, the records of the round being answered, and how
//! far the file is synced. Single-threaded and without locks: only its worker touches it; the
//! worker's runtime runs the syncs (`SyncJob`).

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::WalDir;
use super::record::record_len;
use super::segment::Segment;
use crate::config::WalSettings;
use crate::rate_limit::RateLimit;
use crate::window::WindowIndex;

/// How often a worker may log that its log refuses writes.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A worker's log.
pub struct WorkerLog {
    dir: Arc<WalDir>,
    worker: usize,
    /// `--durability host`: answers wait for the sync that covers their records.
    host: bool,
    /// `--wal-fsync-ms`: with `process`, the oldest record may go unsynced this long before
    /// answers wait for its sync.
    sync_interval: Duration,
    segment: Option<Segment>,
    /// Segments opened so far, for the next one's name.
    opened: u64,
    /// Segments left for a newer window whose records the last sync did not cover.
    unsynced: Vec<File>,
    /// The ids of the record being gathered, and their window.
    staged: Vec<i64>,
    staged_window: WindowIndex,
    /// Records appended, ever; the first `synced` are on disk.
    appended: u64,
    synced: u64,
    /// The records up to here were in a sync that failed.
    failed: u64,
    /// When the oldest record that no sync has covered was appended.
    unsynced_since: Option<Instant>,
    /// The running sync's `upto`, and when the oldest record it does not cover was appended.
    syncing: Option<u64>,
    unsynced_since_sync_began: Option<Instant>,
    /// Whether the last sync ended later than `sync_interval` after its oldest record.
    late: bool,
    error_log: RateLimit,
}

/// Files to sync, and the records that the sync covers.
pub struct SyncJob {
    /// The segments with records not yet synced (their descriptors duplicated).
    pub files: Vec<File>,
    /// Once synced, the first `upto` records are on disk.
    pub upto: u64,
}

impl WorkerLog {
    /// Worker `worker`'s log in `dir`, run as `settings` say.
    pub fn new(dir: Arc<WalDir>, worker: usize, settings: &WalSettings) -> WorkerLog {
        WorkerLog {
            dir,
            worker,
            host: settings.host,
            sync_interval: settings.fsync_interval,
            segment: None,
            opened: 0,
            unsynced: Vec::new(),
            staged: Vec::new(),
            staged_window: 0,
            appended: 0,
            synced: 0,
            failed: 0,
            unsynced_since: None,
            syncing: None,
            unsynced_since_sync_began: None,
            late: false,
            error_log: RateLimit::new(ERROR_LOG_INTERVAL, 1),
        }
    }

    /// Makes sure that a record of `ids` ids of `window`, and the ids staged already, can be
    /// appended without failing. False when the log cannot take them (no space, a read-only
    /// or failing file system): logged, counted, and `/readyz` says so until it can again.
    pub fn reserve(&mut self, window: WindowIndex, ids: usize) -> bool {
        match self.try_reserve(window, self.record_len_with_staged(window, ids)) {
            Ok(()) => {
                if self.dir.health.set_up() {
                    log::info!("wal: worker {} can write its log again", self.worker);
                }
                true
            }
            Err(e) => {
                self.dir.metrics.wal_error();
                self.dir.health.set_down();
                if let Some(held_back) = self.error_log.allow(Instant::now()) {
                    log::error!(
                        "wal: worker {} cannot write its log in {}: {e}; new ids get 503 \
                         ({held_back} more such errors since the last line)",
                        self.worker,
                        self.dir.path.display()
                    );
                }
                false
            }
        }
    }

    /// Whether a record of `ids` ids of `window`, and the ids staged already, fit in the
    /// space claimed: no system call, nothing logged.
    pub fn has_room(&self, window: WindowIndex, ids: usize) -> bool {
        let bytes = self.record_len_with_staged(window, ids);
        self.segment
            .as_ref()
            .is_some_and(|s| s.window() == window && s.room() >= bytes)
    }

    /// Bytes of a record of `ids` ids of `window` and the ids staged for it already.
    fn record_len_with_staged(&self, window: WindowIndex, ids: usize) -> usize {
        let staged = if window == self.staged_window {
            self.staged.len()
        } else {
            0
        };
        record_len(staged + ids)
    }

    fn try_reserve(&mut self, window: WindowIndex, bytes: usize) -> io::Result<()> {
        let segment = match &mut self.segment {
            Some(segment) if segment.window() == window => segment,
            _ => self.open(window)?,
        };
        let grown = segment.reserve(bytes)?;
        // Shared by the workers: touched only when the segment grew, never per request.
        if grown > 0 {
            self.dir.metrics.wal_allocated(grown as i64);
        }
        Ok(())
    }

    fn open(&mut self, window: WindowIndex) -> io::Result<&mut Segment> {
        let path = self.dir.segment_path(window, self.worker, self.opened);
        let segment = Segment::create(&path, window)?;
        self.opened += 1;
        self.dir.metrics.wal_allocated(segment.allocated() as i64);
        if let Some(old) = self.segment.replace(segment)
            && self.appended > self.synced
        {
            // Its records still need the next sync; duplicating the descriptor would fail
            // where it matters least, so the file itself is kept.
            self.unsynced.push(old.into_file());
        }
        Ok(self.segment.as_mut().expect("just opened"))
    }

    /// Lets go of segments whose window is reported (their files deleted): a deleted file's
    /// space is freed only once it is unmapped and closed, and an idle worker opens no next
    /// segment that would replace it.
    pub fn release_retired(&mut self) {
        if self
            .segment
            .as_ref()
            .is_some_and(|s| self.dir.is_retired(s.window()))
        {
            self.segment = None;
        }
    }

    /// Adds `id` of `window` to the record being gathered; `commit` writes it.
    pub fn stage(&mut self, window: WindowIndex, id: i64) {
        if window != self.staged_window {
            self.commit();
            self.staged_window = window;
        }
        self.staged.push(id);
    }

    /// Appends the gathered record to the segment (in the page cache: no system call), room
    /// for it reserved by `reserve`.
    pub fn commit(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let window = self.staged_window;
        let reserved =
            matches!(&self.segment, Some(s) if s.window() == window) || self.reserve(window, 0);
        match &mut self.segment {
            Some(segment) if reserved => {
                segment.append(&self.staged);
                self.appended += 1;
                // One clock reading per sync, not per record.
                let since = if self.syncing.is_some() {
                    &mut self.unsynced_since_sync_began
                } else {
                    &mut self.unsynced_since
                };
                since.get_or_insert_with(Instant::now);
            }
            _ => log::error!(
                "wal: worker {}: {} ids answered ok could not be logged",
                self.worker,
                self.staged.len()
            ),
        }
        self.staged.clear();
    }

    /// Records appended so far.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// The records that the answers to be given now must wait for to be on disk (`is_synced`
    /// says when), `None` when they need not wait. With `host`, every record appended. With
    /// `process`, the records appended `--wal-fsync-ms` ago or earlier that no sync has
    /// covered yet: a disk that syncs late slows the answers rather than let a host crash
    /// lose more than that span of them.
    pub fn records_to_await(&self) -> Option<u64> {
        if self.host {
            return Some(self.appended);
        }
        // The oldest record first: while it is on time, so are the later ones, and one clock
        // reading serves the read.
        let oldest = self.unsynced_since?;
        let now = Instant::now();
        let overdue = |t: Instant| now.saturating_duration_since(t) >= self.sync_interval;
        if !overdue(oldest) {
            None
        } else if self.unsynced_since_sync_began.is_some_and(overdue) {
            Some(self.appended)
        } else {
            Some(self.syncing.unwrap_or(self.appended))
        }
    }

    /// How often the log is synced when no answer waits for it: twice per `--wal-fsync-ms`,
    /// so that a sync that takes less than half of it ends before any answer must wait.
    pub fn sync_interval(&self) -> Duration {
        (self.sync_interval / 2).max(Duration::from_millis(1))
    }

    /// Whether the first `records` are on disk: `Some(true)`, or `Some(false)` when the sync
    /// that covered them failed; `None` while their sync is to come.
    pub fn is_synced(&self, records: u64) -> Option<bool> {
        if self.synced >= records {
            Some(true)
        } else if self.failed >= records {
            Some(false)
        } else {
            None
        }
    }

    /// What to sync for every record appended so far to be on disk; `None` when they are.
    pub fn sync_job(&mut self) -> Option<SyncJob> {
        if self.appended == self.synced {
            return None;
        }
        let mut files = std::mem::take(&mut self.unsynced);
        if let Some(segment) = &self.segment {
            match segment.file().try_clone() {
                Ok(file) => files.push(file),
                Err(e) => {
                    self.sync_done(self.appended, Err(e));
                    return None;
                }
            }
        }
        self.syncing = Some(self.appended);
        Some(SyncJob {
            files,
            upto: self.appended,
        })
    }

    /// A sync ended: the first `upto` records are on disk, or a failure means they may not be.
    pub fn sync_done(&mut self, upto: u64, result: io::Result<()>) {
        self.syncing = None;
        let after = self.unsynced_since_sync_began.take();
        match result {
            Ok(()) => {
                self.synced = self.synced.max(upto);
                let late = self
                    .unsynced_since
                    .is_some_and(|t| t.elapsed() >= self.sync_interval);
                if late {
                    self.dir.metrics.wal_late_sync();
                    if !self.late {
                        log::warn!(
                            "wal: worker {}: a sync of its log ended more than --wal-fsync-ms \
                             after its oldest record; answers wait for syncs while they are late",
                            self.worker
                        );
                    }
                }
                self.late = late;
                self.unsynced_since = after;
            }
            Err(e) => {
                self.unsynced_since = self.unsynced_since.or(after);
                self.failed = self.failed.max(upto);
                self.dir.metrics.wal_error();
                log::error!(
                    "wal: worker {}: syncing its log failed: {e}; the answers waiting for it \
                     are not given",
                    self.worker
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn log_in(dir: &std::path::Path, host: bool) -> WorkerLog {
        log_syncing_every(dir, host, Duration::from_secs(1))
    }

    fn log_syncing_every(dir: &std::path::Path, host: bool, fsync: Duration) -> WorkerLog {
        let wal = WalDir::open(dir, Arc::new(Metrics::new(1))).unwrap();
        let settings = WalSettings {
            dir: dir.to_owned(),
            host,
            fsync_interval: fsync,
        };
        WorkerLog::new(Arc::new(wal), 0, &settings)
    }

    #[test]
    fn staged_ids_are_recovered_by_window_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), false);
        assert!(log.reserve(5, 2));
        log.stage(5, 1);
        log.stage(5, 2);
        assert!(log.reserve(6, 1));
        log.stage(6, 3);
        log.commit();
        log.stage(6, 4);
        assert_eq!(log.appended(), 2);
        let recovered = log.dir.recover().unwrap();
        assert_eq!(
            recovered.windows.into_iter().collect::<Vec<_>>(),
            [(5, vec![1, 2]), (6, vec![3])]
        );
    }

    #[test]
    fn a_sync_covers_what_was_appended_before_it_in_every_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), true);
        assert!(log.sync_job().is_none());
        assert!(log.reserve(5, 1));
        log.stage(5, 1);
        log.commit();
        assert!(log.reserve(6, 1));
        log.stage(6, 2);
        log.commit();
        let job = log.sync_job().unwrap();
        // Window 5's segment, left for window 6's, still had a record to sync.
        assert_eq!((job.files.len(), job.upto), (2, 2));
        assert_eq!(log.is_synced(2), None);
        log.sync_done(job.upto, Err(io::Error::other("injected")));
        assert_eq!(log.is_synced(2), Some(false));
        let job = log.sync_job().unwrap();
        log.sync_done(job.upto, Ok(()));
        assert_eq!(log.is_synced(2), Some(true));
        assert!(log.sync_job().is_none());
    }

    fn append(log: &mut WorkerLog, id: i64) {
        assert!(log.reserve(5, 1));
        log.stage(5, id);
        log.commit();
    }

    #[test]
    fn process_answers_wait_only_for_records_unsynced_past_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut on_time = log_syncing_every(&dir.path().join("a"), false, Duration::from_hours(1));
        append(&mut on_time, 1);
        assert_eq!(on_time.records_to_await(), None);

        // An interval of zero: every record not yet synced is overdue.
        let mut late = log_syncing_every(&dir.path().join("b"), false, Duration::ZERO);
        assert_eq!(late.records_to_await(), None, "nothing appended");
        append(&mut late, 1);
        assert_eq!(late.records_to_await(), Some(1));
        let job = late.sync_job().unwrap();
        assert_eq!(
            late.records_to_await(),
            Some(1),
            "the running sync covers record 1"
        );
        append(&mut late, 2);
        assert_eq!(
            late.records_to_await(),
            Some(2),
            "record 2 needs the next sync"
        );
        late.sync_done(job.upto, Ok(()));
        assert_eq!(late.records_to_await(), Some(2));
        let job = late.sync_job().unwrap();
        late.sync_done(job.upto, Ok(()));
        assert_eq!(late.records_to_await(), None);
        assert_eq!(late.is_synced(2), Some(true));
    }

    /// Whether this process maps a file at `path`.
    fn mapped(path: &std::path::Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| l.contains(&*path.to_string_lossy()))
    }

    #[test]
    fn a_reported_windows_segment_is_unmapped_without_another_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), false);
        assert!(log.reserve(5, 1));
        log.stage(5, 1);
        log.commit();
        let path = log.dir.segment_path(5, 0, 0);
        assert!(mapped(&path));
        log.release_retired();
        assert!(mapped(&path), "window 5 is not reported yet");
        log.dir.remove_window(5);
        log.dir.reported_before(6);
        log.release_retired();
        assert!(!mapped(&path), "the deleted segment is still mapped");
    }

    #[test]
    fn a_log_that_cannot_be_written_refuses_and_says_so_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let wal_path = dir.path().join("wal");
        let mut log = log_in(&wal_path, false);
        let health = log.dir.health();
        std::fs::remove_dir(&wal_path).unwrap();
        assert!(!log.reserve(5, 1));
        assert!(!health.is_up());
        std::fs::create_dir(&wal_path).unwrap();
        assert!(log.reserve(5, 1));
        assert!(health.is_up());
    }
}
