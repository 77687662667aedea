//! Realistic, deterministic example reports: documentation screenshots,
//! renderer tests and a reference for what the runner is expected to fill.
//! The data is simulated (seeded), not measured.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;

use super::{
    AbortInfo, CohortSeries, ExperimentInfo, FaultRecord, HypothesisResult, Quantiles,
    RunReport, SrmInfo, SrmUnit, Timings, TraceInfo, WindowPoint, SCHEMA_VERSION,
};
use crate::cohort::Cohort;
use crate::outcome::{RunOutcome, Verdict};

const WINDOW_S: f64 = 2.0;
const WINDOWS: usize = 30;
const PER_WINDOW: usize = 400;
const FAULT_ON_S: f64 = 10.0;
const FAULT_OFF_S: f64 = 55.0;

/// A 60 s run where +200 ms on a quarter of the experiment cohort's
/// payment calls (from 10 s to 55 s) drives its p99 far above control:
/// p99 hypothesis rejected, error rate accepted, throughput inconclusive.
pub fn latency_fault_run() -> RunReport {
    // Simulating ~24k requests is slow in debug builds; build once.
    static RUN: OnceLock<RunReport> = OnceLock::new();
    RUN.get_or_init(|| build(None)).clone()
}

/// The same experiment stopped by the abort monitor at 24 s.
pub fn aborted_run() -> RunReport {
    static RUN: OnceLock<RunReport> = OnceLock::new();
    RUN.get_or_init(|| build(Some(24.0))).clone()
}

/// An A/A run: no faults, every hypothesis accepted.
pub fn accepted_run() -> RunReport {
    static RUN: OnceLock<RunReport> = OnceLock::new();
    let mut r = RUN.get_or_init(|| build_with(None, false)).clone();
    r.run_id = "run-20261123-031500-a7a7".into();
    r.trace = None;
    r.experiment.name = "payments A/A".into();
    r.experiment.description = "No faults: checks the split and the statistics.".into();
    r.faults.clear();
    r.outcome = RunOutcome::Accepted;
    for h in &mut r.hypotheses {
        h.verdict = Verdict::Accepted;
        h.estimate = h.margin * 0.08;
        h.ci_low = -h.margin * 0.35;
        h.ci_high = h.margin * 0.55;
        h.p_value = 0.91;
        h.p_value_adjusted = 1.0;
        h.needed_n = None;
        h.reason = "upper bound below the tolerance".into();
    }
    r
}

fn build(abort_at: Option<f64>) -> RunReport {
    build_with(abort_at, true)
}

fn build_with(abort_at: Option<f64>, fault: bool) -> RunReport {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let end = abort_at.unwrap_or(WINDOWS as f64 * WINDOW_S);
    let fault_off = abort_at.map(|a| a + 0.4).unwrap_or(FAULT_OFF_S);
    let mut cohorts = Vec::new();
    for cohort in Cohort::ALL {
        let faulted = fault && cohort == Cohort::Experiment;
        let mut all = Vec::new();
        let mut timeline = Vec::new();
        let mut errors_total = 0;
        let windows = (end / WINDOW_S).ceil() as usize;
        for w in 0..windows {
            let t_s = ((w + 1) as f64 * WINDOW_S).min(end);
            let active = faulted && t_s > FAULT_ON_S && t_s - WINDOW_S < fault_off;
            let n = PER_WINDOW - 6 + rng.gen_range(0..12);
            let mut lat: Vec<f64> = (0..n)
                .map(|_| {
                    let base = (40f64.ln() + 0.45 * normal(&mut rng)).exp();
                    if active && rng.gen_bool(0.25) {
                        base + 200.0 + 15.0 * normal(&mut rng).abs()
                    } else {
                        base
                    }
                })
                .collect();
            let p_err = if active { 0.006 } else { 0.003 };
            let errors = (0..n).filter(|_| rng.gen_bool(p_err)).count() as u64;
            errors_total += errors;
            lat.sort_by(f64::total_cmp);
            timeline.push(WindowPoint {
                t_s,
                requests: n as u64,
                errors,
                p50_ms: round3(quantile(&lat, 0.5)),
                p99_ms: round3(quantile(&lat, 0.99)),
            });
            all.extend(lat);
        }
        all.sort_by(f64::total_cmp);
        cohorts.push(CohortSeries {
            cohort,
            total: all.len() as u64,
            errors: errors_total,
            latency_ms: Quantiles {
                p50: round3(quantile(&all, 0.5)),
                p90: round3(quantile(&all, 0.9)),
                p99: round3(quantile(&all, 0.99)),
                max: round3(all.last().copied().unwrap_or(f64::NAN)),
            },
            timeline,
            latency_histogram: histogram(&all),
        });
    }
    let (n_e, n_c) = (cohorts[1].total, cohorts[0].total);
    let outcome =
        if abort_at.is_some() { RunOutcome::Aborted } else { RunOutcome::Rejected };
    let observe = end - FAULT_ON_S;
    RunReport {
        schema_version: SCHEMA_VERSION,
        run_id: "run-20261123-030412-9f3c".into(),
        experiment: ExperimentInfo {
            name: "payments dependency latency".into(),
            description: "api → payments gets +200ms on 25% of calls; \
                          the api must keep its p99 within 10% of control."
                .into(),
            file: "experiments/dependency-latency.toml".into(),
            duration_s: 50.0,
        },
        outcome,
        started_at: "2026-11-23T03:04:12Z".into(),
        finished_at: if abort_at.is_some() {
            "2026-11-23T03:04:38Z".into()
        } else {
            "2026-11-23T03:05:14Z".into()
        },
        timings: Timings {
            preflight_s: 0.42,
            baseline_s: FAULT_ON_S,
            observe_s: observe,
            revert_s: 0.38,
            total_s: round3(0.42 + end + 0.38 + 0.2),
        },
        abort: abort_at.map(|at_s| AbortInfo {
            at_s,
            hypothesis: Some("api p99 latency".into()),
            reason: "p99 latency of the experiment cohort exceeded the abort \
                     margin of +50% (sequential p < 0.005)"
                .into(),
            p_value: 0.0031,
            estimate: 164.0,
        }),
        faults: if fault {
            vec![FaultRecord {
                id: "payments-slow".into(),
                kind: "latency".into(),
                target: "name:payments".into(),
                description: "+200ms on 25% of experiment calls to payments".into(),
                applied_at_s: Some(FAULT_ON_S),
                reverted_at_s: Some(fault_off),
                revert_error: None,
            }]
        } else {
            Vec::new()
        },
        hypotheses: vec![
            HypothesisResult {
                name: "api p99 latency".into(),
                metric: "latency_p99".into(),
                tolerance: "+10%".into(),
                critical: true,
                verdict: Verdict::Rejected,
                test: "hd-bootstrap".into(),
                estimate: 171.3,
                ci_low: 148.9,
                ci_high: 196.2,
                margin: 10.0,
                p_value: 0.0005,
                p_value_adjusted: 0.0015,
                p_within: 0.9999,
                per_key: None,
                n_experiment: n_e,
                n_control: n_c,
                needed_n: None,
                reason: "lower bound +148.9% is above the tolerance +10%".into(),
                unit: "%".into(),
            },
            HypothesisResult {
                name: "api error rate".into(),
                metric: "error_rate".into(),
                tolerance: "+0.5pp".into(),
                critical: false,
                verdict: Verdict::Accepted,
                test: "newcombe".into(),
                estimate: 0.21,
                ci_low: 0.05,
                ci_high: 0.38,
                margin: 0.5,
                p_value: 0.97,
                p_value_adjusted: 0.97,
                p_within: 0.0004,
                per_key: Some(crate::report::PerKeyInfo {
                    keys_experiment: 412,
                    keys_control: 398,
                    design_effect_experiment: 3.1,
                    design_effect_control: 1.0,
                    p_value_per_request: 0.9,
                    p_within_per_request: 0.00001,
                }),
                n_experiment: n_e,
                n_control: n_c,
                needed_n: None,
                reason: "upper bound +0.38pp is below the tolerance +0.5pp".into(),
                unit: "pp".into(),
            },
            HypothesisResult {
                name: "api throughput".into(),
                metric: "throughput".into(),
                tolerance: "-5%".into(),
                critical: false,
                verdict: Verdict::Inconclusive,
                test: "welch-t".into(),
                estimate: 0.8,
                ci_low: -3.9,
                ci_high: 5.6,
                margin: 5.0,
                p_value: 0.41,
                p_value_adjusted: 0.82,
                p_within: 0.71,
                per_key: None,
                n_experiment: 23,
                n_control: 23,
                needed_n: Some(40),
                reason: "interval [-3.9%, +5.6%] contains the tolerance".into(),
                unit: "%".into(),
            },
        ],
        cohorts,
        srm: Some(SrmInfo {
            chi2: 0.21,
            p_value: 0.65,
            mismatch: false,
            unit: SrmUnit::Keys,
        }),
        warnings: vec![
            "throughput windows are 2 s; windows of at least 10 s give a steadier \
             Welch test"
                .into(),
        ],
        trace: Some(TraceInfo {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            delivered: true,
            error: None,
        }),
    }
}

/// Standard normal via Box-Muller (rand_distr is not a dependency).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Microsecond precision, as a real recorder would report.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Log-spaced buckets (×1.2) from 5 ms, with an overflow bucket at +∞.
fn histogram(sorted: &[f64]) -> Vec<(f64, u64)> {
    let mut bounds = Vec::new();
    let mut b = 5.0;
    while b < 1000.0 {
        bounds.push((b * 10.0_f64).round() / 10.0);
        b *= 1.2;
    }
    bounds.push(f64::INFINITY);
    let mut out: Vec<(f64, u64)> = bounds.iter().map(|&u| (u, 0)).collect();
    for &x in sorted {
        let i = bounds.iter().position(|&u| x <= u).unwrap_or(bounds.len() - 1);
        out[i].1 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_sample_shows_experiment_p99_far_above_control() {
        let r = latency_fault_run();
        let c = r.cohort(Cohort::Control).unwrap();
        let e = r.cohort(Cohort::Experiment).unwrap();
        assert!(e.latency_ms.p99 > 2.0 * c.latency_ms.p99, "{e:?} vs {c:?}");
        assert_eq!(c.timeline.len(), WINDOWS);
        let hist: u64 = e.latency_histogram.iter().map(|b| b.1).sum();
        assert_eq!(hist, e.total);
    }

    #[test]
    fn the_aborted_sample_stops_its_timeline_at_the_abort() {
        let r = aborted_run();
        assert_eq!(r.outcome, RunOutcome::Aborted);
        let last = r.cohorts[0].timeline.last().unwrap().t_s;
        assert_eq!(last, 24.0);
    }
}
