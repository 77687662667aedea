//! The two measured cohorts of an experiment. Traffic outside both is
//! "untouched" and is represented as `Option<Cohort>::None` by callers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Name of the header that carries the cohort upstream and back (FIT-style).
pub const COHORT_HEADER: &str = "x-chaos-cohort";
/// Name of the header on every response a fault made or altered.
pub const FAULT_HEADER: &str = "x-chaos-fault";

/// A measured slice of traffic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum Cohort {
    /// Same traffic share as the experiment cohort, never faulted.
    Control,
    /// Receives the faults.
    Experiment,
}

impl Cohort {
    /// Both cohorts, control first.
    pub const ALL: [Cohort; 2] = [Cohort::Control, Cohort::Experiment];

    /// The header / label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Control => "control",
            Cohort::Experiment => "experiment",
        }
    }

    /// Parses a header / label value (exact, lowercase).
    pub fn parse(s: &str) -> Option<Cohort> {
        match s {
            "control" => Some(Cohort::Control),
            "experiment" => Some(Cohort::Experiment),
            _ => None,
        }
    }
}

impl fmt::Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_cohort_through_its_header_value() {
        for c in Cohort::ALL {
            assert_eq!(Cohort::parse(c.as_str()), Some(c));
        }
        assert_eq!(Cohort::parse("Experiment"), None);
    }
}
