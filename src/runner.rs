//! One experiment run: preflight → baseline → inject → observe (with the
//! abort watch) → revert → verdict → report. The runner owns the lifecycle
//! and wires traffic, faults, statistics and reports; they never call each
//! other. This file is the orchestrator; each phase has its module:
//!
//! - [`preflight`]: every check before anything changes (and `--dry-run`);
//! - [`rig`]: the proxies, the load and `/metrics`;
//! - [`schedule`]: the faults' timeline, OWNING the `fault::Session`, so
//!   every applied fault (local or on inventory hosts) is reverted on
//!   every path, a panic included;
//! - [`observe`]: the baseline and the fault window's loop;
//! - [`watch`]: the abort watch (guardrails, monitors, split, halt);
//! - [`verdict`]: verdicts and the report.

pub mod keys;
pub mod observe;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod remote;
pub mod rig;
pub mod schedule;
pub mod verdict;
pub mod watch;
pub mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use crate::cohort::Cohort;
use crate::experiment::Experiment;
use crate::fault;
use crate::otel::{self, RunTrace};
use crate::outcome::Verdict;
use crate::report::{RunReport, Timings};
use crate::signals::Interrupt;
use crate::units::format_duration;
use progress::{Progress, ProgressMode};
use window::Span;

pub use preflight::dry_run;

/// Options that are not part of the experiment file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the fault journal lives.
    pub journal_dir: PathBuf,
    /// Overrides `[experiment] seed`.
    pub seed: Option<u64>,
    /// Live progress on stderr.
    pub progress: ProgressMode,
    /// Set by SIGINT/SIGTERM.
    pub interrupt: Option<Interrupt>,
    /// Serve the platform's and the proxy's metrics at `GET /metrics` here.
    pub metrics_listen: Option<SocketAddr>,
}

/// A run that could not start: nothing was injected.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Mapping the experiment failed.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Preflight found the environment unfit.
    #[error("preflight: {0}")]
    Preflight(String),
    /// A fault or its targets were refused at preflight; typed so the exit
    /// code is the one `inject` and `kill` give for the same refusal.
    #[error("preflight: {context}{source}")]
    Fault { context: String, source: fault::FaultError },
    /// The load generator cannot run with this `[load]`.
    #[error("preflight: [load]: {0}")]
    Load(#[from] crate::load::LoadError),
}

impl RunError {
    /// Exit code: 2 for an unusable experiment or a refused target, 5 for
    /// the environment ([`fault::FaultError::exit_code`] decides faults).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Plan(_) => crate::exit::INVALID,
            RunError::Fault { source, .. } => source.exit_code(),
            RunError::Preflight(_) | RunError::Load(_) => crate::exit::ENVIRONMENT,
        }
    }

    fn fault(context: String) -> impl FnOnce(fault::FaultError) -> RunError {
        move |source| RunError::Fault { context, source }
    }
}

/// Runs the experiment to completion and returns its report. Errors are
/// only returned before anything was injected. With `[otel]`, the run is
/// traced (see [`crate::otel`]) and the report says where the trace went.
pub async fn run(exp: &Experiment, opts: RunOptions) -> Result<RunReport, RunError> {
    let run_id = new_run_id();
    let mut trace = RunTrace::start(exp.otel.as_ref(), &exp.meta.name, &run_id);
    let result = run_traced(exp, opts, run_id, &mut trace).await;
    match result {
        Ok(mut report) => {
            report.trace = trace.finish(Ok(&report)).await;
            Ok(report)
        }
        Err(e) => {
            trace.finish(Err((e.exit_code(), &e.to_string()))).await;
            Err(e)
        }
    }
}

async fn run_traced(
    exp: &Experiment,
    opts: RunOptions,
    run_id: String,
    trace: &mut RunTrace,
) -> Result<RunReport, RunError> {
    let t_start = Instant::now();
    let started_at = now_rfc3339();
    let seed = opts.seed.or(exp.meta.seed).unwrap_or_else(rand::random);
    let mut progress = Progress::new(opts.progress);
    progress.event(&format!("run {run_id}: {} (seed {seed})", exp.meta.name));

    // ---- preflight: nothing is changed until every check passed. From
    // here on `schedule` owns every fault that gets applied: dropping it
    // (a return or a panic below) reverts them.
    let preflight::Ready { mut schedule, mut warnings, prom, guardrails, checks } =
        preflight::check(exp, &opts, seed, &run_id, &mut progress).await?;
    let mut rig = rig::Rig::start(exp, &opts, seed).await?;
    let preflight_s = t_start.elapsed().as_secs_f64();
    trace.phase(otel::Phase::Baseline);
    progress.event(&format!(
        "proxy on {} ({} sidecar(s)); baseline {}",
        rig.edge.local_addr(),
        rig.sidecars.len(),
        format_duration(exp.meta.baseline)
    ));
    let origin = rig.recorder.origin();
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let mut live = observe::Live {
        exp,
        rig: &rig,
        progress: &mut progress,
        trace,
        interrupt: opts.interrupt,
    };

    // ---- baseline, then inject + observe
    let before = live.baseline().await;
    let baseline_s = exp.meta.baseline.as_secs_f64();
    let inject_at = origin.elapsed();
    live.trace.phase(otel::Phase::Observe);
    let inject_wall = std::time::SystemTime::now();
    let mut watch = watch::AbortWatch::start(
        exp,
        &rig.recorder,
        inject_at,
        guardrails.filter(|_| before.outcome.is_none()),
    );
    let end = if before.outcome.is_some() {
        observe::End { observed_until: inject_at, ..before }
    } else {
        live.fault_window(&mut schedule, &mut watch, inject_at).await
    };
    let key_window = keys::KeyWindow::since(&rig.recorder, watch.keys_at_inject());
    drop(watch);
    let observe_end = end.observed_until;
    let observe_s = (observe_end.saturating_sub(inject_at)).as_secs_f64();
    let observe_end_wall = std::time::SystemTime::now();

    // ---- revert everything, whatever happened above.
    live.trace.aborted(end.abort.as_ref());
    live.trace.phase(otel::Phase::Revert);
    let revert_started = Instant::now();
    schedule.revert_all(origin.elapsed());
    // Always clear proxy faults, even if bookkeeping says none are active.
    rig.clear_http_faults();
    // The gauge saturates at zero, so faults already reverted above are
    // not counted twice.
    for sf in schedule.faults().iter().filter(|sf| sf.applied_at.is_some()) {
        rig.platform.fault_reverted(&sf.spec.kind);
        live.trace.fault_reverted(&sf.spec.id, sf.revert_error.as_deref());
    }
    let revert_s = revert_started.elapsed().as_secs_f64();
    progress.event(&format!("reverted all faults in {:.3}s", revert_s));
    let check_results =
        tokio::task::spawn_blocking(move || checks.judge()).await.unwrap_or_default();
    for c in &check_results {
        progress.event(&c.text);
    }
    let mut ending = verdict::Ending {
        outcome: end.outcome,
        abort: end.abort,
        env_error: end.env_error,
        check_results,
    };
    if let Some(e) = rig.stop_load().await {
        progress.event(&e);
        ending.outcome =
            ending.outcome.or(Some(crate::outcome::RunOutcome::EnvironmentError));
        ending.env_error = ending.env_error.or(Some(e));
    }
    // Both split checks now, with the snapshots: shutting the proxy down
    // records the requests it abandons.
    let evidence = verdict::Evidence {
        control: rig.recorder.snapshot(Cohort::Control),
        experiment: rig.recorder.snapshot(Cohort::Experiment),
        split: crate::traffic::split_checks(
            &rig.recorder,
            exp.traffic.control_fraction,
            exp.traffic.experiment_fraction,
        ),
        span: Span { from_ms: ms(inject_at), to_ms: ms(observe_end) + 1 },
        key_window,
        wall: (inject_wall, observe_end_wall),
    };
    let platform = rig.platform.clone();
    let _metrics_server = rig.shutdown().await;
    progress.finish();

    // ---- verdicts over the observation window.
    trace.phase(otel::Phase::Verdict);
    let (verdicts, outcome) =
        verdict::judge(exp, prom.as_ref(), seed, &evidence, &ending, &mut warnings).await;
    if ending.abort.is_some() {
        platform.abort();
    }
    let verdict_list: Vec<Verdict> = verdicts.iter().map(|v| v.verdict).collect();
    platform.run_finished(outcome, &verdict_list, t_start.elapsed());
    let parts = verdict::ReportParts {
        run_id,
        started_at,
        timings: Timings {
            preflight_s,
            baseline_s,
            observe_s,
            revert_s,
            total_s: t_start.elapsed().as_secs_f64(),
        },
        faults: schedule.records(),
        warnings,
    };
    Ok(verdict::report(exp, parts, &evidence, (&verdicts, outcome), ending.abort))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}-{:04x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod load_failure_tests {
    use super::rig::load_failure;
    use super::*;
    use std::time::Duration;

    /// Issue 12 "Also": the load task's result used to be dropped, so a
    /// failed generator meant no traffic and no error.
    #[tokio::test]
    async fn r12_a_failed_or_crashed_load_task_is_an_environment_error() {
        let failed = tokio::spawn(async {
            Err::<crate::load::LoadStats, _>(crate::load::LoadError::Config("x".into()))
        });
        let got =
            load_failure(tokio::time::timeout(Duration::from_secs(5), failed).await);
        assert!(got.is_some_and(|e| e.contains("load generator failed")));
        let crashed = tokio::spawn(async {
            panic!("boom");
            #[allow(unreachable_code)]
            Ok::<crate::load::LoadStats, crate::load::LoadError>(Default::default())
        });
        let got =
            load_failure(tokio::time::timeout(Duration::from_secs(5), crashed).await);
        assert!(got.is_some_and(|e| e.contains("crashed")));
        let fine = tokio::spawn(async {
            Ok::<_, crate::load::LoadError>(crate::load::LoadStats::default())
        });
        assert!(load_failure(tokio::time::timeout(Duration::from_secs(5), fine).await)
            .is_none());
    }

    #[test]
    fn r12_a_refused_fault_maps_through_the_typed_exit_code() {
        let blast = RunError::Fault {
            context: String::new(),
            source: fault::FaultError::Target(crate::target::TargetError::BlastRadius {
                selector: "name:x".into(),
                selected: 4,
                matched: 4,
                limit: "max_targets = 3".into(),
            }),
        };
        assert_eq!(blast.exit_code(), crate::exit::INVALID);
        let missing = RunError::Fault {
            context: String::new(),
            source: fault::FaultError::NoNetAdmin,
        };
        assert_eq!(missing.exit_code(), crate::exit::ENVIRONMENT);
    }
}
