//! Logging: the stats lines (log target [`STATS_TARGET`]) go to the stats log file, the
//! callback outcomes (target [`CALLBACK_TARGET`]) to the callback log file, everything else to
//! env_logger on stderr (`RUST_LOG`, default `info`): stderr, and so the journal, carries
//! service events only, not a line per callback.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use log::{LevelFilter, Log, Metadata, Record};

use crate::report::WindowReport;

/// The `log` target of stats lines.
pub const STATS_TARGET: &str = "verve::stats";
/// The `log` target of callback outcomes; not a module path, so that the callback module's
/// own messages (the queue shedding, the shutdown) still go to stderr.
pub const CALLBACK_TARGET: &str = "verve::callback-outcome";

#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error("{flag} {path}: {source}")]
    Open {
        flag: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("a logger is already installed")]
    AlreadySet(#[from] log::SetLoggerError),
}

/// Writes one window's stats line.
pub fn write_report(report: &WindowReport) {
    log::info!(target: STATS_TARGET, "{report}");
}

/// Lets a repeated warning through at most `burst` times per interval and counts what it held
/// back, so that a flood (a full queue, a bound reached, breakers flapping) costs a few lines
/// per interval.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: u32,
    since: Option<Instant>,
    lines: u32,
    held_back: u64,
}

impl RateLimit {
    pub const fn new(interval: Duration, burst: u32) -> RateLimit {
        RateLimit {
            interval,
            burst,
            since: None,
            lines: 0,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the events held back since the
    /// last line; `None` (the event counted) otherwise.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .since
            .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.since = Some(now);
            self.lines = 0;
        }
        if self.lines == self.burst {
            self.held_back += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A log file, kept so that it can be reopened.
struct LogFile {
    /// The flag that named it, for errors.
    flag: &'static str,
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(flag: &'static str, path: &Path) -> Result<LogFile, LogSetupError> {
        Ok(LogFile {
            flag,
            path: path.to_owned(),
            file: Mutex::new(open(flag, path)?),
        })
    }

    fn reopen(&self) -> Result<(), LogSetupError> {
        let file = open(self.flag, &self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    /// One write per line, so that concurrent readers (tail -f, the tests) never see half.
    fn write(&self, record: &Record<'_>) -> io::Result<String> {
        let line = format!(
            "{} {} {}\n",
            humantime::format_rfc3339_millis(SystemTime::now()),
            record.level(),
            record.args()
        );
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes()).map(|()| line)
    }
}

/// The stats log and the callback log.
static FILES: OnceLock<Arc<[LogFile; 2]>> = OnceLock::new();

fn open(flag: &'static str, path: &Path) -> Result<File, LogSetupError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogSetupError::Open {
            flag,
            path: path.to_owned(),
            source,
        })
}

/// Installs the process-wide logger. Call once, before anything logs.
pub fn init(stats_path: &Path, callback_path: &Path) -> Result<(), LogSetupError> {
    let files = Arc::new([
        LogFile::open("--stats-log", stats_path)?,
        LogFile::open("--callback-log", callback_path)?,
    ]);
    let rest =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = rest.filter().max(LevelFilter::Info);
    log::set_boxed_logger(Box::new(Logger {
        files: Arc::clone(&files),
        rest,
    }))?;
    log::set_max_level(max);
    let _ = FILES.set(files);
    Ok(())
}

/// Reopens both log files at their paths, after logrotate moved them (SIGHUP).
pub fn reopen() -> Result<(), LogSetupError> {
    let Some(files) = FILES.get() else {
        return Ok(());
    };
    files.iter().try_for_each(LogFile::reopen)
}

struct Logger {
    files: Arc<[LogFile; 2]>,
    rest: env_logger::Logger,
}

impl Logger {
    fn file_of(&self, target: &str) -> Option<&LogFile> {
        match target {
            STATS_TARGET => Some(&self.files[0]),
            CALLBACK_TARGET => Some(&self.files[1]),
            _ => None,
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.file_of(metadata.target()).is_some() || self.rest.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let Some(file) = self.file_of(record.target()) else {
            self.rest.log(record);
            return;
        };
        if let Err(e) = file.write(record) {
            // The stats log is the record of counts: say loudly when it cannot be written.
            log::error!(
                "cannot write {} {}: {e}; lost line: {}",
                file.flag,
                file.path.display(),
                record.args()
            );
        }
    }

    fn flush(&self) {
        self.rest.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_a_burst_per_interval_through_and_counts_the_rest() {
        let mut limit = RateLimit::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(at(1)), Some(0));
        assert_eq!(limit.allow(at(2)), None);
        assert_eq!(limit.allow(at(9)), None);
        assert_eq!(limit.allow(at(10)), Some(2));
        assert_eq!(limit.allow(at(11)), Some(0));
        assert_eq!(limit.allow(at(12)), None);
    }
}
