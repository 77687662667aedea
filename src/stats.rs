//! The statistical verdict engine (STATISTICS.md): two-sample tests,
//! intervals, Holm, per-hypothesis and per-experiment verdicts, and the
//! sequential abort monitor. Pure functions over samples and counts: no
//! I/O, no clocks; randomness only from an explicit seed.
//!
//! Conventions: `Alternative::Greater` always means "the experiment value
//! is larger"; a hypothesis reads "θ ≤ m" with θ the effect in the worse
//! direction and m the tolerance.

pub mod cluster;
pub mod holm;
pub mod mann_whitney;
pub mod proportions;
pub mod quantile;
pub mod sequential;
pub mod special;
pub mod verdict;
pub mod welch;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod simulation;

pub use crate::outcome::Verdict;
pub use cluster::{ClusteredMean, Clustering, KeyData, KeySums};
pub use holm::holm_adjust;
pub use mann_whitney::mann_whitney_u;
pub use proportions::{
    fisher_exact, newcombe_interval, newcombe_p_value, two_proportion_z, Counts, Interval,
};
pub use quantile::{bootstrap_log_quantile_ratio, harrell_davis};
pub use sequential::{AbortDecision, AbortMonitor};
pub use verdict::{
    judge, judge_experiment, judge_keyed, CohortData, HypothesisSpec, HypothesisVerdict,
    MetricKind,
};
pub use welch::welch_t;

use serde::Serialize;

/// Direction of a test. `Greater`: the experiment is larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    TwoSided,
    Greater,
    Less,
}

impl Alternative {
    pub fn as_str(self) -> &'static str {
        match self {
            Alternative::TwoSided => "two-sided",
            Alternative::Greater => "greater",
            Alternative::Less => "less",
        }
    }
}

/// Outcome of a two-sample test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TestResult {
    /// U of the experiment (Mann-Whitney), t (Welch), z (pooled z) or the
    /// sample odds ratio (Fisher; may be +∞ or NaN).
    pub statistic: f64,
    pub p_value: f64,
    /// Degrees of freedom (Welch only).
    pub df: Option<f64>,
}

/// Invalid input to a test. Verdicts never return this: they turn data
/// problems into INCONCLUSIVE with a reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("{what}: got an empty sample")]
    Empty { what: &'static str },
    #[error("{what}")]
    TooFew { what: &'static str },
    #[error("{what}")]
    Degenerate { what: &'static str },
    #[error(
        "the {cohort} sample holds a non-finite value ({value}) at position {index}"
    )]
    NotFinite { cohort: &'static str, index: usize, value: f64 },
    #[error("the {cohort} cohort has a total of 0 requests")]
    ZeroTotal { cohort: &'static str },
    #[error("the {cohort} cohort has {events} events but only {total} requests")]
    EventsExceedTotal { cohort: &'static str, events: u64, total: u64 },
    #[error("confidence level {value} must be strictly between 0 and 1")]
    BadLevel { value: f64 },
}

pub(crate) fn check_finite(cohort: &'static str, x: &[f64]) -> Result<(), StatsError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(StatsError::NotFinite { cohort, index, value: x[index] }),
        None => Ok(()),
    }
}
