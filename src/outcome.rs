//! Verdicts shared by the statistics engine, the runner and the reports.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::exit;

/// The verdict on one steady-state hypothesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The experiment cohort is demonstrably within tolerance.
    Accepted,
    /// The experiment cohort is demonstrably worse than the tolerance.
    Rejected,
    /// Not enough evidence either way (too few samples, no data, SRM).
    Inconclusive,
}

impl Verdict {
    /// Lowercase word used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a whole run ended; maps one-to-one onto exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Every hypothesis accepted.
    Accepted,
    /// At least one hypothesis rejected.
    Rejected,
    /// A safety condition stopped the run early; faults reverted.
    Aborted,
    /// Neither accepted nor rejected.
    Inconclusive,
    /// SIGINT/SIGTERM; faults reverted.
    Interrupted,
    /// Preflight or environment failure; nothing (more) injected.
    EnvironmentError,
}

impl RunOutcome {
    /// The process exit code for this outcome (see `exit`).
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Accepted => exit::OK,
            RunOutcome::Rejected => exit::REJECTED,
            RunOutcome::Aborted => exit::ABORTED,
            RunOutcome::Inconclusive => exit::INCONCLUSIVE,
            RunOutcome::Interrupted => exit::INTERRUPTED,
            RunOutcome::EnvironmentError => exit::ENVIRONMENT,
        }
    }

    /// Lowercase word used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Accepted => "accepted",
            RunOutcome::Rejected => "rejected",
            RunOutcome::Aborted => "aborted",
            RunOutcome::Inconclusive => "inconclusive",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::EnvironmentError => "environment-error",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
