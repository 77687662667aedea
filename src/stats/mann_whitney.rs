//! Mann-Whitney U with average ranks for ties, tie-corrected variance,
//! continuity correction and a normal tail computed through `sf` (scipy's
//! `mannwhitneyu(method="asymptotic")`). O(n log n): each sample is sorted
//! on its own and the two are merged, which also lets the Hodges-Lehmann
//! style interval re-rank a shifted sample in O(n).

use super::special::normal_sf;
use super::{check_finite, Alternative, StatsError, TestResult};

/// Rank statistics of one comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankSums {
    /// U of the experiment sample (R₁ − n₁(n₁+1)/2).
    pub u1: f64,
    /// Σ (t³ − t) over tie groups.
    pub tie_term: f64,
    pub n1: f64,
    pub n2: f64,
}

impl RankSums {
    /// σ of U under H0 with the tie correction.
    pub fn sigma(&self) -> f64 {
        let n = self.n1 + self.n2;
        let inner = (n + 1.0) - self.tie_term / (n * (n - 1.0));
        (self.n1 * self.n2 / 12.0 * inner).max(0.0).sqrt()
    }

    /// Continuity-corrected p-value for the given alternative.
    pub fn p_value(&self, alt: Alternative) -> f64 {
        let u2 = self.n1 * self.n2 - self.u1;
        let (u, factor) = match alt {
            Alternative::Greater => (self.u1, 1.0),
            Alternative::Less => (u2, 1.0),
            Alternative::TwoSided => (self.u1.max(u2), 2.0),
        };
        let mu = self.n1 * self.n2 / 2.0;
        let sigma = self.sigma();
        if sigma == 0.0 {
            return 1.0;
        }
        let z = (u - mu - 0.5) / sigma;
        (factor * normal_sf(z)).clamp(0.0, 1.0)
    }

    /// Standardised statistic without continuity correction (0 at the
    /// centre), used to locate the shift estimate.
    pub fn z_plain(&self) -> f64 {
        let sigma = self.sigma();
        if sigma == 0.0 {
            return 0.0;
        }
        (self.u1 - self.n1 * self.n2 / 2.0) / sigma
    }
}

/// Sorts a copy of the sample (total order; inputs are already finite).
pub fn sorted(x: &[f64]) -> Vec<f64> {
    let mut v = x.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// Rank sums of sorted `a` (experiment) against sorted `b` (control) with
/// every control value multiplied by `scale` > 0 (1 for the plain test;
/// the product is formed exactly as `v * scale`, so `scale = 1.1` ranks the
/// same values as a control file rescaled by 1.1).
pub fn rank_sums_sorted(a: &[f64], b: &[f64], scale: f64) -> RankSums {
    let (n1, n2) = (a.len(), b.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut rank_sum_a = 0.0f64;
    let mut tie_term = 0.0f64;
    let mut next_rank = 1.0f64; // rank of the next value in the pooled order
    while i < n1 || j < n2 {
        let va = a.get(i).copied().unwrap_or(f64::INFINITY);
        let vb = b.get(j).map(|v| v * scale).unwrap_or(f64::INFINITY);
        let v = if i < n1 && (j >= n2 || va <= vb) { va } else { vb };
        // Count the whole tie group at value v in both samples.
        let mut ca = 0usize;
        while i + ca < n1 && a[i + ca] == v {
            ca += 1;
        }
        let mut cb = 0usize;
        while j + cb < n2 && b[j + cb] * scale == v {
            cb += 1;
        }
        let t = (ca + cb) as f64;
        let avg_rank = next_rank + (t - 1.0) / 2.0;
        rank_sum_a += ca as f64 * avg_rank;
        if t > 1.0 {
            tie_term += t * t * t - t;
        }
        next_rank += t;
        i += ca;
        j += cb;
    }
    let n1f = n1 as f64;
    RankSums {
        u1: rank_sum_a - n1f * (n1f + 1.0) / 2.0,
        tie_term,
        n1: n1f,
        n2: n2 as f64,
    }
}

/// Mann-Whitney U test of `experiment` against `control`. `Greater` means
/// the experiment values tend to be larger. The statistic is U of the
/// experiment sample, as scipy reports it.
pub fn mann_whitney_u(
    experiment: &[f64],
    control: &[f64],
    alt: Alternative,
) -> Result<TestResult, StatsError> {
    check_finite("experiment", experiment)?;
    check_finite("control", control)?;
    if experiment.is_empty() || control.is_empty() {
        return Err(StatsError::Empty { what: "Mann-Whitney U needs both samples" });
    }
    let a = sorted(experiment);
    let b = sorted(control);
    let r = rank_sums_sorted(&a, &b, 1.0);
    Ok(TestResult { statistic: r.u1, p_value: r.p_value(alt), df: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn matches_scipy_on_a_small_example_with_ties() {
        // scipy.stats.mannwhitneyu([1,2,2,3,5],[2,3,4,4,6,7], method="asymptotic")
        let e = [1.0, 2.0, 2.0, 3.0, 5.0];
        let c = [2.0, 3.0, 4.0, 4.0, 6.0, 7.0];
        let two = mann_whitney_u(&e, &c, Alternative::TwoSided).unwrap();
        assert_eq!(two.statistic, 6.5);
        let less = mann_whitney_u(&e, &c, Alternative::Less).unwrap();
        let greater = mann_whitney_u(&e, &c, Alternative::Greater).unwrap();
        assert!(less.p_value < greater.p_value);
        assert!(rel(two.p_value, 2.0 * less.p_value) < 1e-12);
    }

    #[test]
    fn all_equal_samples_give_p_one() {
        let e = [3.0; 10];
        let c = [3.0; 12];
        for alt in [Alternative::TwoSided, Alternative::Greater, Alternative::Less] {
            assert_eq!(mann_whitney_u(&e, &c, alt).unwrap().p_value, 1.0);
        }
    }

    #[test]
    fn separated_large_samples_keep_a_tiny_nonzero_p_value() {
        let e: Vec<f64> = (0..500).map(|i| 1000.0 + i as f64).collect();
        let c: Vec<f64> = (0..500).map(|i| i as f64).collect();
        let p = mann_whitney_u(&e, &c, Alternative::Greater).unwrap().p_value;
        assert!(p > 0.0 && p < 1e-50, "p = {p}");
    }

    #[test]
    fn scaled_rank_sums_equal_ranking_a_scaled_copy() {
        let a = sorted(&[1.0, 4.0, 4.5, 9.0, 11.0]);
        let b = sorted(&[0.5, 2.0, 3.0, 7.0, 8.0, 10.0]);
        let scaled: Vec<f64> = b.iter().map(|v| v * 1.5).collect();
        assert_eq!(rank_sums_sorted(&a, &b, 1.5), rank_sums_sorted(&a, &scaled, 1.0));
    }

    #[test]
    fn rejects_nan_input() {
        assert!(mann_whitney_u(&[1.0, f64::NAN], &[1.0], Alternative::Less).is_err());
    }
}
