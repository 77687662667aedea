//! Verdicts and the report: the hypotheses judged over the observation
//! window (recorded traffic, per key where keys were sticky, or PromQL
//! samples), gated by the split check, combined into the run's outcome,
//! and assembled into the [`RunReport`]. Nothing here touches a fault.

use std::time::{Duration, SystemTime};

use super::keys;
use super::plan;
use super::window::{self, Shape, Span};
use crate::cohort::Cohort;
use crate::experiment::{Experiment, Metric};
use crate::metrics::{CohortSnapshot, Recorder};
use crate::outcome::{RunOutcome, Verdict};
use crate::promql::PromConfig;
use crate::report::{
    AbortInfo, ExperimentInfo, FaultRecord, HypothesisResult, RunReport, SrmInfo,
    Timings, SCHEMA_VERSION,
};
use crate::stats::{self, HypothesisVerdict};
use crate::traffic::SplitChecks;

/// What the run observed, taken after the faults were reverted.
pub struct Evidence {
    pub control: CohortSnapshot,
    pub experiment: CohortSnapshot,
    /// The fault window on the recorder's axis.
    pub span: Span,
    /// Keys seen during the fault window.
    pub key_window: keys::KeyWindow,
    /// The fault window on the wall clock (for Prometheus).
    pub wall: (SystemTime, SystemTime),
    /// The split checks by keys and by requests.
    pub split: SplitChecks,
}

/// How the run ended before verdicts, if it did not run its course.
pub struct Ending {
    pub outcome: Option<RunOutcome>,
    pub abort: Option<AbortInfo>,
    pub env_error: Option<String>,
    pub check_results: Vec<crate::k8s::inject::CheckResult>,
}

/// Judges every hypothesis and the run; adds the split, check and
/// environment warnings to `warnings`.
pub async fn judge(
    exp: &Experiment,
    prom: Option<&PromConfig>,
    seed: u64,
    ev: &Evidence,
    ending: &Ending,
    warnings: &mut Vec<String>,
) -> (Vec<HypothesisVerdict>, RunOutcome) {
    let verdict_seed = seed ^ 0x5EED_0FB0_07A1;
    // PromQL hypotheses: per-step values per cohort over the fault window,
    // once Prometheus has scraped its end (one step plus a second).
    let mut prom_data = Vec::new();
    let mut settled = false;
    for h in &exp.hypotheses {
        let (Metric::PromQl(q), Some(cfg)) = (&h.metric, prom) else {
            prom_data.push(None);
            continue;
        };
        if !settled {
            tokio::time::sleep(cfg.step + Duration::from_secs(1)).await;
            settled = true;
        }
        let s = crate::promql::cohort_samples(cfg, q, ev.wall.0, ev.wall.1)
            .await
            .unwrap_or_else(|e| {
                warnings.push(format!("hypothesis {}: {e}", h.name));
                crate::promql::CohortSamples::default()
            });
        // Values at the same steps are paired (shared load swings cancel).
        prom_data.push(Some(if s.aligned {
            stats::CohortData::AlignedWindows {
                experiment: s.experiment,
                control: s.control,
            }
        } else {
            stats::CohortData::Samples { experiment: s.experiment, control: s.control }
        }));
    }
    let verdicts: Vec<HypothesisVerdict> = exp
        .hypotheses
        .iter()
        .zip(prom_data)
        .map(|(h, prom_data)| {
            let spec = plan::hypothesis_spec(h, exp.meta.min_samples);
            let shape = match h.metric {
                Metric::Latency | Metric::LatencyQuantile(_) => Shape::Latency,
                Metric::ErrorRate => Shape::Errors,
                Metric::Throughput | Metric::PromQl(_) => Shape::Throughput,
            };
            let per_key = prom_data
                .is_none()
                .then(|| {
                    keys::key_data(
                        &shape,
                        &ev.control,
                        &ev.experiment,
                        ev.span,
                        &ev.key_window,
                    )
                })
                .flatten();
            let data = prom_data.unwrap_or_else(|| {
                window::cohort_data(shape, &ev.control, &ev.experiment, ev.span)
            });
            stats::judge_keyed(
                &spec,
                &data,
                per_key.as_ref(),
                exp.meta.alpha,
                verdict_seed,
            )
        })
        .collect();
    let aborted = ending.abort.is_some();
    let srm = &ev.split.by_keys;
    // STATISTICS.md §1: a broken split makes every comparison suspect, so
    // no hypothesis can be accepted or rejected on it.
    let verdicts =
        if srm.mismatch && !aborted { srm_gate(verdicts, srm) } else { verdicts };
    let (verdicts, overall) = stats::judge_experiment(verdicts, exp.meta.alpha, aborted);
    let outcome = ending.outcome.unwrap_or(match overall {
        Verdict::Accepted => RunOutcome::Accepted,
        Verdict::Rejected => RunOutcome::Rejected,
        Verdict::Inconclusive => RunOutcome::Inconclusive,
    });
    let outcome = k8s_checks_outcome(outcome, &ending.check_results, warnings);
    if srm.mismatch {
        warnings.push(format!(
            "sample-ratio mismatch: the cohorts' shares of distinct keys are off the \
             configured split (chi2 {:.1}, p {:.2e}); check the split and whether one \
             cohort's requests go unrecorded",
            srm.chi2, srm.p_value
        ));
    } else if let Some(w) = request_imbalance_warning(&ev.split.by_requests) {
        warnings.push(w);
    }
    if let Some(e) = &ending.env_error {
        warnings.push(e.clone());
    }
    (verdicts, outcome)
}

/// The parts of a report that are not verdicts.
pub struct ReportParts {
    pub run_id: String,
    pub started_at: String,
    pub timings: Timings,
    pub faults: Vec<FaultRecord>,
    pub warnings: Vec<String>,
}

/// Assembles the run's report.
pub fn report(
    exp: &Experiment,
    parts: ReportParts,
    ev: &Evidence,
    (verdicts, outcome): (&[HypothesisVerdict], RunOutcome),
    abort: Option<AbortInfo>,
) -> RunReport {
    let srm = &ev.split.by_keys;
    RunReport {
        schema_version: SCHEMA_VERSION,
        run_id: parts.run_id,
        experiment: ExperimentInfo {
            name: exp.meta.name.clone(),
            description: exp.meta.description.clone(),
            file: exp.file.display().to_string(),
            duration_s: exp.meta.duration.as_secs_f64(),
        },
        outcome,
        started_at: parts.started_at,
        finished_at: super::now_rfc3339(),
        timings: parts.timings,
        abort,
        faults: parts.faults,
        hypotheses: exp
            .hypotheses
            .iter()
            .zip(verdicts)
            .map(|(h, v)| hypothesis_result(h, v))
            .collect(),
        cohorts: vec![
            window::cohort_series(Cohort::Control, &ev.control),
            window::cohort_series(Cohort::Experiment, &ev.experiment),
        ],
        srm: Some(SrmInfo {
            chi2: srm.chi2,
            p_value: srm.p_value,
            mismatch: srm.mismatch,
            unit: crate::report::SrmUnit::Keys,
        }),
        warnings: parts.warnings,
        trace: None,
    }
}

/// A failed self-healing check rejects an otherwise accepted run.
fn k8s_checks_outcome(
    outcome: RunOutcome,
    results: &[crate::k8s::inject::CheckResult],
    warnings: &mut Vec<String>,
) -> RunOutcome {
    let failed: Vec<_> = results.iter().filter(|c| !c.passed).collect();
    warnings.extend(failed.iter().map(|c| c.text.clone()));
    if !failed.is_empty() && outcome == RunOutcome::Accepted {
        RunOutcome::Rejected
    } else {
        outcome
    }
}

fn srm_gate(
    verdicts: Vec<HypothesisVerdict>,
    srm: &crate::traffic::SrmResult,
) -> Vec<HypothesisVerdict> {
    verdicts
        .into_iter()
        .map(|mut v| {
            v.verdict = Verdict::Inconclusive;
            v.tested = false;
            v.reason = format!(
                "sample-ratio mismatch (chi2 {:.1}, p {:.1e}): the cohorts did not get \
                 the configured shares, so they are not comparable; {}",
                srm.chi2, srm.p_value, v.reason
            );
            v
        })
        .collect()
}

/// The sample-ratio check that gates verdicts: on distinct keys, the unit
/// of randomisation (requests of one key are correlated, so a request-level
/// check false-alarms whenever a few keys carry much of the traffic).
pub fn srm_of(recorder: &Recorder, exp: &Experiment) -> crate::traffic::SrmResult {
    crate::traffic::key_sample_ratio_mismatch(
        recorder.keys(),
        exp.traffic.control_fraction,
        exp.traffic.experiment_fraction,
    )
}

/// Requests split off the configured shares while keys are not: traffic is
/// concentrated in few keys. Not a broken split, but the request-level tests
/// assume independent requests, so the reader should know.
fn request_imbalance_warning(by_requests: &crate::traffic::SrmResult) -> Option<String> {
    by_requests.mismatch.then(|| {
        format!(
            "requests are unevenly split between the cohorts (chi2 {:.1}, p {:.2e}) \
             although their keys are split as configured: a few keys carry much of the \
             traffic, and the per-request tests treat their requests as independent; \
             read narrow verdicts with care or use a finer cohort_key",
            by_requests.chi2, by_requests.p_value
        )
    })
}

/// The report shows effects in the tolerance's own unit: percent for
/// relative tolerances, percentage points for rate differences; the
/// engine works in fractions.
fn report_unit(v: &HypothesisVerdict) -> (f64, &'static str) {
    if v.scale.contains("difference in error rate") {
        (100.0, "pp")
    } else if v.scale.contains("relative") {
        (100.0, "%")
    } else {
        (1.0, "")
    }
}

fn hypothesis_result(
    h: &crate::experiment::Hypothesis,
    v: &HypothesisVerdict,
) -> HypothesisResult {
    let (k, unit) = report_unit(v);
    HypothesisResult {
        name: v.name.clone(),
        metric: h.metric.name(),
        tolerance: h.tolerance.to_string(),
        critical: h.critical,
        verdict: v.verdict,
        test: v.test.clone(),
        estimate: v.estimate * k,
        ci_low: v.ci_low * k,
        ci_high: v.ci_high * k,
        margin: v.margin * k,
        // An untested hypothesis (below a gate) has no p-value; 1.0 would
        // read like "tested and far from rejected".
        p_value: if v.tested { v.p_reject } else { f64::NAN },
        p_value_adjusted: if v.tested { v.p_reject_adjusted } else { f64::NAN },
        p_within: if v.tested { v.p_accept } else { f64::NAN },
        per_key: v.clustering.map(|c| crate::report::PerKeyInfo {
            keys_experiment: c.keys_experiment,
            keys_control: c.keys_control,
            design_effect_experiment: c.design_effect_experiment,
            design_effect_control: c.design_effect_control,
            p_value_per_request: c.p_reject_per_request,
            p_within_per_request: c.p_accept_per_request,
        }),
        n_experiment: v.n_experiment,
        n_control: v.n_control,
        needed_n: v.needed_n,
        reason: v.reason.clone(),
        unit: if unit.is_empty() { v.scale.clone() } else { unit.to_string() },
    }
}
