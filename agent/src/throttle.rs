//! Throttled failure logging: something that keeps failing (an alert sink, a local output)
//! logs its first failure at once, then at most one line per interval carrying how many
//! failed since the previous line, and one line when it recovers.
//!
//! [`ThrottledLog`] only decides *when* a line is due and with which count; the caller writes
//! the line with its own fields (sink name, error, metric).

use std::time::{Duration, Instant};

/// When a repeatedly failing operation logs: the first failure at once, then at most one line
/// per `interval` with the failures since the previous line, and one line on recovery with
/// the failures not reported yet.
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use vigil::throttle::ThrottledLog;
/// let mut log = ThrottledLog::new(Duration::from_secs(10));
/// let now = Instant::now();
/// assert_eq!(log.failure(now), Some(1));
/// assert_eq!(log.failure(now), None);
/// assert_eq!(log.success(), Some(1));
/// ```
#[derive(Debug, Clone)]
pub struct ThrottledLog {
    interval: Duration,
    last_line: Option<Instant>,
    /// Failures not yet in a line.
    unreported: u64,
    /// A failure line went out and no recovery line since.
    failing: bool,
}

impl ThrottledLog {
    /// A log that writes at most one failure line per `interval`.
    #[must_use]
    pub const fn new(interval: Duration) -> Self {
        Self { interval, last_line: None, unreported: 0, failing: false }
    }

    /// The interval given to [`ThrottledLog::new`].
    #[must_use]
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// Records one failure at `now`; `Some(failures the line reports)` when a line is due.
    pub fn failure(&mut self, now: Instant) -> Option<u64> {
        self.failures(1, now)
    }

    /// Records `n` failures at `now` (a batch, such as the records of one harvest); `Some(failures
    /// the line reports)` when a line is due. `n == 0` records nothing and answers `None`.
    pub fn failures(&mut self, n: u64, now: Instant) -> Option<u64> {
        if n == 0 {
            return None;
        }
        self.unreported = self.unreported.saturating_add(n);
        if self.last_line.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            return None;
        }
        self.last_line = Some(now);
        self.failing = true;
        Some(std::mem::take(&mut self.unreported))
    }

    /// Records a success; `Some(failures since the last line)` when it ends a reported failure
    /// (the caller logs the recovery), `None` otherwise.
    pub fn success(&mut self) -> Option<u64> {
        if !self.failing {
            return None;
        }
        self.failing = false;
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_logged_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = ThrottledLog::new(Duration::from_secs(10));
        assert_eq!(log.success(), None, "nothing to recover from");
        assert_eq!(log.failure(at(0)), Some(1), "the first failure is logged at once");
        for ms in [1, 500, 9_999] {
            assert_eq!(log.failure(at(ms)), None, "quiet inside the interval");
        }
        assert_eq!(log.failure(at(10_000)), Some(4), "then one line with the failures since the last");
        assert_eq!(log.failure(at(10_001)), None);
        assert_eq!(log.success(), Some(1), "recovery reports the failures not yet logged");
        assert_eq!(log.success(), None);
        assert_eq!(log.failure(at(12_000)), None, "a flapping sink still logs once per interval");
        assert_eq!(log.failure(at(20_000)), Some(2));
    }

    #[test]
    fn batches_count_every_failure() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = ThrottledLog::new(Duration::from_secs(10));
        assert_eq!(log.interval(), Duration::from_secs(10));
        assert_eq!(log.failures(0, at(0)), None, "no failure, no line");
        assert_eq!(log.success(), None, "and nothing to recover from");
        assert_eq!(log.failures(3, at(0)), Some(3));
        assert_eq!(log.failures(5, at(1_000)), None);
        assert_eq!(log.failures(0, at(10_000)), None, "an empty batch does not log the backlog");
        assert_eq!(log.failures(2, at(10_000)), Some(7));
    }
}
