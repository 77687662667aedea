//! Tests and intervals on two error rates: Fisher's exact test (scipy's
//! two-sided rule), the pooled two-proportion z-test, Wilson score bounds,
//! Newcombe's hybrid-score interval for p_E − p_C (method 10) and the Katz
//! log relative-risk interval.

use super::special::{ln_gamma, normal_cdf, normal_quantile, normal_sf};
use super::{Alternative, StatsError, TestResult};

/// Events out of a total (e.g. errors out of requests) for one cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    pub events: u64,
    pub total: u64,
}

impl Counts {
    pub fn new(events: u64, total: u64) -> Self {
        Counts { events, total }
    }

    /// Observed proportion (NaN for an empty cohort).
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.total as f64
    }

    pub(crate) fn check(&self, cohort: &'static str) -> Result<(), StatsError> {
        if self.total == 0 {
            return Err(StatsError::ZeroTotal { cohort });
        }
        if self.events > self.total {
            return Err(StatsError::EventsExceedTotal {
                cohort,
                events: self.events,
                total: self.total,
            });
        }
        Ok(())
    }
}

/// ln C(n, k).
fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Hypergeometric law of the top-left cell given the margins.
struct Hypergeometric {
    lo: u64,
    hi: u64,
    /// first column total (successes in the population)
    col: u64,
    /// population size
    total: u64,
    /// first row total (draws)
    row: u64,
}

impl Hypergeometric {
    fn ln_pmf(&self, x: u64) -> f64 {
        ln_choose(self.col, x) + ln_choose(self.total - self.col, self.row - x)
            - ln_choose(self.total, self.row)
    }

    fn pmf(&self, x: u64) -> f64 {
        self.ln_pmf(x).exp()
    }

    /// Σ pmf over lo..=x (sums from the small end up for precision).
    fn cdf(&self, x: u64) -> f64 {
        if x < self.lo {
            return 0.0;
        }
        let x = x.min(self.hi);
        (self.lo..=x).rev().map(|k| self.pmf(k)).sum::<f64>().min(1.0)
    }

    /// Σ pmf over x..=hi.
    fn sf_from(&self, x: u64) -> f64 {
        if x > self.hi {
            return 0.0;
        }
        (x.max(self.lo)..=self.hi).map(|k| self.pmf(k)).sum::<f64>().min(1.0)
    }
}

/// Fisher's exact test on [[E_err, E_ok], [C_err, C_ok]]. `Greater` means
/// the experiment's odds of an event are larger. The statistic is the
/// sample odds ratio (E_err·C_ok)/(E_ok·C_err), which may be +∞; NaN when
/// a row or column is empty (scipy then returns p = 1).
pub fn fisher_exact(
    experiment: Counts,
    control: Counts,
    alt: Alternative,
) -> Result<TestResult, StatsError> {
    experiment.check("experiment")?;
    control.check("control")?;
    let a = experiment.events;
    let b = experiment.total - experiment.events;
    let c = control.events;
    let d = control.total - control.events;
    if a + c == 0 || b + d == 0 {
        return Ok(TestResult { statistic: f64::NAN, p_value: 1.0, df: None });
    }
    let odds = if b * c == 0 {
        f64::INFINITY
    } else {
        (a as f64 * d as f64) / (b as f64 * c as f64)
    };
    let col = a + c;
    let row = a + b;
    let total = a + b + c + d;
    let h = Hypergeometric {
        lo: (row + col).saturating_sub(total),
        hi: row.min(col),
        col,
        total,
        row,
    };
    let p = match alt {
        Alternative::Less => h.cdf(a),
        Alternative::Greater => h.sf_from(a),
        Alternative::TwoSided => {
            // scipy: sum every table whose pmf ≤ pmf(observed)·(1+1e-14);
            // the pmf is unimodal so walk both tails from the ends.
            let p_obs = h.pmf(a);
            let mode = ((row + 1) as f64 * (col + 1) as f64 / (total + 2) as f64) as u64;
            let mode = mode.clamp(h.lo, h.hi);
            let p_mode = h.pmf(mode);
            if (p_obs - p_mode).abs() / p_obs.max(p_mode) <= 1e-14 {
                1.0
            } else {
                let gamma = 1.0 + 1e-14;
                let mut sum = 0.0;
                let mut k = h.lo;
                let mut small_side = Vec::new();
                while k <= h.hi {
                    let pk = h.pmf(k);
                    if pk <= p_obs * gamma {
                        small_side.push(pk);
                    }
                    k += 1;
                }
                // Add smallest first.
                small_side.sort_unstable_by(f64::total_cmp);
                for v in small_side {
                    sum += v;
                }
                sum.min(1.0)
            }
        }
    };
    Ok(TestResult { statistic: odds, p_value: p, df: None })
}

/// Pooled two-proportion z-test (valid for a zero margin only).
/// `Greater` means the experiment rate is larger.
pub fn two_proportion_z(
    experiment: Counts,
    control: Counts,
    alt: Alternative,
) -> Result<TestResult, StatsError> {
    experiment.check("experiment")?;
    control.check("control")?;
    let (x1, n1) = (experiment.events as f64, experiment.total as f64);
    let (x2, n2) = (control.events as f64, control.total as f64);
    let pbar = (x1 + x2) / (n1 + n2);
    let se = (pbar * (1.0 - pbar) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        // Both rates are 0 or both are 1: no evidence of a difference.
        return Ok(TestResult { statistic: 0.0, p_value: 1.0, df: None });
    }
    let z = (x1 / n1 - x2 / n2) / se;
    let p = match alt {
        Alternative::Greater => normal_sf(z),
        Alternative::Less => normal_cdf(z),
        Alternative::TwoSided => (2.0 * normal_sf(z.abs())).min(1.0),
    };
    Ok(TestResult { statistic: z, p_value: p, df: None })
}

/// Wilson score bounds (l, u) for one proportion at normal quantile `z`.
pub fn wilson(c: Counts, z: f64) -> (f64, f64) {
    let n = c.total as f64;
    let p = c.rate();
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (((centre - half) / denom).max(0.0), ((centre + half) / denom).min(1.0))
}

/// An interval for a difference or a ratio.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Newcombe's hybrid-score interval for p_E − p_C, using normal quantile
/// `z` for each bound (z = z_{1−α/2} for a two-sided 1−α interval, z_{1−α}
/// for the one-sided bounds the verdict uses).
pub fn newcombe_interval_z(experiment: Counts, control: Counts, z: f64) -> Interval {
    let (pe, pc) = (experiment.rate(), control.rate());
    let (le, ue) = wilson(experiment, z);
    let (lc, uc) = wilson(control, z);
    let d = pe - pc;
    let low = d - ((pe - le).powi(2) + (uc - pc).powi(2)).sqrt();
    let high = d + ((ue - pe).powi(2) + (pc - lc).powi(2)).sqrt();
    Interval { estimate: d, low, high }
}

/// Newcombe interval at a confidence level: two-sided at `confidence`, or a
/// one-sided bound (the other end is ±1) for `Greater`/`Less`.
pub fn newcombe_interval(
    experiment: Counts,
    control: Counts,
    confidence: f64,
    alt: Alternative,
) -> Result<Interval, StatsError> {
    experiment.check("experiment")?;
    control.check("control")?;
    check_confidence(confidence)?;
    Ok(match alt {
        Alternative::TwoSided => newcombe_interval_z(
            experiment,
            control,
            normal_quantile(0.5 + confidence / 2.0),
        ),
        Alternative::Greater => {
            let i = newcombe_interval_z(experiment, control, normal_quantile(confidence));
            Interval { high: 1.0, ..i }
        }
        Alternative::Less => {
            let i = newcombe_interval_z(experiment, control, normal_quantile(confidence));
            Interval { low: -1.0, ..i }
        }
    })
}

/// p-value of "p_E − p_C ≤ margin" (Greater) or "≥ margin" (Less) obtained
/// by inverting the Newcombe interval: the smallest one-sided level whose
/// bound excludes the margin. 1 when the estimate is on the null side.
pub fn newcombe_p_value(
    experiment: Counts,
    control: Counts,
    margin: f64,
    alt: Alternative,
) -> f64 {
    let d = experiment.rate() - control.rate();
    let excluded = |z: f64| {
        let i = newcombe_interval_z(experiment, control, z);
        match alt {
            Alternative::Greater => i.low > margin,
            Alternative::Less => i.high < margin,
            Alternative::TwoSided => i.low > margin || i.high < margin,
        }
    };
    let one_sided = |alt_side: Alternative| match alt_side {
        Alternative::Greater if d <= margin => 1.0,
        Alternative::Less if d >= margin => 1.0,
        _ => {
            // Bounds move monotonically outwards with z: bisect on z.
            let (mut lo, mut hi) = (0.0f64, 40.0f64);
            if excluded(hi) {
                return normal_sf(hi);
            }
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if excluded(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            normal_sf(0.5 * (lo + hi))
        }
    };
    match alt {
        Alternative::TwoSided => {
            let p = if d > margin {
                one_sided(Alternative::Greater)
            } else {
                one_sided(Alternative::Less)
            };
            (2.0 * p).min(1.0)
        }
        side => one_sided(side),
    }
}

/// Katz log relative-risk interval: estimate and bounds on ln(p_E/p_C) at
/// normal quantile z. Needs events in both arms (≥ 5 for accuracy).
pub fn katz_log_rr(
    experiment: Counts,
    control: Counts,
    z: f64,
) -> Option<(Interval, f64)> {
    if experiment.events == 0 || control.events == 0 {
        return None;
    }
    let (xe, ne) = (experiment.events as f64, experiment.total as f64);
    let (xc, nc) = (control.events as f64, control.total as f64);
    let est = (xe / ne).ln() - (xc / nc).ln();
    let se = (1.0 / xe - 1.0 / ne + 1.0 / xc - 1.0 / nc).max(0.0).sqrt();
    Some((Interval { estimate: est, low: est - z * se, high: est + z * se }, se))
}

pub(crate) fn check_confidence(confidence: f64) -> Result<(), StatsError> {
    if confidence.is_finite() && confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(StatsError::BadLevel { value: confidence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn fisher_matches_scipy_on_the_tea_tasting_table() {
        // scipy.stats.fisher_exact([[3,1],[1,3]]) -> (9.0, 0.48571428571428565)
        let e = Counts::new(3, 4);
        let c = Counts::new(1, 4);
        let r = fisher_exact(e, c, Alternative::TwoSided).unwrap();
        assert_eq!(r.statistic, 9.0);
        assert!(rel(r.p_value, 0.48571428571428565) < 1e-12);
        let g = fisher_exact(e, c, Alternative::Greater).unwrap();
        assert!(rel(g.p_value, 0.24285714285714283) < 1e-12);
    }

    #[test]
    fn fisher_reports_an_infinite_odds_ratio_when_control_has_no_events() {
        let r =
            fisher_exact(Counts::new(5, 100), Counts::new(0, 100), Alternative::Greater)
                .unwrap();
        assert!(r.statistic.is_infinite());
        assert!(r.p_value < 0.05);
    }

    #[test]
    fn refuses_zero_totals_and_more_events_than_requests() {
        assert!(fisher_exact(Counts::new(0, 0), Counts::new(1, 2), Alternative::Less)
            .is_err());
        assert!(two_proportion_z(
            Counts::new(3, 2),
            Counts::new(1, 2),
            Alternative::Less
        )
        .is_err());
    }

    #[test]
    fn newcombe_interval_contains_the_estimate_and_behaves_at_zero() {
        let i = newcombe_interval(
            Counts::new(0, 1000),
            Counts::new(0, 1000),
            0.95,
            Alternative::TwoSided,
        )
        .unwrap();
        assert_eq!(i.estimate, 0.0);
        assert!(i.low < 0.0 && i.high > 0.0 && i.high < 0.01);
    }

    #[test]
    fn inverted_newcombe_p_value_is_alpha_exactly_at_the_bound() {
        let (e, c) = (Counts::new(40, 1000), Counts::new(20, 1000));
        let z = normal_quantile(0.95);
        let i = newcombe_interval_z(e, c, z);
        let p = newcombe_p_value(e, c, i.low, Alternative::Greater);
        assert!((p - 0.05).abs() < 1e-9, "p = {p}");
    }
}
