//! One experiment run: preflight → baseline → inject → observe (with the
//! abort watch) → revert → verdict → report. The runner owns the lifecycle
//! and wires traffic, faults, statistics and reports; they never call each
//! other. Every path after the first injection goes through `revert_all`.

pub mod keys;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cohort::Cohort;
use crate::experiment::{Experiment, Fault, FaultKind, Metric};
use crate::fault::{self, InfraFault, Injector};
use crate::journal::Journal;
use crate::metrics::{CohortSnapshot, Recorder};
use crate::otel::{self, RunTrace};
use crate::outcome::{RunOutcome, Verdict};
use crate::report::{
    AbortInfo, ExperimentInfo, FaultRecord, HypothesisResult, RunReport, SrmInfo,
    Timings, SCHEMA_VERSION,
};
use crate::signals::Interrupt;
use crate::stats::{self, AbortDecision, AbortMonitor, HypothesisVerdict};
use crate::traffic::{HttpFault, Proxy, ProxyHandle};
use crate::units::{format_duration, Tolerance};
use progress::{CohortLive, Progress, ProgressMode};
use window::{Shape, Span};

/// How often the runner looks at the data (faults due, abort watch).
const TICK: Duration = Duration::from_millis(250);
/// Raw latency samples kept per cohort (bounded memory).
const RESERVOIR: usize = 200_000;
/// STATISTICS.md §6 burn-in: no statistical abort before this many
/// requests per cohort (the plug-in variance needs it).
const BURN_IN_REQUESTS: u64 = 1_000;
/// ...and this many error events for the rate monitor.
const BURN_IN_EVENTS: u64 = 5;
/// A split this far off (chi-square p below it) means cohorts are not
/// comparable at all; milder mismatches are reported, not aborted on,
/// because sticky keys make request counts over-dispersed.
const SRM_ABORT_P: f64 = 1e-6;

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

/// The load generator's config for `[load]`, aimed at `proxy`. Checked at
/// preflight (with the configured listen address) so a config the
/// generator refuses fails the run before anything is injected instead of
/// silently producing no traffic.
fn load_config(
    exp: &Experiment,
    l: &crate::experiment::Load,
    proxy: SocketAddr,
    seed: u64,
) -> Result<crate::load::LoadConfig, RunError> {
    let target = format!("http://{proxy}{}", l.path);
    let cfg = crate::load::LoadConfig {
        target: target.parse().map_err(|e| {
            crate::load::LoadError::Config(format!("target {target:?}: {e}"))
        })?,
        max_requests: None,
        rate_per_s: l.rate,
        concurrency: l.concurrency,
        key_header: l.key_header.clone(),
        key_space: l.keys,
        key_zipf: l.key_zipf,
        seed,
        timeout: l
            .timeout
            .unwrap_or(exp.traffic.upstream_timeout + Duration::from_secs(1)),
    };
    crate::load::check(&cfg)?;
    Ok(cfg)
}

/// A load task that failed (or panicked) instead of running to the stop
/// signal: the run had no traffic it was promised, an environment error.
fn load_failure(
    joined: Result<
        Result<
            Result<crate::load::LoadStats, crate::load::LoadError>,
            tokio::task::JoinError,
        >,
        tokio::time::error::Elapsed,
    >,
) -> Option<String> {
    match joined {
        Ok(Ok(Ok(_))) | Err(_) => None,
        Ok(Ok(Err(e))) => Some(format!("load generator failed: {e}")),
        Ok(Err(e)) => Some(format!("load generator crashed: {e}")),
    }
}

/// What `--dry-run` prints: every resolved target and exact command.
pub fn dry_run(exp: &Experiment, opts: &RunOptions) -> Result<Vec<String>, RunError> {
    let seed = opts.seed.or(exp.meta.seed).unwrap_or(0);
    let edge = plan::edge_proxy(exp, seed)?;
    let mut lines = vec![
        format!("experiment: {} ({})", exp.meta.name, exp.file.display()),
        format!(
            "timeline: baseline {}, then faults for {}",
            format_duration(exp.meta.baseline),
            format_duration(exp.meta.duration)
        ),
        format!(
            "proxy: listen {} → {} upstream(s); experiment {:.1}% / control {:.1}% by {}",
            edge.listen,
            edge.pools.default.len(),
            exp.traffic.experiment_fraction * 100.0,
            exp.traffic.control_fraction * 100.0,
            edge.cohort_key
        ),
    ];
    for (name, cfg) in plan::sidecars(exp, seed)? {
        lines.push(format!("sidecar {name}: listen {}", cfg.listen));
    }
    if let Some(l) = &exp.load {
        lines.push(format!("load: {} req/s to {}{}", l.rate, exp.traffic.listen, l.path));
    }
    let (infra, ctx) = infra_plan(exp, seed, "dry-run")?;
    let pre =
        fault::preflight(&infra.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(), &ctx)
            .map_err(RunError::fault(String::new()))?;
    lines.extend(pre.warnings.iter().map(|w| format!("warning: {w}")));
    let remote_faults = remote::prepare(exp, &ctx)?;
    let pods = k8s_prepare(exp, seed, true)?;
    for f in &exp.faults {
        let when = format!(
            "at +{}{}",
            format_duration(f.start),
            f.duration
                .map(|d| format!(" for {}", format_duration(d)))
                .unwrap_or_default()
        );
        if f.kind.is_http() {
            lines.push(format!(
                "fault {} ({}) {when}: experiment cohort at {}, probability {:.0}%",
                f.id,
                f.kind.name(),
                f.at,
                f.probability * 100.0
            ));
        } else if let Some((_, infra_fault)) = infra.iter().find(|(id, _)| id == &f.id) {
            let inj = fault::prepare(infra_fault, &ctx, &pre)
                .map_err(RunError::fault(format!("fault {}: ", f.id)))?;
            lines.push(format!("fault {} ({}) {when}:", f.id, f.kind.name()));
            lines.extend(inj.describe().into_iter().map(|d| format!("  {d}")));
        } else if let Some(rf) = remote_faults.get(&f.id) {
            lines.push(format!("fault {} ({}) {when}:", f.id, f.kind.name()));
            lines.extend(rf.describe().into_iter().map(|d| format!("  {d}")));
        } else if let Some(pk) = pods.faults.get(&f.id) {
            lines.push(format!("fault {} ({}) {when}:", f.id, f.kind.name()));
            lines.extend(pk.describe().into_iter().map(|d| format!("  {d}")));
        }
    }
    lines.extend(pods.checks.describe());
    lines.push("dry run: nothing was started or changed".into());
    Ok(lines)
}

type InfraPlan = (Vec<(String, InfraFault)>, fault::FaultContext);

fn infra_plan(exp: &Experiment, seed: u64, run_id: &str) -> Result<InfraPlan, RunError> {
    let mut infra = Vec::new();
    for f in &exp.faults {
        if f.placement(exp.hosts.as_ref()).is_some() {
            // Runs on its hosts' agents: see `remote`.
            continue;
        }
        if let FaultKind::RegionOutage { region, .. } = &f.kind {
            let uses_host = exp.regions.iter().any(|r| {
                &r.name == region && r.texts.iter().any(|t| t.contains("{host}"))
            });
            if uses_host {
                return Err(RunError::Fault {
                    context: format!("fault {}: ", f.id),
                    source: fault::FaultError::Invalid(format!(
                        "region {region:?} uses {{host}} in its targets but no inventory \
                         host is labelled region={region}; label the hosts, or drop {{host}}"
                    )),
                });
            }
        }
        if let Some(i) = plan::infra_fault(f)? {
            infra.push((f.id.clone(), i));
        }
    }
    Ok((infra, plan::fault_context(exp, seed, run_id)))
}

/// A fault during the run: when it starts and stops, and its state.
struct ScheduledFault {
    spec: Fault,
    start: Duration,
    stop: Duration,
    injector: Option<Box<dyn Injector>>,
    /// Kept to re-resolve targets when the fault starts: processes named
    /// at preflight may have restarted (new pid) by then.
    infra: Option<InfraFault>,
    http: Option<HttpFault>,
    applied_at: Option<Duration>,
    /// `process-kill` with `interval`: when to strike again (relative to
    /// the start of injection).
    next_repeat: Option<Duration>,
    reverted_at: Option<Duration>,
    revert_error: Option<String>,
    description: String,
}

/// One sequential monitor bound to its hypothesis.
struct Monitor {
    hypothesis: String,
    monitor: AbortMonitor,
    rate: bool,
    /// The latest estimate, for the live status line.
    last_estimate: Option<f64>,
}

/// "errors flat Δ+0.12pp | latency Δ+3.1%": the monitors' current
/// estimates in the units of their tolerances.
fn monitor_note(monitors: &[Monitor]) -> String {
    monitors
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
    let interrupted = || opts.interrupt.as_ref().is_some_and(|i| i.is_set());
    refuse_if_halted()?;

    // ---- preflight: nothing is changed until every check passed.
    let (infra, ctx) = infra_plan(exp, seed, &run_id)?;
    let infra_only: Vec<InfraFault> = infra.iter().map(|(_, f)| f.clone()).collect();
    let pre =
        fault::preflight(&infra_only, &ctx).map_err(RunError::fault(String::new()))?;
    if let Some(l) = &exp.load {
        load_config(exp, l, exp.traffic.listen, seed)?;
    }
    let mut warnings = pre.warnings.clone();
    for w in &pre.warnings {
        progress.event(&format!("warning: {w}"));
    }
    let mut remote_faults = remote::prepare(exp, &ctx)?;
    let mut pods = k8s_prepare(exp, seed, false)?;
    let mut schedule = Vec::new();
    for f in &exp.faults {
        let stop = f.start + f.duration.unwrap_or(exp.meta.duration);
        let mut sf = ScheduledFault {
            spec: f.clone(),
            start: f.start,
            stop: stop.min(exp.meta.duration),
            injector: None,
            infra: infra.iter().find(|(id, _)| id == &f.id).map(|(_, i)| i.clone()),
            http: plan::http_fault(f),
            applied_at: None,
            next_repeat: None,
            reverted_at: None,
            revert_error: None,
            description: String::new(),
        };
        if let Some((_, i)) = infra.iter().find(|(id, _)| id == &f.id) {
            let inj = fault::prepare(i, &ctx, &pre)
                .map_err(RunError::fault(format!("fault {}: ", f.id)))?;
            sf.description = summarize(&inj.describe(), f.kind.name());
            sf.injector = Some(inj);
        } else if let Some(rf) = remote_faults.remove(&f.id) {
            sf.description = summarize(&rf.describe(), f.kind.name());
            sf.injector = Some(Box::new(rf));
        } else if let Some(pk) = pods.faults.remove(&f.id) {
            sf.description = summarize(&pk.describe(), f.kind.name());
            sf.injector = Some(Box::new(pk));
        } else if let Some(h) = &sf.http {
            sf.description = format!(
                "{} on {:.0}% of experiment-cohort requests at {}",
                h.kind.label().as_str(),
                h.probability * 100.0,
                f.at
            );
        }
        schedule.push(sf);
    }
    check_upstreams(exp).await?;
    // PromQL hypotheses and guardrails need Prometheus: unreachable = exit 5.
    let prom = exp.prometheus.as_ref().map(crate::promql::PromConfig::from);
    if let Some(cfg) = &prom {
        crate::promql::check_reachable(cfg)
            .await
            .map_err(|e| RunError::Preflight(e.to_string()))?;
    }
    let guardrails = prom
        .clone()
        .filter(|_| !exp.guardrails.is_empty())
        .map(|cfg| crate::promql::GuardrailWatch::new(cfg, exp.guardrails.clone()));
    let mut journal =
        if infra.is_empty() && !remote::any(exp) && !crate::k8s::inject::any(exp) {
            None
        } else {
            Some(
                Journal::open(&opts.journal_dir, &run_id)
                    .map_err(|e| RunError::Preflight(format!("journal: {e}")))?,
            )
        };

    // ---- start the proxies and the load.
    let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), RESERVOIR));
    let platform = crate::metrics::platform::PlatformMetrics::new();
    let _metrics_server = match opts.metrics_listen {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            platform.register(&mut registry);
            let sources: Vec<Arc<dyn crate::metrics::platform::HasRegistry>> =
                vec![Arc::new(registry), recorder.clone()];
            Some(
                crate::metrics::platform::serve_registries(addr, sources)
                    .await
                    .map_err(|e| RunError::Preflight(e.to_string()))?,
            )
        }
        None => None,
    };
    let edge = Proxy::start(plan::edge_proxy(exp, seed)?, recorder.clone())
        .await
        .map_err(|e| RunError::Preflight(format!("cohort proxy: {e}")))?;
    let mut sidecars: Vec<(String, ProxyHandle)> = Vec::new();
    for (name, cfg) in plan::sidecars(exp, seed)? {
        let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 1_000));
        match Proxy::start(cfg, rec).await {
            Ok(h) => sidecars.push((name, h)),
            Err(e) => {
                edge.shutdown().await;
                for (_, s) in sidecars {
                    s.shutdown().await;
                }
                return Err(RunError::Preflight(format!("sidecar {name}: {e}")));
            }
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let max_load = exp.meta.baseline + exp.meta.duration + Duration::from_secs(5);
    let load_task = match &exp.load {
        // Checked at preflight with the configured address; the bound
        // one differs only by port, so this cannot fail differently.
        Some(l) => match load_config(exp, l, edge.local_addr(), seed) {
            Ok(cfg) => {
                Some(tokio::spawn(crate::load::run(cfg, stop_rx.clone(), max_load)))
            }
            Err(e) => {
                edge.shutdown().await;
                for (_, s) in sidecars {
                    s.shutdown().await;
                }
                return Err(e);
            }
        },
        None => None,
    };
    let preflight_s = t_start.elapsed().as_secs_f64();
    trace.phase(otel::Phase::Baseline);
    progress.event(&format!(
        "proxy on {} ({} sidecar(s)); baseline {}",
        edge.local_addr(),
        sidecars.len(),
        format_duration(exp.meta.baseline)
    ));

    // ---- baseline
    let origin = recorder.origin();
    let ms = |d: Duration| d.as_millis() as u64;
    let mut outcome: Option<RunOutcome> = None;
    let baseline_end = origin.elapsed() + exp.meta.baseline;
    let mut abort: Option<AbortInfo> = None;
    while origin.elapsed() < baseline_end {
        if interrupted() {
            outcome = Some(RunOutcome::Interrupted);
            break;
        }
        if let Some(a) = halt_abort(origin.elapsed()) {
            progress.event(&format!("ABORT: {}", a.reason));
            abort = Some(a);
            outcome = Some(RunOutcome::Aborted);
            break;
        }
        let (c, e) = live(&recorder, Span { from_ms: 0, to_ms: u64::MAX });
        progress.status("baseline", origin.elapsed(), exp.meta.baseline, c, e, "");
        tokio::time::sleep(TICK).await;
    }
    let baseline_s = exp.meta.baseline.as_secs_f64();
    let inject_at = origin.elapsed();
    trace.phase(otel::Phase::Observe);
    let inject_wall = std::time::SystemTime::now();
    let window_end = inject_at + exp.meta.duration;
    let mut monitors =
        build_monitors(exp, &recorder, Span { from_ms: 0, to_ms: ms(inject_at) });
    let keys_at_inject = keys::KeyWindow::now(&recorder);

    // ---- inject + observe
    let mut env_error: Option<String> = None;
    let mut last_look = inject_at;
    let mut last_latency_ms = ms(inject_at);
    let mut observe_end = inject_at;
    if outcome.is_none() {
        progress.event(&format!(
            "injecting {} fault(s) over {}",
            schedule.len(),
            format_duration(exp.meta.duration)
        ));
    }
    // Guardrails are checked on their own task from the first fault on;
    // dropping the handle (any exit from the loop) stops it.
    let guardrail_task = guardrails
        .filter(|_| outcome.is_none())
        .map(|watch| watch.spawn(Duration::from_secs(1)));
    while outcome.is_none() {
        let now = origin.elapsed();
        observe_end = now;
        if interrupted() {
            outcome = Some(RunOutcome::Interrupted);
            break;
        }
        if now >= window_end {
            break;
        }
        if let Some(a) = halt_abort(now) {
            progress.event(&format!("ABORT: {}", a.reason));
            abort = Some(a);
            outcome = Some(RunOutcome::Aborted);
            break;
        }
        let rel = now - inject_at;
        // Faults due to start or stop.
        let mut http_changed = false;
        for sf in schedule.iter_mut() {
            let due_start = sf.applied_at.is_none() && rel >= sf.start && rel < sf.stop;
            let due_repeat = sf.reverted_at.is_none()
                && rel < sf.stop
                && sf.next_repeat.is_some_and(|t| rel >= t);
            if due_start || due_repeat {
                if due_repeat {
                    // The previous strike has nothing to undo (a kill); close
                    // its journal record before the next one opens.
                    if let (Some(old), Some(j)) = (sf.injector.as_mut(), journal.as_mut())
                    {
                        if let Err(e) = tokio::task::block_in_place(|| old.revert(j)) {
                            sf.revert_error = Some(e.to_string());
                        }
                    }
                }
                if let Some(infra_fault) = sf.infra.as_ref() {
                    // Resolve again now: the preflight resolution proved the
                    // targets existed; this one hits what exists at start time.
                    match fault::prepare(infra_fault, &ctx, &pre) {
                        Ok(fresh) => {
                            sf.description =
                                summarize(&fresh.describe(), sf.spec.kind.name());
                            sf.injector = Some(fresh);
                        }
                        Err(e) => {
                            env_error =
                                Some(format!("fault {} cannot start: {e}", sf.spec.id));
                            break;
                        }
                    }
                }
                if let Some(inj) = sf.injector.as_mut() {
                    let j =
                        journal.as_mut().expect("journal opened when infra faults exist");
                    let r = tokio::task::block_in_place(|| inj.inject(j));
                    sf.applied_at.get_or_insert(now);
                    if let FaultKind::ProcessKill { interval: Some(every), .. } =
                        sf.spec.kind
                    {
                        sf.next_repeat = Some(rel + every);
                    }
                    match r {
                        Ok(()) if due_repeat => {
                            trace.fault_repeated(&sf.spec.id);
                            progress.event(&format!(
                                "repeated {}: {}",
                                sf.spec.id, sf.description
                            ))
                        }
                        Ok(()) => {
                            platform.fault_applied(&sf.spec.kind);
                            trace.fault_applied(
                                &sf.spec.id,
                                sf.spec.kind.name(),
                                &sf.description,
                            );
                            progress.event(&format!(
                                "applied {}: {}",
                                sf.spec.id, sf.description
                            ))
                        }
                        Err(e) => {
                            env_error = Some(format!(
                                "fault {} failed to apply: {e}",
                                sf.spec.id
                            ));
                            break;
                        }
                    }
                } else if sf.http.is_some() {
                    sf.applied_at = Some(now);
                    platform.fault_applied(&sf.spec.kind);
                    trace.fault_applied(
                        &sf.spec.id,
                        sf.spec.kind.name(),
                        &sf.description,
                    );
                    http_changed = true;
                    progress
                        .event(&format!("applied {}: {}", sf.spec.id, sf.description));
                }
            } else if sf.applied_at.is_some()
                && sf.reverted_at.is_none()
                && rel >= sf.stop
            {
                revert_one(sf, &mut journal, now, &mut http_changed);
                platform.fault_reverted(&sf.spec.kind);
                trace.fault_reverted(&sf.spec.id, sf.revert_error.as_deref());
                progress.event(&format!("reverted {}", sf.spec.id));
            }
        }
        if http_changed {
            push_http_faults(&schedule, &edge, &sidecars);
        }
        if let Some(e) = env_error.as_ref() {
            progress.event(e);
            outcome = Some(RunOutcome::EnvironmentError);
            break;
        }
        // The abort watch, once a second.
        if now - last_look >= Duration::from_secs(1) {
            last_look = now;
            let control = recorder.snapshot(Cohort::Control);
            let experiment = recorder.snapshot(Cohort::Experiment);
            let span = Span { from_ms: ms(inject_at), to_ms: ms(now) + 1 };
            let effects =
                keys::KeyWindow::since(&recorder, &keys_at_inject).design_effects();
            if let Some(a) = watch_abort(
                exp,
                &mut monitors,
                (&control, &experiment),
                (span, effects),
                last_latency_ms,
                now,
            ) {
                progress.event(&format!(
                    "ABORT {:.1}s into the fault window: {}{}",
                    (now - inject_at).as_secs_f64(),
                    a.hypothesis.as_deref().map(|h| format!("{h}: ")).unwrap_or_default(),
                    a.reason
                ));
                abort = Some(a);
                outcome = Some(RunOutcome::Aborted);
                break;
            }
            if let Some(task) = guardrail_task.as_ref() {
                if let Some(g) = task.take_abort() {
                    let a = AbortInfo {
                        at_s: now.as_secs_f64(),
                        hypothesis: None,
                        reason: g.to_string(),
                        p_value: f64::NAN,
                        estimate: g.value().unwrap_or(f64::NAN),
                    };
                    progress.event(&format!("ABORT: {}", a.reason));
                    abort = Some(a);
                    outcome = Some(RunOutcome::Aborted);
                    break;
                }
            }
            last_latency_ms = ms(now);
            if exp.safety.abort_on_srm {
                let srm = srm_of(&recorder, exp);
                if srm.p_value < SRM_ABORT_P && srm.mismatch {
                    let a = AbortInfo {
                        at_s: now.as_secs_f64(),
                        hypothesis: None,
                        reason: format!(
                            "sample-ratio mismatch (chi2 {:.1}, p {:.2e}): cohorts are not \
                             comparable",
                            srm.chi2, srm.p_value
                        ),
                        p_value: srm.p_value,
                        estimate: srm.chi2,
                    };
                    progress.event(&format!("ABORT: {}", a.reason));
                    abort = Some(a);
                    outcome = Some(RunOutcome::Aborted);
                    break;
                }
            }
        }
        let (c, e) = live(&recorder, Span { from_ms: ms(inject_at), to_ms: u64::MAX });
        progress.status(
            "observe",
            now - inject_at,
            exp.meta.duration,
            c,
            e,
            &monitor_note(&monitors),
        );
        tokio::time::sleep(TICK).await;
    }
    let key_window = keys::KeyWindow::since(&recorder, &keys_at_inject);
    let observe_s = (observe_end.saturating_sub(inject_at)).as_secs_f64();
    let observe_end_wall = std::time::SystemTime::now();

    // ---- revert everything, whatever happened above.
    trace.aborted(abort.as_ref());
    trace.phase(otel::Phase::Revert);
    let revert_started = Instant::now();
    revert_all(&mut schedule, &mut journal, origin.elapsed(), &edge, &sidecars);
    // The gauge saturates at zero, so faults already reverted above are
    // not counted twice.
    for sf in schedule.iter().filter(|sf| sf.applied_at.is_some()) {
        platform.fault_reverted(&sf.spec.kind);
        trace.fault_reverted(&sf.spec.id, sf.revert_error.as_deref());
    }
    let revert_s = revert_started.elapsed().as_secs_f64();
    progress.event(&format!("reverted all faults in {:.3}s", revert_s));
    let checks = pods.checks;
    let check_results =
        tokio::task::spawn_blocking(move || checks.judge()).await.unwrap_or_default();
    for c in &check_results {
        progress.event(&c.text);
    }
    let _ = stop_tx.send(true);
    if let Some(t) = load_task {
        if let Some(e) =
            load_failure(tokio::time::timeout(Duration::from_secs(3), t).await)
        {
            progress.event(&e);
            outcome = outcome.or(Some(RunOutcome::EnvironmentError));
            env_error = env_error.or(Some(e));
        }
    }
    let control = recorder.snapshot(Cohort::Control);
    let experiment = recorder.snapshot(Cohort::Experiment);
    // Both split checks now, with the snapshots: shutting the proxy down
    // records the requests it abandons.
    let checks = crate::traffic::split_checks(
        &recorder,
        exp.traffic.control_fraction,
        exp.traffic.experiment_fraction,
    );
    let srm = checks.by_keys;
    edge.shutdown().await;
    for (_, s) in sidecars {
        s.shutdown().await;
    }
    progress.finish();

    // ---- verdicts over the observation window.
    trace.phase(otel::Phase::Verdict);
    let span = Span { from_ms: ms(inject_at), to_ms: ms(observe_end) + 1 };
    let verdict_seed = seed ^ 0x5EED_0FB0_07A1;
    // PromQL hypotheses: per-step values per cohort over the fault window,
    // once Prometheus has scraped its end (one step plus a second).
    let mut prom_data = Vec::new();
    let mut settled = false;
    for h in &exp.hypotheses {
        let (Metric::PromQl(q), Some(cfg)) = (&h.metric, &prom) else {
            prom_data.push(None);
            continue;
        };
        if !settled {
            tokio::time::sleep(cfg.step + Duration::from_secs(1)).await;
            settled = true;
        }
        let s = crate::promql::cohort_samples(cfg, q, inject_wall, observe_end_wall)
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
                .then(|| keys::key_data(&shape, &control, &experiment, span, &key_window))
                .flatten();
            let data = prom_data.unwrap_or_else(|| {
                window::cohort_data(shape, &control, &experiment, span)
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
    let aborted = abort.is_some();
    // STATISTICS.md §1: a broken split makes every comparison suspect, so
    // no hypothesis can be accepted or rejected on it.
    let verdicts =
        if srm.mismatch && !aborted { srm_gate(verdicts, &srm) } else { verdicts };
    let (verdicts, overall) = stats::judge_experiment(verdicts, exp.meta.alpha, aborted);
    let outcome = outcome.unwrap_or(match overall {
        Verdict::Accepted => RunOutcome::Accepted,
        Verdict::Rejected => RunOutcome::Rejected,
        Verdict::Inconclusive => RunOutcome::Inconclusive,
    });
    let outcome = k8s_checks_outcome(outcome, &check_results, &mut warnings);
    if srm.mismatch {
        warnings.push(format!(
            "sample-ratio mismatch: the cohorts' shares of distinct keys are off the \
             configured split (chi2 {:.1}, p {:.2e}); check the split and whether one \
             cohort's requests go unrecorded",
            srm.chi2, srm.p_value
        ));
    } else if let Some(w) = request_imbalance_warning(&checks.by_requests) {
        warnings.push(w);
    }
    if let Some(e) = env_error {
        warnings.push(e);
    }

    if abort.is_some() {
        platform.abort();
    }
    let verdict_list: Vec<Verdict> = verdicts.iter().map(|v| v.verdict).collect();
    platform.run_finished(outcome, &verdict_list, t_start.elapsed());
    let report = RunReport {
        schema_version: SCHEMA_VERSION,
        run_id,
        experiment: ExperimentInfo {
            name: exp.meta.name.clone(),
            description: exp.meta.description.clone(),
            file: exp.file.display().to_string(),
            duration_s: exp.meta.duration.as_secs_f64(),
        },
        outcome,
        started_at,
        finished_at: now_rfc3339(),
        timings: Timings {
            preflight_s,
            baseline_s,
            observe_s,
            revert_s,
            total_s: t_start.elapsed().as_secs_f64(),
        },
        abort,
        faults: schedule.iter().map(fault_record).collect(),
        hypotheses: exp
            .hypotheses
            .iter()
            .zip(&verdicts)
            .map(|(h, v)| hypothesis_result(h, v))
            .collect(),
        cohorts: vec![
            window::cohort_series(Cohort::Control, &control),
            window::cohort_series(Cohort::Experiment, &experiment),
        ],
        srm: Some(SrmInfo {
            chi2: srm.chi2,
            p_value: srm.p_value,
            mismatch: srm.mismatch,
            unit: crate::report::SrmUnit::Keys,
        }),
        warnings,
        trace: None,
    };
    Ok(report)
}

/// Connects to the cluster of the experiment's `[kubernetes]` section
/// (if any) and resolves its pod faults; nothing is changed.
fn k8s_prepare(
    exp: &Experiment,
    seed: u64,
    dry_run: bool,
) -> Result<crate::k8s::inject::Prepared, RunError> {
    crate::k8s::inject::prepare(exp, seed, dry_run)
        .map_err(|e| RunError::Preflight(format!("kubernetes: {e}")))
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

/// A one-line summary of an injector's plan for reports: the resolved
/// targets and the first action, without the selection preamble.
/// No experiment starts while `chaos halt` is in force (exit 5).
fn refuse_if_halted() -> Result<(), RunError> {
    match crate::halt::check_default() {
        Some(h) => Err(RunError::Preflight(format!(
            "{h}; nothing was started (run `chaos resume` to allow experiments again)"
        ))),
        None => Ok(()),
    }
}

/// A halt set while running aborts the run: every fault is reverted and
/// the run ends as aborted (exit 3) with the halt as its reason.
fn halt_abort(now: Duration) -> Option<AbortInfo> {
    crate::halt::check_default().map(|h| AbortInfo {
        at_s: now.as_secs_f64(),
        hypothesis: None,
        reason: h.to_string(),
        p_value: f64::NAN,
        estimate: f64::NAN,
    })
}

fn summarize(lines: &[String], kind: &str) -> String {
    lines
        .iter()
        .map(|l| l.trim().trim_end_matches(':'))
        .filter(|l| {
            !l.is_empty() && !l.starts_with(kind) && !l.contains("selection seed")
        })
        .take(2)
        .collect::<Vec<_>>()
        .join("; ")
}

fn live(recorder: &Recorder, span: Span) -> (CohortLive, CohortLive) {
    let one = |c: Cohort| {
        let s = recorder.snapshot(c);
        let counts = window::counts(&s, span);
        CohortLive {
            requests: counts.total,
            errors: counts.events,
            p50_ms: s
                .windows
                .iter()
                .rev()
                .find(|w| w.requests > 0)
                .map(|w| w.p50_ms)
                .unwrap_or(0.0),
        }
    };
    (one(Cohort::Control), one(Cohort::Experiment))
}

/// Every configured upstream must accept a TCP connection before anything
/// starts (exit 5 otherwise), so a typo never looks like a failed service.
/// All are probed at once on the runtime (no blocking connects), each
/// address with a 2 s timeout, so a fleet of unreachable upstreams costs
/// 2 s, not 2 s each.
async fn check_upstreams(exp: &Experiment) -> Result<(), RunError> {
    let t = &exp.traffic;
    let mut urls: Vec<String> = Vec::new();
    for list in [&t.upstreams, &t.control_upstreams, &t.experiment_upstreams] {
        urls.extend(list.iter().map(|u| u.url.clone()));
    }
    for s in &t.sidecars {
        for list in [&s.upstreams, &s.control_upstreams, &s.experiment_upstreams] {
            urls.extend(list.iter().map(|u| u.url.clone()));
        }
    }
    // Spawned first so they all run at once; awaited in the file's order so
    // the first failing upstream is the one reported.
    let probes: Vec<_> = urls
        .iter()
        .map(|url| {
            let authority = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            tokio::spawn(async move { probe_upstream(&authority).await })
        })
        .collect();
    for (url, probe) in urls.iter().zip(probes) {
        let why = match probe.await {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(e) => format!("could not be probed ({e})"),
        };
        return Err(RunError::Preflight(format!(
            "upstream {url} {why}; start the service (or the demo fleet) first — nothing \
             was injected"
        )));
    }
    Ok(())
}

/// Ok when some address of `authority` (host:port) accepts a connection.
async fn probe_upstream(authority: &str) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("cannot be resolved ({e})"))?
        .collect();
    for a in &addrs {
        let connect = tokio::net::TcpStream::connect(a);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            return Ok(());
        }
    }
    Err("is not accepting connections".into())
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
fn srm_of(recorder: &Recorder, exp: &Experiment) -> crate::traffic::SrmResult {
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

fn push_http_faults(
    schedule: &[ScheduledFault],
    edge: &ProxyHandle,
    sidecars: &[(String, ProxyHandle)],
) {
    let active = |at: &str| -> Vec<HttpFault> {
        schedule
            .iter()
            .filter(|sf| {
                sf.spec.at == at && sf.applied_at.is_some() && sf.reverted_at.is_none()
            })
            .filter_map(|sf| sf.http.clone())
            .collect()
    };
    edge.set_faults(active("edge"));
    for (name, h) in sidecars {
        h.set_faults(active(name));
    }
}

fn revert_one(
    sf: &mut ScheduledFault,
    journal: &mut Option<Journal>,
    now: Duration,
    http_changed: &mut bool,
) {
    if let Some(inj) = sf.injector.as_mut() {
        if let Some(j) = journal.as_mut() {
            if let Err(e) = tokio::task::block_in_place(|| inj.revert(j)) {
                sf.revert_error = Some(e.to_string());
            }
        }
    } else if sf.http.is_some() {
        *http_changed = true;
    }
    sf.reverted_at = Some(now);
}

/// Reverts every applied fault, newest first (undo in reverse order of
/// application, as layered faults must be peeled).
fn revert_all(
    schedule: &mut [ScheduledFault],
    journal: &mut Option<Journal>,
    now: Duration,
    edge: &ProxyHandle,
    sidecars: &[(String, ProxyHandle)],
) {
    let mut http_changed = false;
    let mut order: Vec<usize> = (0..schedule.len())
        .filter(|&i| {
            schedule[i].applied_at.is_some() && schedule[i].reverted_at.is_none()
        })
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(schedule[i].applied_at));
    for i in order {
        revert_one(&mut schedule[i], journal, now, &mut http_changed);
    }
    // Always clear proxy faults, even if bookkeeping says none are active.
    edge.set_faults(Vec::new());
    for (_, h) in sidecars {
        h.set_faults(Vec::new());
    }
}

/// Times are seconds since traffic start (the recorder's origin), the
/// axis every report timeline uses.
fn fault_record(sf: &ScheduledFault) -> FaultRecord {
    let rel = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    FaultRecord {
        id: sf.spec.id.clone(),
        kind: sf.spec.kind.name().to_string(),
        target: match (&sf.spec.target, &sf.spec.kind) {
            (Some(t), _) => t.to_string(),
            (None, FaultKind::RegionOutage { region, .. }) => format!("region:{region}"),
            (None, _) => format!("experiment cohort @ {}", sf.spec.at),
        },
        description: sf.description.clone(),
        applied_at_s: rel(sf.applied_at),
        reverted_at_s: rel(sf.reverted_at),
        revert_error: sf.revert_error.clone(),
    }
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
    use super::*;

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
