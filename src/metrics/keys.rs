//! Which request keys were seen, by their assignment position, so the
//! sample-ratio check can count *keys* (the unit that is randomised)
//! rather than requests; and per-key sums of each cohort's outcomes
//! ([`KeyBuckets`]) for the verdicts' per-key variance. Requests of one key are correlated: with a few
//! thousand keys the per-cohort request counts are over-dispersed and a
//! request-level chi-square false-alarms far more often than its alpha.
//!
//! A fixed bitmap over [0, 1): a key sets the bit of the bucket its
//! position falls in. Every key, whatever its cohort, lands uniformly in
//! [0, 1) under a faithful split, so the *occupied buckets* of each cohort's
//! range are spread in proportion to the range's size. Counting occupied
//! buckets instead of exact keys costs collisions, which only lower the
//! variance (the test stays valid, slightly conservative) and bounds the
//! memory at [`KEY_BUCKETS`] bits however many keys arrive.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets (bits) in the bitmap: 2^20, 128 KiB. Up to about a million
/// distinct keys the occupied count stays informative (63% full at 2^20
/// keys); beyond that the check loses power but never false-alarms.
pub const KEY_BUCKETS: usize = 1 << 20;

const WORDS: usize = KEY_BUCKETS / 64;

/// Occupied and total buckets of one slice of [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub occupied: u64,
    pub buckets: u64,
}

/// The bitmap. Lock-free: a relaxed load, and a `fetch_or` only when the
/// bit is still clear, so hot keys do not bounce the cache line.
#[derive(Debug)]
pub struct KeySketch {
    words: Box<[AtomicU64]>,
}

impl Default for KeySketch {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySketch {
    pub fn new() -> Self {
        KeySketch { words: (0..WORDS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Notes a key at `position` in [0, 1) (out-of-range values are clamped).
    pub fn note(&self, position: f64) {
        let bucket = bucket_of(position);
        let (word, bit) = (bucket / 64, 1u64 << (bucket % 64));
        let slot = &self.words[word];
        if slot.load(Ordering::Relaxed) & bit == 0 {
            slot.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Occupancy of the buckets whose start lies in `[lo, hi)`. A bucket
    /// straddling `lo` or `hi` belongs to the slice its start is in: under
    /// a faithful split each bucket is equally likely to be occupied, so
    /// the attribution rule only has to be the same for counts and shares.
    pub fn occupancy(&self, lo: f64, hi: f64) -> Occupancy {
        let (first, end) = (first_bucket_at_or_after(lo), first_bucket_at_or_after(hi));
        let mut occupied = 0u64;
        let mut b = first;
        while b < end {
            let word = self.words[b / 64].load(Ordering::Relaxed);
            let offset = b % 64;
            let take = (64 - offset).min(end - b);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << offset };
            occupied += u64::from((word & mask).count_ones());
            b += take;
        }
        Occupancy { occupied, buckets: end.saturating_sub(first) as u64 }
    }
}

fn bucket_of(position: f64) -> usize {
    let b = (position.clamp(0.0, 1.0) * KEY_BUCKETS as f64) as usize;
    b.min(KEY_BUCKETS - 1)
}

/// Index of the first bucket starting at or after `x` (bucket i starts at
/// i / KEY_BUCKETS).
fn first_bucket_at_or_after(x: f64) -> usize {
    let scaled = x.clamp(0.0, 1.0) * KEY_BUCKETS as f64;
    (scaled.ceil() as usize).min(KEY_BUCKETS)
}

/// Buckets per cohort of [`KeyBuckets`]: 4096 cells of 40 bytes, 160 KiB
/// per cohort, whatever the number of keys.
///
/// Why this size: keys are hashed into buckets, and the per-key variance
/// is then computed over buckets. A bucket is a union of whole keys, so it
/// is still a valid cluster (a coarser partition of independent keys); the
/// price is degrees of freedom. The relative standard error of a variance
/// estimated from B independent clusters is about √(2/B): 2.2% at 4096,
/// i.e. about 1% on a standard error. Below ~4096 distinct keys per cohort
/// buckets are nearly single keys; beyond, the estimate stays valid while
/// the memory stays fixed.
pub const SUM_BUCKETS: usize = 4096;

/// Sums of one bucket of keys.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyCell {
    /// Requests.
    pub requests: u64,
    /// Failed requests (the verdict's definition).
    pub errors: u64,
    /// Successful requests, the ones latency hypotheses judge.
    pub ok: u64,
    /// Σ ln(latency in ms) over successful requests.
    pub log_sum: f64,
    /// Σ ln²(latency in ms) over successful requests.
    pub log_sq: f64,
}

/// Per-key sums of one cohort, keys hashed into [`SUM_BUCKETS`] buckets.
/// Cumulative; [`KeyBuckets::since`] takes the difference to an earlier
/// copy, so the runner can cut out the fault window without a reset.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBuckets {
    cells: Box<[KeyCell]>,
}

impl Default for KeyBuckets {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuckets {
    pub fn new() -> Self {
        KeyBuckets { cells: vec![KeyCell::default(); SUM_BUCKETS].into_boxed_slice() }
    }

    /// Memory of one cohort's buckets in bytes.
    pub const BYTES: usize = SUM_BUCKETS * std::mem::size_of::<KeyCell>();

    /// The bucket of a key at assignment `position`. Positions are already
    /// a hash of the key, but a cohort owns a slice of [0, 1): the 53 bits
    /// are mixed again so every cohort spreads over all buckets.
    pub fn bucket_of(position: f64) -> u32 {
        let bits = (position.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64;
        (crate::traffic::assign::mix(bits) % SUM_BUCKETS as u64) as u32
    }

    /// Adds one request of the key bucket `bucket`.
    pub fn add(&mut self, bucket: u32, error: bool, latency_ms: f64) {
        let Some(c) = self.cells.get_mut(bucket as usize) else { return };
        c.requests += 1;
        if error {
            c.errors += 1;
        } else {
            // 1 µs floor: a zero latency has no logarithm.
            let l = latency_ms.max(1e-3).ln();
            c.ok += 1;
            c.log_sum += l;
            c.log_sq += l * l;
        }
    }

    /// What was added after `earlier` (a copy of the same buckets).
    pub fn since(&self, earlier: &KeyBuckets) -> KeyBuckets {
        let cells = self
            .cells
            .iter()
            .zip(earlier.cells.iter())
            .map(|(a, b)| KeyCell {
                requests: a.requests.saturating_sub(b.requests),
                errors: a.errors.saturating_sub(b.errors),
                ok: a.ok.saturating_sub(b.ok),
                log_sum: if a.ok > b.ok { a.log_sum - b.log_sum } else { 0.0 },
                log_sq: if a.ok > b.ok { a.log_sq - b.log_sq } else { 0.0 },
            })
            .collect();
        KeyBuckets { cells }
    }

    /// The cells, one per bucket.
    pub fn cells(&self) -> &[KeyCell] {
        &self.cells
    }

    /// Per-bucket sums of the error indicator.
    pub fn error_sums(&self) -> Vec<crate::stats::KeySums> {
        self.cells
            .iter()
            .filter(|c| c.requests > 0)
            .map(|c| crate::stats::KeySums::counts(c.requests, c.errors))
            .collect()
    }

    /// Per-bucket sums of ln(latency) over successful requests.
    pub fn log_latency_sums(&self) -> Vec<crate::stats::KeySums> {
        self.cells
            .iter()
            .filter(|c| c.ok > 0)
            .map(|c| crate::stats::KeySums { n: c.ok, sum: c.log_sum, sum_sq: c.log_sq })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_count_once_and_slices_partition_the_bitmap() {
        let s = KeySketch::new();
        for _ in 0..1000 {
            s.note(0.1);
            s.note(0.7);
        }
        s.note(0.0);
        s.note(1.0); // clamped into the last bucket
        let a = s.occupancy(0.0, 0.25);
        let b = s.occupancy(0.25, 0.5);
        let c = s.occupancy(0.5, 1.0);
        assert_eq!((a.occupied, b.occupied, c.occupied), (2, 0, 2));
        assert_eq!(a.buckets + b.buckets + c.buckets, KEY_BUCKETS as u64);
        assert_eq!(a.buckets, KEY_BUCKETS as u64 / 4);
    }

    #[test]
    fn slice_edges_between_words_and_inside_words_are_counted_exactly() {
        let s = KeySketch::new();
        // Every bucket of the first 200 set, one position per bucket.
        for i in 0..200 {
            s.note((i as f64 + 0.5) / KEY_BUCKETS as f64);
        }
        let at = |i: usize| i as f64 / KEY_BUCKETS as f64;
        assert_eq!(s.occupancy(at(0), at(200)).occupied, 200);
        assert_eq!(s.occupancy(at(3), at(130)).occupied, 127);
        assert_eq!(s.occupancy(at(64), at(128)).occupied, 64);
        assert_eq!(s.occupancy(at(150), at(400)).occupied, 50);
        assert_eq!(s.occupancy(at(5), at(5)), Occupancy { occupied: 0, buckets: 0 });
    }

    #[test]
    fn distinct_keys_are_counted_until_collisions_begin() {
        let s = KeySketch::new();
        let n = 10_000u64;
        for i in 0..n {
            s.note(crate::traffic::assign::unit(crate::traffic::assign::mix(i)));
        }
        let all = s.occupancy(0.0, 1.0).occupied;
        // Expected occupancy M(1 - e^{-n/M}) ≈ n - 47.6 for n = 10,000.
        assert!((n - 120..=n).contains(&all), "{all}");
    }

    #[test]
    fn key_buckets_sum_per_key_and_subtract_an_earlier_copy() {
        let mut b = KeyBuckets::new();
        let k = KeyBuckets::bucket_of(0.123);
        assert_eq!(k, KeyBuckets::bucket_of(0.123), "a key keeps its bucket");
        b.add(k, true, 5.0);
        let before = b.clone();
        b.add(k, false, std::f64::consts::E);
        b.add(k, false, 0.0);
        let d = b.since(&before);
        let c = d.cells()[k as usize];
        assert_eq!((c.requests, c.errors, c.ok), (2, 0, 2));
        assert!((c.log_sum - (1.0 + 1e-3f64.ln())).abs() < 1e-12);
        assert_eq!(d.error_sums().len(), 1);
        assert_eq!(b.error_sums()[0], crate::stats::KeySums::counts(3, 1));
        assert_eq!(KeyBuckets::BYTES, 160 * 1024);
    }

    #[test]
    fn positions_of_one_cohort_spread_over_all_buckets() {
        // An experiment slice of 5%: positions in [0, 0.05) only.
        let mut seen = vec![false; SUM_BUCKETS];
        for i in 0..100_000u64 {
            let p = 0.05 * crate::traffic::assign::unit(crate::traffic::assign::mix(i));
            seen[KeyBuckets::bucket_of(p) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "every bucket is reachable from a slice");
    }
}
