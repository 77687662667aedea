//! Slices what the recorder saw into the observation window and shapes it
//! for the statistics engine (samples, counts, throughput windows) and for
//! the report (quantiles, timeline, histogram).

use crate::cohort::Cohort;
use crate::metrics::{CohortSnapshot, Sample};
use crate::report::{CohortSeries, Quantiles, WindowPoint};
use crate::stats::{CohortData, Counts};

/// Throughput is compared on windows this long (STATISTICS.md §2: short
/// windows are dominated by scheduling noise).
pub const THROUGHPUT_WINDOW_MS: u64 = 10_000;

/// The observation window, in milliseconds since the recorder's origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// Inclusive start.
    pub from_ms: u64,
    /// Exclusive end.
    pub to_ms: u64,
}

impl Span {
    fn contains(&self, at_ms: u64) -> bool {
        at_ms >= self.from_ms && at_ms < self.to_ms
    }
}

/// Latencies (ms) of successful requests in the window. Failed requests are
/// judged by the error-rate hypotheses; mixing fast failures into latency
/// would make a failing service look faster.
pub fn ok_latencies(snap: &CohortSnapshot, span: Span) -> Vec<f64> {
    snap.samples
        .iter()
        .filter(|s| !s.error && span.contains(s.at_ms))
        .map(|s| s.latency_ms)
        .collect()
}

/// Exact request and error counts in the window, from the per-second
/// windows (the reservoir may be a subsample).
pub fn counts(snap: &CohortSnapshot, span: Span) -> Counts {
    let mut c = Counts { events: 0, total: 0 };
    for w in snap.windows.iter().filter(|w| span.contains(w.start_ms)) {
        c.events += w.errors;
        c.total += w.requests;
    }
    c
}

/// Requests per second in consecutive whole windows of
/// [`THROUGHPUT_WINDOW_MS`] inside the span.
pub fn throughput_windows(snap: &CohortSnapshot, span: Span) -> Vec<f64> {
    let mut out = Vec::new();
    let mut start = span.from_ms;
    while start + THROUGHPUT_WINDOW_MS <= span.to_ms {
        let end = start + THROUGHPUT_WINDOW_MS;
        let n: u64 = snap
            .windows
            .iter()
            .filter(|w| w.start_ms >= start && w.start_ms < end)
            .map(|w| w.requests)
            .sum();
        out.push(n as f64 * 1000.0 / THROUGHPUT_WINDOW_MS as f64);
        start = end;
    }
    out
}

/// New successful latencies with `after_ms < at_ms <= upto_ms`, for the
/// sequential monitor (which wants each observation once).
pub fn new_ok_latencies(snap: &CohortSnapshot, after_ms: u64, upto_ms: u64) -> Vec<f64> {
    snap.samples
        .iter()
        .filter(|s| !s.error && s.at_ms > after_ms && s.at_ms <= upto_ms)
        .map(|s| s.latency_ms)
        .collect()
}

/// Data for one hypothesis kind from both cohorts.
pub enum Shape {
    /// Successful-request latencies.
    Latency,
    /// Error counts.
    Errors,
    /// Throughput windows.
    Throughput,
}

/// Builds the statistics engine's input for one hypothesis.
pub fn cohort_data(
    shape: Shape,
    control: &CohortSnapshot,
    experiment: &CohortSnapshot,
    span: Span,
) -> CohortData {
    match shape {
        Shape::Latency => CohortData::Samples {
            experiment: ok_latencies(experiment, span),
            control: ok_latencies(control, span),
        },
        Shape::Errors => CohortData::Counts {
            experiment: counts(experiment, span),
            control: counts(control, span),
        },
        Shape::Throughput => CohortData::AlignedWindows {
            experiment: throughput_windows(experiment, span),
            control: throughput_windows(control, span),
        },
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Log-spaced latency histogram bucket bounds (ms), 0.1 ms to ~100 s.
fn bucket_bounds() -> Vec<f64> {
    (0..=24).map(|i| 0.1 * 10f64.powf(i as f64 / 4.0)).collect()
}

/// The report's view of one cohort over the whole run. It covers every
/// request, failed ones included, so it agrees with the per-second charts
/// (the proxy's windows count all requests); hypotheses judge latency on
/// successful requests only.
pub fn cohort_series(cohort: Cohort, snap: &CohortSnapshot) -> CohortSeries {
    let mut lat: Vec<f64> = snap.samples.iter().map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let bounds = bucket_bounds();
    let mut hist: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
    for v in &lat {
        let i = bounds.iter().position(|b| v <= b).unwrap_or(bounds.len() - 1);
        hist[i].1 += 1;
    }
    // Trim empty buckets at both ends so plots use their width.
    let first = hist.iter().position(|b| b.1 > 0).unwrap_or(0);
    let last = hist.iter().rposition(|b| b.1 > 0).unwrap_or(0);
    let hist = if lat.is_empty() { Vec::new() } else { hist[first..=last].to_vec() };
    CohortSeries {
        cohort,
        total: snap.total,
        errors: snap.errors,
        latency_ms: Quantiles {
            p50: quantile(&lat, 0.5),
            p90: quantile(&lat, 0.9),
            p99: quantile(&lat, 0.99),
            max: lat.last().copied().unwrap_or(f64::NAN),
        },
        timeline: snap
            .windows
            .iter()
            .map(|w| WindowPoint {
                t_s: w.start_ms as f64 / 1000.0,
                requests: w.requests,
                errors: w.errors,
                p50_ms: if w.requests > 0 { w.p50_ms } else { f64::NAN },
                p99_ms: if w.requests > 0 { w.p99_ms } else { f64::NAN },
            })
            .collect(),
        latency_histogram: hist,
    }
}

/// Mean and variance of ln(latency) of successful samples, for sizing the
/// sequential monitor from the baseline.
pub fn log_moments(samples: &[Sample]) -> Option<(f64, f64, usize)> {
    let logs: Vec<f64> = samples
        .iter()
        .filter(|s| !s.error && s.latency_ms > 0.0)
        .map(|s| s.latency_ms.ln())
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, var, logs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Window;

    fn snap() -> CohortSnapshot {
        let mut s = CohortSnapshot::default();
        for sec in 0..30u64 {
            s.windows.push(Window {
                start_ms: sec * 1000,
                requests: 10,
                errors: u64::from(sec >= 20),
                p50_ms: 5.0,
                p99_ms: 9.0,
            });
            for i in 0..10 {
                s.samples.push(Sample {
                    at_ms: sec * 1000 + i * 100,
                    latency_ms: 1.0 + i as f64,
                    error: sec >= 20 && i == 0,
                    key: 0,
                });
            }
        }
        s.total = 300;
        s.errors = 10;
        s
    }

    #[test]
    fn counts_only_the_observation_window() {
        let s = snap();
        let c = counts(&s, Span { from_ms: 20_000, to_ms: 30_000 });
        assert_eq!((c.events, c.total), (10, 100));
        let c = counts(&s, Span { from_ms: 0, to_ms: 20_000 });
        assert_eq!((c.events, c.total), (0, 200));
    }

    #[test]
    fn latency_excludes_errors_and_other_windows() {
        let s = snap();
        let l = ok_latencies(&s, Span { from_ms: 20_000, to_ms: 21_000 });
        assert_eq!(l.len(), 9);
        assert!(!l.contains(&1.0));
    }

    #[test]
    fn throughput_uses_whole_ten_second_windows() {
        let s = snap();
        let t = throughput_windows(&s, Span { from_ms: 0, to_ms: 29_000 });
        assert_eq!(t, vec![10.0, 10.0]);
    }

    #[test]
    fn new_latencies_are_each_seen_once() {
        let s = snap();
        let a = new_ok_latencies(&s, 0, 5_000).len();
        let b = new_ok_latencies(&s, 5_000, 10_000).len();
        assert_eq!(a + b, new_ok_latencies(&s, 0, 10_000).len());
    }

    #[test]
    fn series_summarises_latency_and_trims_the_histogram() {
        let series = cohort_series(Cohort::Experiment, &snap());
        assert_eq!(series.total, 300);
        assert!(series.latency_ms.p50 >= 5.0 && series.latency_ms.p50 <= 6.0);
        assert!(series.latency_histogram.first().is_some_and(|b| b.1 > 0));
        assert!(series.latency_histogram.last().is_some_and(|b| b.1 > 0));
        assert_eq!(series.timeline.len(), 30);
    }
}
