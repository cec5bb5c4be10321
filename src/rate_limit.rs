//! A limit on repeated log lines.

use std::time::{Duration, Instant};

/// Lets a repeated warning through at most `burst` times per interval and counts what it held
/// back, so that a flood (a full queue, a bound reached, breakers flapping) costs a few lines
/// per interval.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    burst: u32,
    since: Option<Instant>,
    lines: u32,
    held_back: u64,
}

impl RateLimit {
    /// At most `burst` lines per `interval`.
    pub(crate) const fn new(interval: Duration, burst: u32) -> RateLimit {
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
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
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
