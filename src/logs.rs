//! Logging: the stats lines (log target [`STATS_TARGET`]) go to the stats log file, the
//! callback outcomes (target [`CALLBACK_TARGET`]) to the callback log file, everything else to
//! `env_logger` on stderr (`RUST_LOG`, default `info`): stderr, and so the journal, carries
//! service events only, not a line per callback.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

/// The `log` target of stats lines.
pub const STATS_TARGET: &str = "verve::stats";
/// The `log` target of callback outcomes; not a module path, so that the callback module's
/// own messages (the queue shedding, the shutdown) still go to stderr.
pub const CALLBACK_TARGET: &str = "verve::callback-outcome";

#[derive(Debug, thiserror::Error)]
/// Why logging could not be set up.
pub enum LogSetupError {
    #[error("{flag} {path}: {source}")]
    /// A log file could not be opened.
    Open {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    #[error("a logger is already installed")]
    /// Another logger was installed first.
    AlreadySet(#[from] log::SetLoggerError),
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
        *self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = file;
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
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// Puts the stats log's lines on disk (`fdatasync`): before the write-ahead log lets a
/// reported window's ids go. A stats log that is a pipe or a terminal cannot be synced
/// (`EINVAL`): what reads it keeps the lines, or not.
pub fn sync_stats() -> io::Result<()> {
    let Some(files) = FILES.get() else {
        return Ok(());
    };
    let synced = files[0]
        .file
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .sync_data();
    match synced {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        synced => synced,
    }
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
