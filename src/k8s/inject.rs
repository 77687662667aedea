//! Pod faults in the runner's fault schedule: each `[[kubernetes.fault]]`
//! becomes a `fault::Injector` (describe / inject / revert) like a local
//! or remote fault, and each `[[kubernetes.check]]` is watched from the
//! moment of each kill and judged after the faults: the workload must be
//! back at its desired ready replicas within the bound after the last
//! kill (`heal`).
//!
//! A kill cannot be undone: the journal gets one audit record per pod
//! (`RevertAction::Nothing`), already settled, so `chaos recover` has
//! nothing to do for it and the trail says which pods were hit. The
//! pod's controller (ReplicaSet, StatefulSet) brings a replacement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::api::{self, Killed, PodRef};
use super::client::Kube;
use super::heal::Healing;
use super::inpod::InPod;
use super::select::{self, Radius};
use super::spec::{KillMethod, PodFault, Settings};
use super::K8sError;
use crate::experiment::model::{Experiment, FaultKind};
use crate::fault::{FaultError, Injector};
use crate::journal::{Journal, RevertAction};

/// True when the experiment has Kubernetes faults or checks.
pub fn any(exp: &Experiment) -> bool {
    exp.kubernetes.as_ref().is_some_and(|k| !k.checks.is_empty())
        || exp.faults.iter().any(|f| matches!(f.kind, FaultKind::Kubernetes(_)))
}

/// The checks' watchers, told of every kill by the faults.
pub(super) type LastKill = Arc<Healing>;

/// One pod fault, ready to strike.
pub struct PodKill {
    kube: Arc<Kube>,
    id: String,
    fault: PodFault,
    radius: Radius,
    seed: u64,
    lines: Vec<String>,
    last_kill: LastKill,
}

/// A pod fault of either sort, as the runner's schedule holds it.
pub enum PodInjector {
    /// Delete or evict pods through the API.
    Kill(Box<PodKill>),
    /// A fault inside the pods' containers, through the node agents.
    Inside(Box<InPod>),
}

impl Injector for PodInjector {
    fn describe(&self) -> Vec<String> {
        match self {
            PodInjector::Kill(k) => k.describe(),
            PodInjector::Inside(i) => i.describe(),
        }
    }

    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        match self {
            PodInjector::Kill(k) => k.inject(journal),
            PodInjector::Inside(i) => i.inject(journal),
        }
    }

    fn revert(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        match self {
            PodInjector::Kill(k) => k.revert(journal),
            PodInjector::Inside(i) => i.revert(journal),
        }
    }
}

/// Every Kubernetes fault of a run, by fault id, and the checks.
pub struct Prepared {
    pub faults: BTreeMap<String, PodInjector>,
    pub checks: Checks,
}

/// The self-healing checks of a run.
pub struct Checks {
    healing: Arc<Healing>,
}

fn fault_seed(seed: u64, id: &str) -> u64 {
    // FNV-1a of the id: each fault draws its own pods, stable per seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

/// The pods a fault would hit now: (chosen, how many matched, capped by
/// the blast radius).
pub(super) fn choose_pods(
    kube: &Kube,
    fault: &PodFault,
    radius: Radius,
    seed: u64,
    id: &str,
) -> Result<(Vec<PodRef>, usize, bool), K8sError> {
    let pods = api::list_pods(kube, &fault.target)?;
    let (idx, capped) =
        select::choose(pods.len(), fault.mode, radius, fault_seed(seed, id));
    let n = pods.len();
    Ok((idx.into_iter().map(|i| pods[i].clone()).collect(), n, capped))
}

impl PodKill {
    /// The pods this fault would hit now.
    fn choose(&self) -> Result<(Vec<PodRef>, usize, bool), K8sError> {
        choose_pods(&self.kube, &self.fault, self.radius, self.seed, &self.id)
    }

    fn kill(&self, pod: &PodRef, dry_run: bool) -> Result<Killed, K8sError> {
        match self.fault.method {
            KillMethod::Delete => {
                api::delete_pod(&self.kube, pod, self.fault.grace_period, dry_run)
            }
            KillMethod::Evict => {
                api::evict_pod(&self.kube, pod, self.fault.grace_period, dry_run)
            }
        }
    }

    fn method_text(&self) -> String {
        let grace = match self.fault.grace_period {
            Some(g) => format!("grace period {}s", g.as_secs()),
            None => "the pod's own grace period".into(),
        };
        match self.fault.method {
            KillMethod::Delete => format!("delete, {grace}"),
            KillMethod::Evict => format!("evict (PodDisruptionBudgets apply), {grace}"),
        }
    }
}

fn k8s_fault_error(e: K8sError) -> FaultError {
    FaultError::Command { command: "kubernetes API".into(), stderr: e.to_string() }
}

impl Injector for PodKill {
    fn describe(&self) -> Vec<String> {
        self.lines.clone()
    }

    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        // Pods come and go: choose again now, with the same seed.
        let (pods, _, _) = self.choose().map_err(k8s_fault_error)?;
        if pods.is_empty() {
            return Err(k8s_fault_error(K8sError::Target(format!(
                "no running pod matches {}",
                self.fault.target
            ))));
        }
        for pod in &pods {
            // Audit only: a deleted pod cannot be brought back; its
            // controller replaces it.
            let rec = journal.record_apply(
                &format!("{} pod-kill {} ({})", self.id, pod, self.method_text()),
                None,
                RevertAction::Nothing {
                    note: "pod deleted through the Kubernetes API; its controller \
                           replaces it"
                        .into(),
                },
            )?;
            let outcome = self.kill(pod, false);
            journal.record_reverted(rec, None)?;
            match outcome.map_err(k8s_fault_error)? {
                Killed::Yes => {
                    tracing::info!(fault = %self.id, pod = %pod, "pod killed");
                }
                Killed::AlreadyGone => {
                    tracing::info!(fault = %self.id, pod = %pod, "pod already gone");
                }
                Killed::RefusedByBudget(msg) => {
                    tracing::warn!(fault = %self.id, pod = %pod, "eviction refused by a PodDisruptionBudget: {msg}");
                    eprintln!(
                        "fault {}: eviction of {pod} refused by a PodDisruptionBudget (the pod \
                         lives): {msg}",
                        self.id
                    );
                }
            }
        }
        // The bound runs from the last kill: watching starts now.
        self.last_kill.killed(Instant::now());
        Ok(())
    }

    fn revert(&mut self, _journal: &mut Journal) -> Result<(), FaultError> {
        // Nothing to undo; the checks judge whether the workload healed.
        Ok(())
    }
}

/// Connects to the cluster, resolves every pod fault's pods and, for a
/// dry run, asks the server to dry-run each kill (`dryRun=All`) when
/// `server_dry_run` is on. Nothing is changed.
pub fn prepare(exp: &Experiment, seed: u64, dry_run: bool) -> Result<Prepared, K8sError> {
    let Some(settings) = exp.kubernetes.as_ref().filter(|_| any(exp)) else {
        return Ok(Prepared {
            faults: BTreeMap::new(),
            checks: Checks { healing: Arc::new(Healing::new(None, Vec::new())) },
        });
    };
    let kube = Arc::new(Kube::connect(settings)?);
    let last_kill: LastKill =
        Arc::new(Healing::new(Some(kube.clone()), settings.checks.clone()));
    let radius = Radius {
        max_targets: exp.safety.max_targets,
        max_fraction: exp.safety.max_target_fraction,
    };
    let mut faults = BTreeMap::new();
    for f in &exp.faults {
        let FaultKind::Kubernetes(pf) = &f.kind else { continue };
        if pf.inside.is_some() {
            let ip = InPod::prepare(
                kube.clone(),
                &f.id,
                pf,
                settings,
                radius,
                seed,
                last_kill.clone(),
            )?;
            faults.insert(f.id.clone(), PodInjector::Inside(Box::new(ip)));
            continue;
        }
        let mut pk = PodKill {
            kube: kube.clone(),
            id: f.id.clone(),
            fault: pf.clone(),
            radius,
            seed,
            lines: Vec::new(),
            last_kill: last_kill.clone(),
        };
        pk.lines = plan_lines(&pk, settings, dry_run)?;
        faults.insert(f.id.clone(), PodInjector::Kill(Box::new(pk)));
    }
    // Readiness is readable now, or the checks cannot be judged later.
    for c in &settings.checks {
        api::replicas(&kube, &c.target)?;
    }
    Ok(Prepared { faults, checks: Checks { healing: last_kill } })
}

fn plan_lines(
    pk: &PodKill,
    settings: &Settings,
    dry_run: bool,
) -> Result<Vec<String>, K8sError> {
    let before = pk.kube.calls().len();
    let (pods, matched, capped) = pk.choose()?;
    if pods.is_empty() {
        return Err(K8sError::Target(format!(
            "fault {}: no running pod matches {} on {}",
            pk.id, pk.fault.target, pk.kube.server
        )));
    }
    let mut lines = vec![format!(
        "{}: {matched} pod(s) match, mode {} → {} pod(s){}; {}",
        pk.fault.target,
        pk.fault.mode.describe(),
        pods.len(),
        if capped { " (capped by the blast radius)" } else { "" },
        pk.method_text()
    )];
    lines.extend(pods.iter().map(|p| format!("pod {p}")));
    let mut server_note = None;
    if dry_run && settings.server_dry_run {
        for p in &pods {
            match pk.kill(p, true) {
                Ok(Killed::Yes) => {}
                Ok(Killed::AlreadyGone) => lines.push(format!("server dry run: {p} is already gone")),
                Ok(Killed::RefusedByBudget(m)) => lines.push(format!(
                    "server dry run: eviction of {p} would be refused by a PodDisruptionBudget: {m}"
                )),
                Err(K8sError::Api { status: 400 | 405 | 415, .. }) => {
                    server_note = Some("the server does not support dryRun=All; calls listed only");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if server_note.is_none() {
            server_note = Some("server dry run (dryRun=All): accepted, nothing changed");
        }
    }
    let calls = pk.kube.calls();
    lines.extend(calls[before..].iter().map(|c| format!("api: {c}")));
    if !dry_run || !settings.server_dry_run {
        // What the run would send.
        for p in &pods {
            let path = format!("/api/v1/namespaces/{}/pods/{}", p.namespace, p.name);
            lines.push(match pk.fault.method {
                KillMethod::Delete => format!("will call: DELETE {path}"),
                KillMethod::Evict => format!("will call: POST {path}/eviction"),
            });
        }
    }
    if let Some(n) = server_note {
        lines.push(n.to_string());
    }
    Ok(lines)
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub text: String,
    pub passed: bool,
}

impl Checks {
    /// Descriptions for the dry run.
    pub fn describe(&self) -> Vec<String> {
        self.healing
            .checks()
            .iter()
            .map(|c| {
                format!(
                    "check ready_replicas {}: back at desired ready replicas within {}s of the last kill (watched from the kill)",
                    c.target,
                    c.within.as_secs_f64()
                )
            })
            .collect()
    }

    /// Judges each check: what its watcher saw within the bound after
    /// the last kill, or, when nothing was killed, a wait from now
    /// within the bound (`heal`).
    pub fn judge(&self) -> Vec<CheckResult> {
        self.healing.judge()
    }
}
