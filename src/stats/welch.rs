//! Welch's unequal-variance t-test (scipy `ttest_ind(equal_var=False)`),
//! used for throughput and generic per-window samples.

use super::special::student_t_sf;
use super::{check_finite, Alternative, StatsError, TestResult};

/// Mean and unbiased variance (two-pass, for precision).
pub fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let ss: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    (mean, if x.len() > 1 { ss / (n - 1.0) } else { f64::NAN })
}

/// Welch's t statistic and degrees of freedom from summary statistics.
pub fn welch_from_moments(
    (m1, v1, n1): (f64, f64, f64),
    (m2, v2, n2): (f64, f64, f64),
) -> (f64, f64) {
    let a1 = v1 / n1;
    let a2 = v2 / n2;
    let t = (m1 - m2) / (a1 + a2).sqrt();
    let df = (a1 + a2) * (a1 + a2) / (a1 * a1 / (n1 - 1.0) + a2 * a2 / (n2 - 1.0));
    (t, df)
}

/// p-value of a t statistic for the alternative.
pub fn t_p_value(t: f64, df: f64, alt: Alternative) -> f64 {
    match alt {
        Alternative::Greater => student_t_sf(t, df),
        Alternative::Less => student_t_sf(-t, df),
        Alternative::TwoSided => (2.0 * student_t_sf(t.abs(), df)).min(1.0),
    }
}

/// Welch's t-test; `Greater` means the experiment mean is larger. Both
/// samples need at least two values and not both zero variance.
pub fn welch_t(
    experiment: &[f64],
    control: &[f64],
    alt: Alternative,
) -> Result<TestResult, StatsError> {
    check_finite("experiment", experiment)?;
    check_finite("control", control)?;
    if experiment.len() < 2 || control.len() < 2 {
        return Err(StatsError::TooFew {
            what: "Welch's t-test needs at least 2 values per sample",
        });
    }
    let (m1, v1) = mean_var(experiment);
    let (m2, v2) = mean_var(control);
    if v1 == 0.0 && v2 == 0.0 {
        return Err(StatsError::Degenerate {
            what: "Welch's t-test: both samples have zero variance",
        });
    }
    let (t, df) = welch_from_moments(
        (m1, v1, experiment.len() as f64),
        (m2, v2, control.len() as f64),
    );
    Ok(TestResult { statistic: t, p_value: t_p_value(t, df, alt), df: Some(df) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sided_is_twice_the_smaller_tail() {
        let e = [10.0, 12.0, 11.5, 13.0, 12.2];
        let c = [9.0, 9.5, 10.2, 10.0, 9.8, 10.1];
        let two = welch_t(&e, &c, Alternative::TwoSided).unwrap();
        let less = welch_t(&e, &c, Alternative::Less).unwrap();
        let greater = welch_t(&e, &c, Alternative::Greater).unwrap();
        assert!(two.statistic > 0.0);
        assert!((two.p_value - 2.0 * greater.p_value).abs() < 1e-15);
        assert!((less.p_value + greater.p_value - 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_samples_are_refused_not_divided_by_zero() {
        assert!(welch_t(&[1.0, 1.0], &[1.0, 1.0], Alternative::TwoSided).is_err());
        assert!(welch_t(&[1.0], &[1.0, 2.0], Alternative::TwoSided).is_err());
    }
}
