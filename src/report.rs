//! What a window's report says, in the stats log's `key=value` form.

use std::fmt;

/// How the count of a report was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Distinct ids this instance answered `ok`.
    Standalone,
    /// Distinct ids any instance sharing the Redis answered `ok`.
    Distributed,
    /// Redis could not be reached in time: this instance's own count.
    Degraded,
}

impl Mode {
    /// Every mode, in declaration order: a mode's discriminant is its index.
    pub const ALL: [Mode; 3] = [Mode::Standalone, Mode::Distributed, Mode::Degraded];

    /// The `mode` of the stats line, the Kafka record and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Distributed => "distributed",
            Mode::Degraded => "degraded",
        }
    }
}

/// The count of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReport {
    /// RFC 3339, UTC.
    pub window_start: String,
    pub window_secs: u64,
    pub unique_requests: u64,
    pub mode: Mode,
    /// Written at shutdown before the window closed.
    pub partial: bool,
    /// Counted from the write-ahead log by a process started after the window closed.
    pub recovered: bool,
    /// Distributed: the window's count again, grown by ids its first report lacked (an
    /// instance cut off from Redis, or restarted from its log, pushed them after it). The
    /// largest count of a window is its final one.
    pub amended: bool,
}

impl fmt::Display for WindowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "window_start={} window_secs={} unique_requests={} mode={} partial={}",
            self.window_start,
            self.window_secs,
            self.unique_requests,
            self.mode.as_str(),
            self.partial
        )?;
        if self.recovered {
            f.write_str(" recovered=true")?;
        }
        if self.amended {
            f.write_str(" amended=true")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_the_stats_line() {
        let r = WindowReport {
            window_start: "2026-11-24T06:21:00Z".into(),
            window_secs: 60,
            unique_requests: 1234,
            mode: Mode::Standalone,
            partial: false,
            recovered: false,
            amended: false,
        };
        assert_eq!(
            r.to_string(),
            "window_start=2026-11-24T06:21:00Z window_secs=60 unique_requests=1234 \
             mode=standalone partial=false"
        );
        let recovered = WindowReport {
            recovered: true,
            ..r.clone()
        };
        assert!(
            recovered
                .to_string()
                .ends_with(" partial=false recovered=true")
        );
        let amended = WindowReport {
            mode: Mode::Distributed,
            amended: true,
            ..r
        };
        assert!(
            amended
                .to_string()
                .ends_with(" mode=distributed partial=false amended=true")
        );
    }
}
