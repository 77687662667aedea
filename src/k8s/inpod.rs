//! Faults inside a pod's container (`container-kill`, `process-pause`,
//! `packet-loss`, `blackhole`, `bandwidth`, `netem` in
//! `[[kubernetes.fault]]`): the controller resolves each chosen pod to
//! its container ID (`status.containerStatuses[].containerID`) and its
//! node, finds the `chaos agent` DaemonSet pod on that node, execs
//! `chaos agent --stdio` there ([`super::exec`]) and applies the fault
//! with the target `container:RUNTIME://ID`; the agent finds the
//! container's processes and network namespace itself
//! (`target::container`, `fault::container`).
//!
//! The agent journals what to undo on its node and holds the lease:
//! a controller that dies or loses the exec stream leaves nothing
//! behind. The controller's journal gets an audit record per pod, and
//! `kubectl exec` of `chaos recover` in the agent pod settles an agent
//! that died (its journal is on a hostPath).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::PodRef;
use super::client::Kube;
use super::exec::{self, AgentPod};
use super::inject::{choose_pods, LastKill};
use super::select::Radius;
use super::spec::{InPodFault, PodFault, Settings};
use super::K8sError;
use crate::agent::client::AgentClient;
use crate::agent::protocol::{millis, Request, Response, DEFAULT_LEASE};
use crate::agent::wire::{WireContext, WireFault};
use crate::fault::{FaultError, Injector};
use crate::journal::{Journal, RevertAction};
use crate::target::container::ContainerId;

/// One in-pod fault of a run.
pub struct InPod {
    kube: Arc<Kube>,
    id: String,
    fault: PodFault,
    inside: InPodFault,
    agent_namespace: String,
    agent_selector: String,
    radius: Radius,
    seed: u64,
    lease: Duration,
    lines: Vec<String>,
    /// One agent connection per node, opened on first use.
    agents: BTreeMap<String, AgentClient>,
    /// (node, agent handle, what) of each applied fault.
    applied: Vec<(String, u64, String)>,
    last_kill: LastKill,
}

/// The pod's target container: (name, parsed ID).
pub fn container_of(
    pod: &PodRef,
    name: Option<&str>,
) -> Result<(String, ContainerId), K8sError> {
    let found = match name {
        Some(n) => pod.containers.iter().find(|(c, _)| c == n),
        None => pod.containers.first(),
    };
    let Some((cname, id)) = found else {
        let names: Vec<&str> = pod.containers.iter().map(|(c, _)| c.as_str()).collect();
        return Err(K8sError::Target(format!(
            "pod {pod} has no container {:?} (containers: {})",
            name.unwrap_or("(any)"),
            names.join(", ")
        )));
    };
    let Some(id) = id else {
        return Err(K8sError::Target(format!(
            "container {cname} of pod {pod} has not started (no containerID in its status)"
        )));
    };
    let parsed = ContainerId::parse(id)
        .map_err(|e| K8sError::Target(format!("container {cname} of pod {pod}: {e}")))?;
    Ok((cname.clone(), parsed))
}

/// The fault with its target set to one container.
pub fn aimed(wire: &WireFault, c: &ContainerId) -> WireFault {
    let mut w = wire.clone();
    match &mut w {
        WireFault::ProcessKill { target, .. }
        | WireFault::ProcessPause { target, .. }
        | WireFault::Netem { target, .. }
        | WireFault::PacketLoss { target, .. }
        | WireFault::Blackhole { target, .. }
        | WireFault::TcpReset { target, .. }
        | WireFault::Bandwidth { target, .. } => *target = format!("container:{c}"),
        WireFault::RegionOutage { .. } => {}
    }
    w
}

fn node_of(pod: &PodRef) -> Result<&str, K8sError> {
    pod.node.as_deref().ok_or_else(|| {
        K8sError::Target(format!("pod {pod} is not scheduled on a node yet"))
    })
}

fn agent_error(node: &str, e: impl std::fmt::Display) -> FaultError {
    FaultError::Command {
        command: format!("chaos agent on node {node}"),
        stderr: e.to_string(),
    }
}

/// A run id the agent can use in nft table names: the controller
/// journal's file name (the run id), reduced to the safe characters.
fn run_id_of(journal: &Journal) -> String {
    let stem = journal
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(48)
        .collect();
    if id.is_empty() {
        "k8s".into()
    } else {
        id
    }
}

impl InPod {
    /// Resolves the pods, their containers and agents for the plan
    /// (`fault.inside` says what to do in them).
    pub fn prepare(
        kube: Arc<Kube>,
        id: &str,
        fault: &PodFault,
        settings: &Settings,
        radius: Radius,
        seed: u64,
        last_kill: LastKill,
    ) -> Result<InPod, K8sError> {
        let inside = fault.inside.as_ref().ok_or_else(|| {
            K8sError::Target(format!(
                "fault {id} is a pod-kill, not a fault inside a pod"
            ))
        })?;
        let mut me = InPod {
            kube,
            id: id.to_string(),
            fault: fault.clone(),
            inside: inside.clone(),
            agent_namespace: settings.agent_namespace.clone(),
            agent_selector: settings.agent_selector.clone(),
            radius,
            seed,
            lease: DEFAULT_LEASE,
            lines: Vec::new(),
            agents: BTreeMap::new(),
            applied: Vec::new(),
            last_kill,
        };
        me.lines = me.plan()?;
        Ok(me)
    }

    fn plan(&self) -> Result<Vec<String>, K8sError> {
        let before = self.kube.calls().len();
        let (pods, matched, capped) =
            choose_pods(&self.kube, &self.fault, self.radius, self.seed, &self.id)?;
        if pods.is_empty() {
            return Err(K8sError::Target(format!(
                "fault {}: no running pod matches {} on {}",
                self.id, self.fault.target, self.kube.server
            )));
        }
        let mut lines = vec![format!(
            "{}: {matched} pod(s) match, mode {} → {} pod(s){}; {} inside container {} \
             through the chaos agent on each pod's node",
            self.fault.target,
            self.fault.mode.describe(),
            pods.len(),
            if capped { " (capped by the blast radius)" } else { "" },
            self.inside.kind,
            self.inside.container.as_deref().unwrap_or("(the first)"),
        )];
        let mut agents: BTreeMap<String, AgentPod> = BTreeMap::new();
        let mut targets = Vec::new();
        for pod in &pods {
            let (cname, cid) = container_of(pod, self.inside.container.as_deref())?;
            let node = node_of(pod)?.to_string();
            if !agents.contains_key(&node) {
                let a = exec::find_agent(
                    &self.kube,
                    &self.agent_namespace,
                    &self.agent_selector,
                    &node,
                )?;
                agents.insert(node.clone(), a);
            }
            let agent = &agents[&node];
            lines.push(format!(
                "pod {pod}: container {cname} ({}) via agent pod {}/{}: {} on container:{cid}",
                cid.short(),
                agent.namespace,
                agent.name,
                self.inside.kind,
            ));
            targets.push(agent.clone());
        }
        let calls = self.kube.calls();
        lines.extend(calls[before..].iter().map(|c| format!("api: {c}")));
        targets.dedup();
        for a in targets {
            lines.push(format!(
                "will call: POST /api/v1/namespaces/{}/pods/{}/exec?container=agent&\
                 command=chaos&command=agent&command=--stdio&command=--lease&command={}ms \
                 (WebSocket)",
                a.namespace,
                a.name,
                millis(self.lease)
            ));
        }
        Ok(lines)
    }

    /// The agent on `node`, connected on first use.
    fn agent(&mut self, node: &str) -> Result<&AgentClient, K8sError> {
        if !self.agents.contains_key(node) {
            let pod = exec::find_agent(
                &self.kube,
                &self.agent_namespace,
                &self.agent_selector,
                node,
            )?;
            let (client, info) = exec::connect(&self.kube, &pod, self.lease)?;
            tracing::info!(node, agent = %pod.name, version = %info.version, "agent connected");
            self.agents.insert(node.to_string(), client);
        }
        Ok(&self.agents[node])
    }

    fn apply_one(
        &mut self,
        pod: &PodRef,
        ctx: &WireContext,
    ) -> Result<String, FaultError> {
        let k8s = |e: K8sError| agent_error(pod.node.as_deref().unwrap_or("?"), e);
        let (cname, cid) =
            container_of(pod, self.inside.container.as_deref()).map_err(k8s)?;
        let node = node_of(pod).map_err(k8s)?.to_string();
        let wire = aimed(&self.inside.wire, &cid);
        let label =
            format!("{} {} in {pod} container {cname}", self.id, self.inside.kind);
        let lease_ms = millis(self.lease);
        let client = self.agent(&node).map_err(k8s)?;
        let answer = client
            .call(|id| Request::Apply {
                id,
                label: label.clone(),
                fault: wire,
                context: ctx.clone(),
                lease_ms: Some(lease_ms),
            })
            .map_err(|e| agent_error(&node, e))?;
        match answer {
            Response::Applied { handle, .. } => {
                self.applied.push((node, handle, label.clone()));
                Ok(label)
            }
            Response::Error { message, .. } => Err(agent_error(&node, message)),
            other => Err(agent_error(&node, format!("unexpected answer {other:?}"))),
        }
    }
}

impl Injector for InPod {
    fn describe(&self) -> Vec<String> {
        self.lines.clone()
    }

    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        // Pods come and go: choose again now, with the same seed.
        let (pods, _, _) =
            choose_pods(&self.kube, &self.fault, self.radius, self.seed, &self.id)
                .map_err(|e| agent_error("(none)", e))?;
        if pods.is_empty() {
            return Err(agent_error(
                "(none)",
                format!("no running pod matches {}", self.fault.target),
            ));
        }
        let ctx = WireContext {
            seed: self.seed,
            run_id: run_id_of(journal),
            ..Default::default()
        };
        for pod in &pods {
            // Audit only: the agent on the node journals what to undo.
            let rec = journal.record_apply(
                &format!("{} {} in pod {pod}", self.id, self.inside.kind),
                None,
                RevertAction::Nothing {
                    note: format!(
                        "journalled and reverted by the chaos agent on node {} (lease); \
                         `kubectl exec -n {} <agent pod> -- chaos recover` settles a dead agent",
                        pod.node.as_deref().unwrap_or("?"),
                        self.agent_namespace
                    ),
                },
            )?;
            journal.record_reverted(rec, None)?;
            if let Err(e) = self.apply_one(pod, &ctx) {
                let _ = self.revert(journal);
                return Err(e);
            }
        }
        if self.inside.kind == "container-kill" {
            self.last_kill.killed(Instant::now());
        }
        Ok(())
    }

    fn revert(&mut self, _journal: &mut Journal) -> Result<(), FaultError> {
        let mut first = None;
        while let Some((node, handle, label)) = self.applied.pop() {
            let Some(client) = self.agents.get(&node) else { continue };
            match client.call(|id| Request::Revert { id, handle: Some(handle) }) {
                Ok(Response::Reverted { .. }) => {
                    tracing::info!(%label, node, "reverted by the agent");
                }
                Ok(Response::Error { message, .. }) => {
                    first.get_or_insert(agent_error(&node, message));
                }
                Ok(other) => {
                    first.get_or_insert(agent_error(&node, format!("{other:?}")));
                }
                // The agent reverts by itself when the stream is gone.
                Err(e) => {
                    first.get_or_insert(agent_error(&node, e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
