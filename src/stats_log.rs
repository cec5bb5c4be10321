//! Logging: the stats lines (log target [`STATS_TARGET`]) go to the stats log file, everything
//! else to env_logger on stderr (`RUST_LOG`, default `info`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

use crate::report::WindowReport;

/// The `log` target of stats lines.
pub const STATS_TARGET: &str = "verve::stats";

#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error("--stats-log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("a logger is already installed")]
    AlreadySet(#[from] log::SetLoggerError),
}

/// Writes one window's stats line.
pub fn write_report(report: &WindowReport) {
    log::info!(target: STATS_TARGET, "{report}");
}

/// The stats log file, kept so that it can be reopened.
struct StatsFile {
    path: PathBuf,
    file: Mutex<File>,
}

static STATS: OnceLock<Arc<StatsFile>> = OnceLock::new();

fn open(path: &Path) -> Result<File, LogSetupError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogSetupError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Installs the process-wide logger. Call once, before anything logs.
pub fn init(stats_path: &Path) -> Result<(), LogSetupError> {
    let stats = Arc::new(StatsFile {
        path: stats_path.to_owned(),
        file: Mutex::new(open(stats_path)?),
    });
    let rest =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = rest.filter().max(LevelFilter::Info);
    log::set_boxed_logger(Box::new(Logger {
        stats: Arc::clone(&stats),
        rest,
    }))?;
    log::set_max_level(max);
    let _ = STATS.set(stats);
    Ok(())
}

/// Reopens the stats log at its path, after logrotate moved it (SIGHUP).
pub fn reopen() -> Result<(), LogSetupError> {
    let Some(stats) = STATS.get() else {
        return Ok(());
    };
    let file = open(&stats.path)?;
    *stats.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(())
}

struct Logger {
    stats: Arc<StatsFile>,
    rest: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == STATS_TARGET || self.rest.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if record.target() != STATS_TARGET {
            self.rest.log(record);
            return;
        }
        // One write per line, so that concurrent readers (tail -f, the tests) never see half.
        let line = format!(
            "{} {} {}\n",
            humantime::format_rfc3339_millis(SystemTime::now()),
            record.level(),
            record.args()
        );
        let mut file = self.stats.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            // The stats log is the record of counts: say loudly when it cannot be written.
            log::error!(
                "cannot write the stats log: {e}; lost line: {}",
                line.trim_end()
            );
        }
    }

    fn flush(&self) {
        self.rest.flush();
    }
}
