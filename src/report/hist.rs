//! Converts the recorder's `hdrhistogram` latency histograms into the
//! report's plain numbers, so every producer of a `RunReport` uses the same
//! bucket layout (log-spaced ×1.2 from 1 ms, then an overflow bucket).
//!
//! `unit_ms` is the duration of one recorded unit in milliseconds: 0.001
//! when the histogram records microseconds, 1.0 for milliseconds.

use hdrhistogram::Histogram;

use super::{Quantiles, WindowPoint};

/// Smallest bucket upper bound, ms.
const FIRST_MS: f64 = 1.0;
/// Ratio between consecutive bounds (~18 buckets per decade would be too
/// fine to plot; 1.2 gives ~12.6 per decade).
const RATIO: f64 = 1.2;
/// Largest finite bound, ms (10 minutes); anything slower overflows.
const LAST_MS: f64 = 600_000.0;

/// Upper bounds of the standard buckets, ascending, ending with +∞.
pub fn bucket_bounds() -> Vec<f64> {
    let mut out = Vec::new();
    let mut b = FIRST_MS;
    while b <= LAST_MS {
        // Three significant decimals keep the JSON short and stable.
        out.push((b * 1000.0).round() / 1000.0);
        b *= RATIO;
    }
    out.push(f64::INFINITY);
    out
}

/// The histogram as `[(upper_ms, count)]` with the standard bounds, with
/// trailing empty buckets dropped (the overflow bucket is kept only if it
/// has counts).
pub fn buckets(h: &Histogram<u64>, unit_ms: f64) -> Vec<(f64, u64)> {
    let bounds = bucket_bounds();
    let mut counts = vec![0u64; bounds.len()];
    for v in h.iter_recorded() {
        let ms = h.highest_equivalent(v.value_iterated_to()) as f64 * unit_ms;
        let i = bounds.partition_point(|&u| u < ms).min(bounds.len() - 1);
        counts[i] += v.count_at_value();
    }
    let last = counts.iter().rposition(|&c| c > 0).map(|i| i + 1).unwrap_or(0);
    bounds.into_iter().zip(counts).take(last).collect()
}

/// p50/p90/p99/max in ms; NaN (→ `null` in JSON) when empty.
pub fn quantiles(h: &Histogram<u64>, unit_ms: f64) -> Quantiles {
    if h.is_empty() {
        return Quantiles { p50: f64::NAN, p90: f64::NAN, p99: f64::NAN, max: f64::NAN };
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 * unit_ms;
    Quantiles { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: h.max() as f64 * unit_ms }
}

/// One timeline point from a window's histogram and error count.
pub fn window(t_s: f64, h: &Histogram<u64>, errors: u64, unit_ms: f64) -> WindowPoint {
    let q = quantiles(h, unit_ms);
    WindowPoint { t_s, requests: h.len(), errors, p50_ms: q.p50, p99_ms: q.p99 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(values_ms: &[f64]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values_ms {
            h.record((v * 1000.0) as u64).unwrap();
        }
        h
    }

    #[test]
    fn puts_every_recorded_value_into_exactly_one_bucket() {
        let h = micros(&[0.5, 3.0, 40.0, 41.0, 250.0, 700_000.0]);
        let b = buckets(&h, 0.001);
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 6);
        assert_eq!(
            b.last().unwrap(),
            &(f64::INFINITY, 1),
            "slower than 10 min overflows"
        );
        let forty = b.iter().find(|x| x.0 >= 40.0).unwrap();
        assert!(forty.0 < 48.0 && forty.1 >= 1, "{b:?}");
    }

    #[test]
    fn drops_trailing_empty_buckets() {
        let b = buckets(&micros(&[2.0, 3.0]), 0.001);
        assert!(b.last().unwrap().0 < 4.0, "{b:?}");
        assert!(buckets(&micros(&[]), 0.001).is_empty());
    }

    #[test]
    fn reports_quantiles_in_milliseconds_and_nan_when_empty() {
        let h = micros(&(1..=100).map(f64::from).collect::<Vec<_>>());
        let q = quantiles(&h, 0.001);
        assert!((q.p50 - 50.0).abs() < 0.1 && (q.p99 - 99.0).abs() < 0.1, "{q:?}");
        assert!((q.max - 100.0).abs() < 0.1);
        assert!(quantiles(&micros(&[]), 0.001).p99.is_nan());
        let w = window(2.0, &h, 3, 0.001);
        assert_eq!((w.requests, w.errors), (100, 3));
    }
}
