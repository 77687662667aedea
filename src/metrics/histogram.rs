//! A fixed-bucket latency histogram made of atomics, so the proxy's hot
//! path records without taking a lock (prometheus-client's own histogram
//! takes a write lock per observation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the exported buckets; `+Inf` is implicit.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds in microseconds, precomputed for integer comparisons.
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Lock-free histogram: one counter per bucket (last = `+Inf`), a count and
/// a sum in microseconds (an integer, so no compare-and-swap loop).
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; 15],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl AtomicHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let idx = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (sum seconds, count, per-bucket non-cumulative counts with bounds).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, b) in BUCKETS.iter().enumerate() {
            buckets.push((*b, self.buckets[i].load(Ordering::Relaxed)));
        }
        buckets
            .push((f64::INFINITY, self.buckets[BUCKETS.len()].load(Ordering::Relaxed)));
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = AtomicHistogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert_eq!(buckets[0].1, 1);
        assert_eq!(buckets[1].1, 1);
        assert_eq!(buckets.last().map(|b| b.1), Some(1));
        assert!((sum - 60.0014).abs() < 1e-9);
    }
}
