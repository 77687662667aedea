//! The guardrail watch: evaluates every `[[guardrail]]` and says when to
//! abort — on a breach, or when the guardrails cannot be evaluated several
//! times in a row (a guardrail that cannot be seen is not guarding
//! anything). [`GuardrailWatch::spawn`] runs it on its own task, so a slow
//! Prometheus (up to its timeout per query) never delays the runner's abort
//! watch, fault schedule or reaction to Ctrl-C.

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

/// The first abort the background watch found, shared with the runner.
type Found = std::sync::Arc<std::sync::Mutex<Option<GuardrailAbort>>>;

/// A [`GuardrailWatch`] running on its own task; stops when dropped.
#[derive(Debug)]
pub struct GuardrailTask {
    found: Found,
    task: tokio::task::JoinHandle<()>,
}

impl GuardrailTask {
    /// The abort the watch found, once (later calls return `None`).
    pub fn take_abort(&self) -> Option<GuardrailAbort> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for GuardrailTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks every guardrail; polled by its background task while faults are
/// active.
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

    /// Checks every `interval` on a task of the current runtime until the
    /// first abort, which [`GuardrailTask::take_abort`] then hands out.
    pub fn spawn(mut self, interval: std::time::Duration) -> GuardrailTask {
        let found: Found = Default::default();
        let out = found.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            // A check slower than the interval is not followed by a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some(a) = self.check().await {
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
                    return;
                }
            }
        });
        GuardrailTask { found, task }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_prometheus_that_never_answers_aborts_the_background_watch_as_blind() {
        // A loopback listener that accepts (the kernel completes the
        // handshake) and never answers: every check runs into the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = PromConfig {
            url: format!("http://{}", silent.local_addr().unwrap()),
            timeout: Duration::from_millis(150),
            step: Duration::from_secs(1),
            bearer_token: None,
            basic_auth: None,
            ca_file: None,
        };
        let g = Guardrail { name: "errors".into(), query: "up".into(), above: 0.5 };
        let started = Instant::now();
        let task = GuardrailWatch::new(cfg, vec![g]).spawn(Duration::from_millis(50));
        // The caller is never held up by the slow checks.
        assert!(task.take_abort().is_none());
        assert!(started.elapsed() < Duration::from_millis(100));
        let mut abort = None;
        while abort.is_none() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            abort = task.take_abort();
        }
        let abort = abort.expect("blind after three timed-out checks");
        assert!(matches!(abort, GuardrailAbort::Blind { checks: MAX_BLIND_CHECKS, .. }));
        // Three checks bounded by the 150 ms timeout, not more.
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        assert!(task.take_abort().is_none(), "handed out once");
    }
}
