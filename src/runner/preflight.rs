//! Preflight: everything checked before anything changes — `chaos halt`,
//! the fault plan (local, remote hosts, pods) with each target resolved,
//! the load config, every upstream, Prometheus, the journal. A failure is
//! a [`RunError`] and nothing was injected. `--dry-run` is the same plan,
//! printed.

use std::net::SocketAddr;
use std::time::Duration;

use super::progress::Progress;
use super::rig::load_config;
use super::schedule::{Schedule, ScheduledFault};
use super::{plan, remote, RunError, RunOptions};
use crate::experiment::{Experiment, FaultKind};
use crate::fault::{self, InfraFault, Injector, Session};
use crate::journal::Journal;
use crate::promql::{GuardrailWatch, PromConfig};
use crate::units::format_duration;

/// A run that passed preflight: its fault schedule (owning the journal
/// session) and what the later phases need.
pub struct Ready {
    pub schedule: Schedule,
    /// Preflight warnings (more are added as the run goes).
    pub warnings: Vec<String>,
    /// Prometheus, for PromQL hypotheses and guardrails.
    pub prom: Option<PromConfig>,
    pub guardrails: Option<GuardrailWatch>,
    /// The self-healing checks of pod faults.
    pub checks: crate::k8s::inject::Checks,
}

/// Checks everything in the file's order of cost (local data first, then
/// hosts and the network) and prepares every fault; nothing is changed.
pub async fn check(
    exp: &Experiment,
    opts: &RunOptions,
    seed: u64,
    run_id: &str,
    progress: &mut Progress,
) -> Result<Ready, RunError> {
    refuse_if_halted()?;
    let (infra, ctx) = infra_plan(exp, seed, run_id)?;
    let infra_only: Vec<InfraFault> = infra.iter().map(|(_, f)| f.clone()).collect();
    let pre =
        fault::preflight(&infra_only, &ctx).map_err(RunError::fault(String::new()))?;
    if let Some(l) = &exp.load {
        load_config(exp, l, exp.traffic.listen, seed)?;
    }
    let warnings = pre.warnings.clone();
    for w in &pre.warnings {
        progress.event(&format!("warning: {w}"));
    }
    let mut remote_faults = remote::prepare(exp, &ctx)?;
    let mut pods = k8s_prepare(exp, seed, false)?;
    let mut faults = Vec::new();
    for f in &exp.faults {
        let sf = ScheduledFault::new(f, exp.meta.duration);
        let sf = if let Some((_, i)) = infra.iter().find(|(id, _)| id == &f.id) {
            let inj = fault::prepare(i, &ctx, &pre)
                .map_err(RunError::fault(format!("fault {}: ", f.id)))?;
            sf.with_injector(inj, Some(i.clone()))
        } else if let Some(rf) = remote_faults.remove(&f.id) {
            sf.with_injector(Box::new(rf), None)
        } else if let Some(pk) = pods.faults.remove(&f.id) {
            sf.with_injector(Box::new(pk), None)
        } else {
            sf
        };
        faults.push(sf);
    }
    check_upstreams(exp).await?;
    // PromQL hypotheses and guardrails need Prometheus: unreachable = exit 5.
    let prom = exp.prometheus.as_ref().map(PromConfig::from);
    if let Some(cfg) = &prom {
        crate::promql::check_reachable(cfg)
            .await
            .map_err(|e| RunError::Preflight(e.to_string()))?;
    }
    let guardrails = prom
        .clone()
        .filter(|_| !exp.guardrails.is_empty())
        .map(|cfg| GuardrailWatch::new(cfg, exp.guardrails.clone()));
    let session =
        if infra.is_empty() && !remote::any(exp) && !crate::k8s::inject::any(exp) {
            None
        } else {
            let journal = Journal::open(&opts.journal_dir, run_id)
                .map_err(|e| RunError::Preflight(format!("journal: {e}")))?;
            Some(Session::new(journal))
        };
    Ok(Ready {
        schedule: Schedule::new(faults, session, ctx, pre),
        warnings,
        prom,
        guardrails,
        checks: pods.checks,
    })
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

/// No experiment starts while `chaos halt` is in force (exit 5).
fn refuse_if_halted() -> Result<(), RunError> {
    match crate::halt::check_default() {
        Some(h) => Err(RunError::Preflight(format!(
            "{h}; nothing was started (run `chaos resume` to allow experiments again)"
        ))),
        None => Ok(()),
    }
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
