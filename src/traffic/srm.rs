//! Sample-ratio mismatch: a chi-square goodness-of-fit test of the observed
//! cohort counts against the configured split. A mismatch means the
//! assignment or the recording is broken, so no verdict should be trusted.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

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

#[cfg(test)]
mod tests {
    use super::*;

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
