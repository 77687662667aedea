//! The abort watch of the fault window: the hard error-rate guardrail,
//! the sequential monitors (one per hypothesis with `abort`), PromQL
//! guardrails (on their own task), the sample-ratio abort, and `chaos
//! halt`. It only decides; the observe loop acts on its answer (revert
//! and end the run as aborted).

use std::time::Duration;

use crate::cohort::Cohort;
use crate::experiment::{Experiment, Metric};
use crate::metrics::{CohortSnapshot, Recorder};
use crate::promql::{GuardrailTask, GuardrailWatch};
use crate::report::AbortInfo;
use crate::stats::{AbortDecision, AbortMonitor};
use crate::units::Tolerance;

use super::keys;
use super::window::{self, Span};

/// STATISTICS.md §6 burn-in: no statistical abort before this many
/// requests per cohort (the plug-in variance needs it).
const BURN_IN_REQUESTS: u64 = 1_000;
/// ...and this many error events for the rate monitor.
const BURN_IN_EVENTS: u64 = 5;
/// A split this far off (chi-square p below it) means cohorts are not
/// comparable at all; milder mismatches are reported, not aborted on,
/// because sticky keys make request counts over-dispersed.
const SRM_ABORT_P: f64 = 1e-6;
/// How often the statistics are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// One sequential monitor bound to its hypothesis.
struct Monitor {
    hypothesis: String,
    monitor: AbortMonitor,
    rate: bool,
    /// The latest estimate, for the live status line.
    last_estimate: Option<f64>,
}

/// Everything that can abort the fault window.
pub struct AbortWatch<'a> {
    exp: &'a Experiment,
    monitors: Vec<Monitor>,
    guardrails: Option<GuardrailTask>,
    keys_at_inject: keys::KeyWindow,
    inject_at: Duration,
    last_look: Duration,
    last_latency_ms: u64,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl<'a> AbortWatch<'a> {
    /// A watch from `inject_at` on, its monitors tuned on the baseline
    /// before it. PromQL guardrails (if any) start checking now, on their
    /// own task; dropping the watch stops them.
    pub fn start(
        exp: &'a Experiment,
        recorder: &Recorder,
        inject_at: Duration,
        guardrails: Option<GuardrailWatch>,
    ) -> AbortWatch<'a> {
        AbortWatch {
            exp,
            monitors: build_monitors(
                exp,
                recorder,
                Span { from_ms: 0, to_ms: ms(inject_at) },
            ),
            guardrails: guardrails.map(|watch| watch.spawn(LOOK_EVERY)),
            keys_at_inject: keys::KeyWindow::now(recorder),
            inject_at,
            last_look: inject_at,
            last_latency_ms: ms(inject_at),
        }
    }

    /// The key window at injection (for per-key verdicts).
    pub fn keys_at_inject(&self) -> &keys::KeyWindow {
        &self.keys_at_inject
    }

    /// Once a second: the guardrail on the error rate, the monitors, the
    /// PromQL guardrails and the split, in that order; the first that
    /// fires is the abort, with its line for the timeline.
    pub fn check(
        &mut self,
        recorder: &Recorder,
        now: Duration,
    ) -> Option<(AbortInfo, String)> {
        let (a, in_window) = self.look(recorder, now)?;
        let message = if !in_window {
            format!("ABORT: {}", a.reason)
        } else {
            format!(
                "ABORT {:.1}s into the fault window: {}{}",
                (now - self.inject_at).as_secs_f64(),
                a.hypothesis.as_deref().map(|h| format!("{h}: ")).unwrap_or_default(),
                a.reason
            )
        };
        Some((a, message))
    }

    /// The abort, and whether it came from the window's own statistics
    /// (said with its time into the window) rather than from outside.
    fn look(&mut self, recorder: &Recorder, now: Duration) -> Option<(AbortInfo, bool)> {
        if now - self.last_look < LOOK_EVERY {
            return None;
        }
        self.last_look = now;
        let control = recorder.snapshot(Cohort::Control);
        let experiment = recorder.snapshot(Cohort::Experiment);
        let span = Span { from_ms: ms(self.inject_at), to_ms: ms(now) + 1 };
        let effects =
            keys::KeyWindow::since(recorder, &self.keys_at_inject).design_effects();
        if let Some(a) = watch_abort(
            self.exp,
            &mut self.monitors,
            (&control, &experiment),
            (span, effects),
            self.last_latency_ms,
            now,
        ) {
            return Some((a, true));
        }
        if let Some(g) = self.guardrails.as_ref().and_then(GuardrailTask::take_abort) {
            return Some((
                AbortInfo {
                    at_s: now.as_secs_f64(),
                    hypothesis: None,
                    reason: g.to_string(),
                    p_value: f64::NAN,
                    estimate: g.value().unwrap_or(f64::NAN),
                },
                false,
            ));
        }
        self.last_latency_ms = ms(now);
        if self.exp.safety.abort_on_srm {
            let srm = super::verdict::srm_of(recorder, self.exp);
            if srm.p_value < SRM_ABORT_P && srm.mismatch {
                return Some((
                    AbortInfo {
                        at_s: now.as_secs_f64(),
                        hypothesis: None,
                        reason: format!(
                        "sample-ratio mismatch (chi2 {:.1}, p {:.2e}): cohorts are not \
                         comparable",
                        srm.chi2, srm.p_value
                    ),
                        p_value: srm.p_value,
                        estimate: srm.chi2,
                    },
                    false,
                ));
            }
        }
        None
    }

    /// "errors flat Δ+0.12pp | latency Δ+3.1%": the monitors' current
    /// estimates in the units of their tolerances.
    pub fn note(&self) -> String {
        self.monitors
            .iter()
            .filter_map(|m| {
                let e = m.last_estimate.filter(|e| e.is_finite())?;
                Some(if m.rate {
                    format!("{} Δ{:+.2}pp", m.hypothesis, e * 100.0)
                } else {
                    format!("{} Δ{:+.1}%", m.hypothesis, e.exp_m1() * 100.0)
                })
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// A halt set while running aborts the run: every fault is reverted and
/// the run ends as aborted (exit 3) with the halt as its reason.
pub fn halt_abort(now: Duration) -> Option<AbortInfo> {
    crate::halt::check_default().map(|h| AbortInfo {
        at_s: now.as_secs_f64(),
        hypothesis: None,
        reason: h.to_string(),
        p_value: f64::NAN,
        estimate: f64::NAN,
    })
}

fn build_monitors(exp: &Experiment, recorder: &Recorder, baseline: Span) -> Vec<Monitor> {
    let control = recorder.snapshot(Cohort::Control);
    let base = window::counts(&control, baseline);
    let secs = (baseline.to_ms - baseline.from_ms).max(1) as f64 / 1000.0;
    // Expected requests per cohort at a quarter of the planned duration
    // (STATISTICS.md §6 tuning of rho).
    let rate = (base.total as f64 / secs).max(1.0);
    let n_quarter = rate * exp.meta.duration.as_secs_f64() / 4.0;
    let p = ((base.events as f64 + 1.0) / (base.total as f64 + 2.0)).max(0.005);
    let log_var =
        window::log_moments(&control.samples).map(|m| m.1).unwrap_or(0.25).max(0.01);
    let k = exp.hypotheses.iter().filter(|h| h.abort.is_some()).count().max(1);
    let mut out = Vec::new();
    for h in &exp.hypotheses {
        let Some(abort) = h.abort else { continue };
        let monitor = match (&h.metric, abort) {
            (Metric::ErrorRate, Tolerance::Absolute { points }) => Some((
                AbortMonitor::for_rate(
                    points,
                    exp.meta.alpha_abort,
                    k,
                    AbortMonitor::rate_information(p, n_quarter),
                ),
                true,
            )),
            (
                Metric::Latency | Metric::LatencyQuantile(_),
                Tolerance::Relative { fraction },
            ) => Some((
                AbortMonitor::for_log_latency(
                    (1.0 + fraction).ln(),
                    exp.meta.alpha_abort,
                    k,
                    n_quarter / (2.0 * log_var),
                ),
                false,
            )),
            _ => None,
        };
        if let Some((monitor, rate)) = monitor {
            out.push(Monitor {
                hypothesis: h.name.clone(),
                monitor,
                rate,
                last_estimate: None,
            });
        }
    }
    out
}

/// Hard guardrail first (no statistics), then the sequential monitors.
fn watch_abort(
    exp: &Experiment,
    monitors: &mut [Monitor],
    (control, experiment): (&CohortSnapshot, &CohortSnapshot),
    (span, effects): (Span, keys::MonitorEffects),
    last_latency_ms: u64,
    now: Duration,
) -> Option<AbortInfo> {
    // Report times are seconds since traffic start, like the timelines.
    let at_s = now.as_secs_f64();
    if let Some(max) = exp.safety.max_error_rate {
        // The last three seconds, so a fault that starts late is not
        // diluted by the healthy start of the window.
        let recent =
            Span { from_ms: span.to_ms.saturating_sub(3_000).max(span.from_ms), ..span };
        let c = window::counts(experiment, recent);
        if c.total >= 30 && c.events as f64 / c.total as f64 > max {
            return Some(AbortInfo {
                at_s,
                hypothesis: None,
                reason: format!(
                    "guardrail: experiment error rate {:.1}% over the last 3s exceeds \
                     safety.max_error_rate {:.1}%",
                    100.0 * c.events as f64 / c.total as f64,
                    max * 100.0
                ),
                p_value: 0.0,
                estimate: c.events as f64 / c.total as f64,
            });
        }
    }
    let ce = window::counts(experiment, span);
    let cc = window::counts(control, span);
    let burned_in = ce.total >= BURN_IN_REQUESTS && cc.total >= BURN_IN_REQUESTS;
    for m in monitors.iter_mut() {
        let decision = if m.rate {
            let d = m.monitor.update_counts_keyed(ce, cc, effects.rate);
            if ce.events + cc.events < BURN_IN_EVENTS {
                continue;
            }
            d
        } else {
            let e = window::new_ok_latencies(experiment, last_latency_ms, span.to_ms);
            let c = window::new_ok_latencies(control, last_latency_ms, span.to_ms);
            m.monitor.update_latencies_keyed(&e, &c, effects.log_latency)
        };
        m.last_estimate = Some(match &decision {
            AbortDecision::Continue { estimate, .. }
            | AbortDecision::Abort { estimate, .. } => *estimate,
        });
        if let AbortDecision::Abort { p_value, estimate, reason } = decision {
            if burned_in {
                return Some(AbortInfo {
                    at_s,
                    hypothesis: Some(m.hypothesis.clone()),
                    reason,
                    p_value,
                    estimate,
                });
            }
        }
    }
    None
}
