//! The guardrail watch the runner polls during observation: evaluates every
//! `[[guardrail]]` and says when to abort — on a breach, or when the
//! guardrails cannot be evaluated several times in a row (a guardrail that
//! cannot be seen is not guarding anything).

use std::fmt;

use super::{guardrail_breached, PromConfig, PromError};
use crate::experiment::Guardrail;

/// Consecutive failed checks after which the run aborts. One or two
/// failures (a slow scrape, a Prometheus restart) are tolerated.
pub const MAX_BLIND_CHECKS: u32 = 3;

/// Why the guardrail watch wants the run stopped.
#[derive(Debug)]
pub enum GuardrailAbort {
    /// A guardrail's value is above its threshold.
    Breached { name: String, query: String, value: f64, above: f64 },
    /// Prometheus could not answer [`MAX_BLIND_CHECKS`] checks in a row.
    Blind { checks: u32, last_error: PromError },
}

impl GuardrailAbort {
    /// The breach value, if this is a breach.
    pub fn value(&self) -> Option<f64> {
        match self {
            GuardrailAbort::Breached { value, .. } => Some(*value),
            GuardrailAbort::Blind { .. } => None,
        }
    }
}

impl fmt::Display for GuardrailAbort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardrailAbort::Breached { name, query, value, above } => {
                write!(
                    f,
                    "guardrail {name:?} breached: {value} > {above} (query: {query})"
                )
            }
            GuardrailAbort::Blind { checks, last_error } => write!(
                f,
                "guardrails could not be evaluated {checks} times in a row; stopping \
                 rather than running unguarded: {last_error}"
            ),
        }
    }
}

/// Polled once per tick by the runner while faults are active.
#[derive(Debug)]
pub struct GuardrailWatch {
    cfg: PromConfig,
    guardrails: Vec<Guardrail>,
    failures: u32,
}

impl GuardrailWatch {
    /// A watch over `guardrails` (may be empty: then it never aborts).
    pub fn new(cfg: PromConfig, guardrails: Vec<Guardrail>) -> Self {
        GuardrailWatch { cfg, guardrails, failures: 0 }
    }

    /// Evaluates every guardrail once (each bounded by the configured
    /// timeout). `Some` means: abort the run and revert.
    pub async fn check(&mut self) -> Option<GuardrailAbort> {
        for g in &self.guardrails {
            match guardrail_breached(&self.cfg, &g.query, g.above).await {
                Ok(None) => {}
                Ok(Some(value)) => {
                    return Some(GuardrailAbort::Breached {
                        name: g.name.clone(),
                        query: g.query.clone(),
                        value,
                        above: g.above,
                    })
                }
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(guardrail = %g.name, failures = self.failures, %e,
                        "guardrail check failed");
                    if self.failures >= MAX_BLIND_CHECKS {
                        return Some(GuardrailAbort::Blind {
                            checks: self.failures,
                            last_error: e,
                        });
                    }
                    return None;
                }
            }
        }
        self.failures = 0;
        None
    }
}
