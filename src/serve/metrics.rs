//! Counters for the whole proxy: requests by status, upstream attempts and retries,
//! histograms of request time and time to first byte, and a ten-minute history of
//! requests and 429s for the status page's chart.
//!
//! Invariants: no key, masked or not, is stored here (per-key counters live in the pool).
//! The clock comes in as an argument. One short lock per finished request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::rotation::pool::epoch_ms;

/// Upper bounds of the histogram buckets, in seconds (time to first byte of slow models
/// and whole streams both fit).
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Width of one history slice, and how many are kept (ten minutes).
pub const SLICE: Duration = Duration::from_secs(10);
pub const SLICES: usize = 60;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each of [`BUCKETS`] (not cumulative).
    pub counts: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|le| secs <= *le) {
            self.counts[bucket] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// Requests and 429s in one slice of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// Start, in epoch milliseconds.
    pub start_ms: u64,
    pub requests: u64,
    pub rate_limited: u64,
}

/// A copy of everything counted so far.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub by_status: BTreeMap<u16, u64>,
    pub attempts: u64,
    pub retries: u64,
    pub duration: Histogram,
    pub first_byte: Histogram,
    pub history: VecDeque<Slice>,
}

impl Counters {
    /// The slice `at` falls in, created (and old ones dropped) as needed.
    fn slice(&mut self, at: SystemTime) -> &mut Slice {
        let width = SLICE.as_millis() as u64;
        let start_ms = epoch_ms(at) / width * width;
        if self.history.back().is_none_or(|s| s.start_ms < start_ms) {
            self.history.push_back(Slice {
                start_ms,
                ..Slice::default()
            });
            while self.history.len() > SLICES {
                self.history.pop_front();
            }
        }
        // Late observations (a clock step back) go to the newest slice.
        self.history
            .back_mut()
            .expect("just ensured a slice exists")
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

impl Metrics {
    /// A request finished: its status, how many upstream attempts it made, how long it
    /// took, and how long until its first byte went out (if it got that far).
    pub fn request(
        &self,
        status: u16,
        attempts: usize,
        took: Duration,
        first_byte: Option<Duration>,
        at: SystemTime,
    ) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *c.by_status.entry(status).or_default() += 1;
        c.attempts += attempts as u64;
        c.retries += attempts.saturating_sub(1) as u64;
        c.duration.observe(took);
        if let Some(first_byte) = first_byte {
            c.first_byte.observe(first_byte);
        }
        c.slice(at).requests += 1;
    }

    /// An upstream attempt was rate limited.
    pub fn rate_limited(&self, at: SystemTime) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.slice(at).rate_limited += 1;
    }

    pub fn snapshot(&self) -> Counters {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn requests_are_counted_by_status_with_retries() {
        let m = Metrics::default();
        m.request(
            200,
            1,
            Duration::from_millis(3),
            Some(Duration::from_millis(1)),
            at(0),
        );
        m.request(200, 3, Duration::from_millis(30), None, at(1));
        m.request(429, 2, Duration::from_secs(400), None, at(2));
        let c = m.snapshot();
        assert_eq!(c.by_status, BTreeMap::from([(200, 2), (429, 1)]));
        assert_eq!((c.attempts, c.retries), (6, 3));
        assert_eq!(c.duration.count, 3);
        assert_eq!(c.duration.counts[0], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(c.duration.counts[3], 1, "30 ms is in the 50 ms bucket");
        assert_eq!(
            c.duration.counts.iter().sum::<u64>(),
            2,
            "400 s is past every bucket (only +Inf)"
        );
        assert_eq!(c.first_byte.count, 1);
    }

    #[test]
    fn history_keeps_ten_minutes_of_ten_second_slices() {
        let m = Metrics::default();
        m.request(200, 1, Duration::ZERO, None, at(0));
        m.rate_limited(at(5));
        m.request(200, 1, Duration::ZERO, None, at(12));
        let h = m.snapshot().history;
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].requests, h[0].rate_limited, h[1].requests), (1, 1, 1));
        for s in 0..100 {
            m.request(200, 1, Duration::ZERO, None, at(20 + s * 10));
        }
        assert_eq!(m.snapshot().history.len(), SLICES);
    }
}
