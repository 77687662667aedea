//! Sample-ratio mismatch: a chi-square goodness-of-fit test of the observed
//! cohort counts against the configured split. A mismatch means the
//! assignment or the recording is broken, so no verdict should be trusted.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::cohort::Cohort;
use crate::metrics::{KeySketch, Recorder};

/// p-value below which the split is declared broken (the usual SRM bar:
/// strict, because a false alarm throws away a whole experiment).
pub const SRM_ALPHA: f64 = 0.001;

/// Result of [`sample_ratio_mismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SrmResult {
    pub chi2: f64,
    /// Degrees of freedom (categories with a non-zero expected share, minus 1).
    pub df: u32,
    pub p_value: f64,
    /// `p_value < SRM_ALPHA`.
    pub mismatch: bool,
}

/// Tests the observed control / experiment / untouched counts against the
/// configured fractions. With no traffic at all there is no evidence of a
/// mismatch (p = 1). A non-zero count in a category configured at 0% is a
/// mismatch outright.
pub fn sample_ratio_mismatch(
    observed_control: u64,
    observed_experiment: u64,
    observed_untouched: u64,
    control_fraction: f64,
    experiment_fraction: f64,
) -> SrmResult {
    let observed = [observed_control, observed_experiment, observed_untouched];
    let untouched_fraction = (1.0 - control_fraction - experiment_fraction).max(0.0);
    let expected_share = [control_fraction, experiment_fraction, untouched_fraction];
    let n: u64 = observed.iter().sum();
    let none = SrmResult { chi2: 0.0, df: 0, p_value: 1.0, mismatch: false };
    if n == 0 {
        return none;
    }
    let mut chi2 = 0.0;
    let mut categories = 0u32;
    for (o, share) in observed.iter().zip(expected_share) {
        if share <= 0.0 {
            if *o > 0 {
                return SrmResult {
                    chi2: f64::INFINITY,
                    df: 0,
                    p_value: 0.0,
                    mismatch: true,
                };
            }
            continue;
        }
        categories += 1;
        let e = share * n as f64;
        let d = *o as f64 - e;
        chi2 += d * d / e;
    }
    if categories < 2 {
        return none;
    }
    let df = categories - 1;
    let p_value = ChiSquared::new(f64::from(df)).map(|d| d.sf(chi2)).unwrap_or(1.0);
    SrmResult { chi2, df, p_value, mismatch: p_value < SRM_ALPHA }
}

/// The check on the unit that is randomised: distinct keys. Each cohort
/// owns a slice of [0, 1) (experiment first, then control, then untouched,
/// as in assignment); the keys seen occupy buckets of the sketch, and under
/// a faithful split the occupied buckets are spread over the slices in
/// proportion to their sizes. Requests of one key are correlated, so this
/// is the check whose false-alarm rate is its alpha whatever the traffic
/// per key (see docs/statistics.md, "Sample-ratio mismatch").
pub fn key_sample_ratio_mismatch(
    keys: &KeySketch,
    control_fraction: f64,
    experiment_fraction: f64,
) -> SrmResult {
    let split = experiment_fraction + control_fraction;
    let e = keys.occupancy(0.0, experiment_fraction);
    let c = keys.occupancy(experiment_fraction, split);
    let u = keys.occupancy(split, 1.0);
    let buckets = (e.buckets + c.buckets + u.buckets).max(1) as f64;
    sample_ratio_mismatch(
        c.occupied,
        e.occupied,
        u.occupied,
        c.buckets as f64 / buckets,
        e.buckets as f64 / buckets,
    )
}

/// Both checks of one recorder at one moment: by distinct keys (what gates
/// verdicts) and by requests (for comparison: off while keys are fine means
/// a few keys carry much of the traffic).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SplitChecks {
    pub by_keys: SrmResult,
    pub by_requests: SrmResult,
}

pub fn split_checks(
    recorder: &Recorder,
    control_fraction: f64,
    experiment_fraction: f64,
) -> SplitChecks {
    SplitChecks {
        by_keys: key_sample_ratio_mismatch(
            recorder.keys(),
            control_fraction,
            experiment_fraction,
        ),
        by_requests: sample_ratio_mismatch(
            recorder.totals(Cohort::Control).0,
            recorder.totals(Cohort::Experiment).0,
            recorder.untouched_total(),
            control_fraction,
            experiment_fraction,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::assign::{cohort_at, mix, unit};

    /// `n` distinct keys, each sent `weight(i)` times; returns the key
    /// sketch and the request counts (control, experiment, untouched).
    fn traffic(
        n: u64,
        seed: u64,
        (c, e): (f64, f64),
        weight: impl Fn(u64) -> u64,
        keep: impl Fn(f64) -> bool,
    ) -> (KeySketch, [u64; 3]) {
        let keys = KeySketch::new();
        let mut requests = [0u64; 3];
        for i in 0..n {
            let pos = unit(mix(seed ^ mix(i)));
            if !keep(pos) {
                continue;
            }
            keys.note(pos);
            let slot = match cohort_at(pos, e, c) {
                Some(Cohort::Control) => 0,
                Some(Cohort::Experiment) => 1,
                None => 2,
            };
            requests[slot] += weight(i);
        }
        (keys, requests)
    }

    #[test]
    fn heavy_keys_fool_the_request_count_but_not_the_key_count() {
        // 50 faithful 50/50 splits of 2,000 keys with a request volume per
        // key of 1..=1000 (heavy-tailed users): the request counts are off
        // the configured split by chance alone in most of them (their
        // variance is ~26x the binomial's), the key counts in none.
        let weight = |i: u64| 1 + mix(i ^ 0xabc) % 1000;
        let (mut by_requests, mut by_keys) = (0, 0);
        for seed in 0..50u64 {
            let (keys, [c, e, u]) =
                traffic(2_000, mix(seed), (0.5, 0.5), weight, |_| true);
            by_requests += usize::from(sample_ratio_mismatch(c, e, u, 0.5, 0.5).mismatch);
            by_keys += usize::from(key_sample_ratio_mismatch(&keys, 0.5, 0.5).mismatch);
        }
        assert!(by_requests >= 35, "request-level flagged only {by_requests} of 50");
        assert!(by_keys <= 1, "key-level flagged {by_keys} of 50");
    }

    #[test]
    fn keys_missing_from_one_cohort_are_flagged() {
        // A fifth of the experiment cohort's keys never recorded, as a
        // cohort-dependent crash before recording would do.
        let lost = |pos: f64| !(pos < 0.05 && mix(pos.to_bits()).is_multiple_of(5));
        let (keys, _) = traffic(20_000, 11, (0.05, 0.05), |_| 1, lost);
        let r = key_sample_ratio_mismatch(&keys, 0.05, 0.05);
        assert!(r.mismatch, "{r:?}");
        let (keys, _) = traffic(20_000, 11, (0.05, 0.05), |_| 1, |_| true);
        assert!(!key_sample_ratio_mismatch(&keys, 0.05, 0.05).mismatch);
    }

    #[test]
    fn the_key_check_false_alarms_at_about_its_nominal_rate() {
        // 400 faithful A/A splits of 3,000 keys with a heavy-tailed request
        // volume: p < 0.05 in at most 5% + 3 sigma of them.
        let weight = |i: u64| 1 + mix(i ^ 0x5eed) % 300;
        let mut below = 0;
        for seed in 0..400u64 {
            let (keys, _) = traffic(3_000, mix(seed), (0.25, 0.25), weight, |_| true);
            if key_sample_ratio_mismatch(&keys, 0.25, 0.25).p_value < 0.05 {
                below += 1;
            }
        }
        assert!(below <= 33, "{below} of 400 below 0.05");
        assert!(below >= 5, "{below} of 400: the test lost all power");
    }

    #[test]
    fn a_faithful_split_passes() {
        let r = sample_ratio_mismatch(1010, 990, 18000, 0.05, 0.05);
        assert!(!r.mismatch, "{r:?}");
        assert_eq!(r.df, 2);
        assert!(r.p_value > 0.1);
    }

    #[test]
    fn a_skewed_split_is_flagged() {
        // 5%/5% configured, experiment got 4.4%: small but real at n=20000.
        let r = sample_ratio_mismatch(1000, 880, 18120, 0.05, 0.05);
        assert!(r.mismatch, "{r:?}");
        assert!(r.p_value < 0.001);
    }

    #[test]
    fn matches_a_textbook_chi_square_value() {
        // Two categories 50/50, observed 60/40: chi2 = 4, p = 0.0455.
        let r = sample_ratio_mismatch(60, 40, 0, 0.5, 0.5);
        assert!((r.chi2 - 4.0).abs() < 1e-12);
        assert!((r.p_value - 0.0455).abs() < 1e-4, "{r:?}");
    }

    #[test]
    fn traffic_in_a_zero_share_cohort_is_a_mismatch_and_no_traffic_is_not() {
        assert!(sample_ratio_mismatch(0, 5, 100, 0.1, 0.0).mismatch);
        assert!(!sample_ratio_mismatch(0, 0, 0, 0.05, 0.05).mismatch);
    }
}
