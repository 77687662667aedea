//! The `[kubernetes]` section of an experiment file: how to reach the
//! cluster, pod faults (`[[kubernetes.fault]]`) and self-healing checks
//! (`[[kubernetes.check]]`). Kept in a section of its own so the
//! Kubernetes vocabulary (modes, grace periods, eviction) stays out of
//! the process/network fault tables; its faults join the experiment's
//! fault schedule like any other.
//!
//! ```toml
//! [kubernetes]
//! context = "kind-chaos"             # optional; kubectl's resolution otherwise
//! [[kubernetes.fault]]
//! kind = "pod-kill"
//! target = "deployment:shop/checkout"
//! mode = "fixed"                     # one, all, fixed, fixed-percent, random-max-percent
//! value = 1
//! grace_period = "0s"
//! eviction = false                   # true: the eviction API (PodDisruptionBudgets apply)
//! [[kubernetes.check]]
//! metric = "ready_replicas"
//! target = "deployment:shop/checkout"
//! within = "60s"
//! ```

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

use super::select::{Mode, MODES};
use super::target::{Workload, SYSTEM_NAMESPACES};
use crate::experiment::diagnostic::{did_you_mean, Sink};
use crate::experiment::model::{Fault, FaultKind, Selection};

/// How a pod is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// DELETE the pod with this grace period (PodDisruptionBudgets are
    /// not consulted: that is the point of a chaos kill).
    Delete,
    /// POST an Eviction: the API server refuses (429) when a
    /// PodDisruptionBudget would be violated, and the pod is spared.
    Evict,
}

/// One pod fault.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFault {
    pub target: Workload,
    pub mode: Mode,
    pub method: KillMethod,
    /// `None`: the pod's own `terminationGracePeriodSeconds`.
    pub grace_period: Option<Duration>,
}

impl PodFault {
    pub fn kind_name(&self) -> &'static str {
        "pod-kill"
    }
}

/// `[[kubernetes.check]]`: the workload is back at its desired ready
/// replicas within `within` of the last kill.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyCheck {
    pub target: Workload,
    pub within: Duration,
}

/// `[kubernetes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then
    /// the in-cluster service account (kubectl's order).
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig context; `None`: the current context.
    pub context: Option<String>,
    /// Let faults touch kube-system, kube-public, kube-node-lease.
    pub allow_system_namespaces: bool,
    /// Bound on every API call.
    pub request_timeout: Duration,
    /// `--dry-run` asks the API server to dry-run the calls (`dryRun=All`).
    pub server_dry_run: bool,
    /// Where the `chaos agent` DaemonSet runs, and its pods' labels.
    pub agent_namespace: String,
    pub agent_selector: String,
    pub checks: Vec<ReadyCheck>,
}

#[derive(Debug, Deserialize)]
struct TomlRoot {
    #[serde(default)]
    kubernetes: Option<TomlK8s>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlK8s {
    kubeconfig: Option<String>,
    context: Option<Spanned<String>>,
    #[serde(default)]
    allow_system_namespaces: bool,
    request_timeout: Option<Spanned<String>>,
    server_dry_run: Option<bool>,
    agent_namespace: Option<Spanned<String>>,
    agent_selector: Option<Spanned<String>>,
    #[serde(default)]
    fault: Vec<Spanned<TomlFault>>,
    #[serde(default)]
    check: Vec<Spanned<TomlCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFault {
    name: Option<Spanned<String>>,
    kind: Spanned<String>,
    target: Spanned<String>,
    mode: Option<Spanned<String>>,
    value: Option<Spanned<toml::Value>>,
    start: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    #[serde(default)]
    eviction: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlCheck {
    metric: Spanned<String>,
    target: Spanned<String>,
    within: Spanned<String>,
}

const HINT: &str = "[kubernetes] takes kubeconfig, context, allow_system_namespaces, \
    request_timeout, server_dry_run, agent_namespace, agent_selector, [[kubernetes.fault]] \
    (name, kind, target, mode, value, start, grace_period, eviction) and \
    [[kubernetes.check]] (metric, target, within)";

/// Kubernetes fault kinds.
pub const KINDS: &[&str] = &["pod-kill"];

/// Reads `[kubernetes]` from `src`: its settings and its faults (with
/// ids `name` or `pod-fault-N`). Problems go to `sink` with their spans.
pub fn read(src: &str, sink: &mut Sink) -> (Option<Settings>, Vec<Fault>) {
    let root: TomlRoot = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            sink.error(e.span(), "kubernetes", e.message().to_string(), HINT);
            return (None, Vec::new());
        }
    };
    let Some(k) = root.kubernetes else { return (None, Vec::new()) };
    let allow = k.allow_system_namespaces;
    let mut settings = Settings {
        kubeconfig: k.kubeconfig.map(PathBuf::from),
        context: k.context.map(|c| c.into_inner()),
        allow_system_namespaces: allow,
        request_timeout: Duration::from_secs(10),
        server_dry_run: k.server_dry_run.unwrap_or(true),
        agent_namespace: "chaos".into(),
        agent_selector: "app.kubernetes.io/name=chaos-agent".into(),
        checks: Vec::new(),
    };
    if let Some(t) = k.request_timeout {
        match crate::units::parse_duration(t.get_ref()) {
            Ok(d) if d >= Duration::from_millis(100) => settings.request_timeout = d,
            Ok(_) => sink.error(
                Some(t.span()),
                "kubernetes.request_timeout",
                "the request timeout must be at least 100ms".into(),
                "e.g. \"10s\"",
            ),
            Err(e) => sink.error(
                Some(t.span()),
                "kubernetes.request_timeout",
                e,
                "e.g. \"10s\"",
            ),
        }
    }
    if let Some(ns) = k.agent_namespace {
        if Workload::parse(&format!("pod:{}/x", ns.get_ref())).is_err() {
            sink.error(
                Some(ns.span()),
                "kubernetes.agent_namespace",
                format!("{:?} is not a namespace name", ns.get_ref()),
                "the namespace of deploy/kubernetes/agent-daemonset.yaml, e.g. \"chaos\"",
            );
        }
        settings.agent_namespace = ns.into_inner();
    }
    if let Some(s) = k.agent_selector {
        settings.agent_selector = s.into_inner();
    }
    let mut faults = Vec::new();
    for (i, f) in k.fault.into_iter().enumerate() {
        let span = f.span();
        if let Some(fault) = read_fault(f.into_inner(), i, allow, sink, span) {
            faults.push(fault);
        }
    }
    for c in k.check {
        let c = c.into_inner();
        if c.metric.get_ref() != "ready_replicas" {
            sink.error(
                Some(c.metric.span()),
                "kubernetes.check.metric",
                format!("unknown check metric {:?}", c.metric.get_ref()),
                "the only check is metric = \"ready_replicas\" (a Deployment or \
                 StatefulSet back at its desired ready replicas)",
            );
            continue;
        }
        let target = match Workload::parse(c.target.get_ref()) {
            Ok(t @ (Workload::Deployment { .. } | Workload::StatefulSet { .. })) => t,
            Ok(_) => {
                sink.error(
                    Some(c.target.span()),
                    "kubernetes.check.target",
                    "ready_replicas needs a workload with desired replicas".into(),
                    "write deployment:NAMESPACE/NAME or statefulset:NAMESPACE/NAME",
                );
                continue;
            }
            Err(e) => {
                sink.error(
                    Some(c.target.span()),
                    "kubernetes.check.target",
                    e,
                    TARGET_HINT,
                );
                continue;
            }
        };
        match crate::units::parse_duration(c.within.get_ref()) {
            Ok(within) if within > Duration::ZERO => {
                settings.checks.push(ReadyCheck { target, within })
            }
            Ok(_) => sink.error(
                Some(c.within.span()),
                "kubernetes.check.within",
                "`within` must be positive".into(),
                "e.g. \"60s\"",
            ),
            Err(e) => sink.error(
                Some(c.within.span()),
                "kubernetes.check.within",
                e,
                "e.g. \"60s\"",
            ),
        }
    }
    (Some(settings), faults)
}

const TARGET_HINT: &str =
    "write pod:NAMESPACE/LABEL_SELECTOR, deployment:NAMESPACE/NAME \
    or statefulset:NAMESPACE/NAME";

fn read_fault(
    f: TomlFault,
    index: usize,
    allow_system: bool,
    sink: &mut Sink,
    span: std::ops::Range<usize>,
) -> Option<Fault> {
    let before = sink.diagnostics.len();
    if !KINDS.contains(&f.kind.get_ref().as_str()) {
        let hint = match did_you_mean(f.kind.get_ref(), KINDS) {
            Some(k) => format!("did you mean {k:?}?"),
            None => format!("Kubernetes fault kinds: {}", KINDS.join(", ")),
        };
        sink.error(
            Some(f.kind.span()),
            "kubernetes.fault.kind",
            format!("unknown Kubernetes fault kind {:?}", f.kind.get_ref()),
            &hint,
        );
    }
    let target = match Workload::parse(f.target.get_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            sink.error(Some(f.target.span()), "kubernetes.fault.target", e, TARGET_HINT);
            None
        }
    };
    if let Some(t) = &target {
        if t.in_system_namespace() && !allow_system {
            sink.error(
                Some(f.target.span()),
                "kubernetes.fault.target",
                format!(
                    "{} is a system namespace; faults never touch it by default",
                    t.namespace()
                ),
                &format!(
                    "set allow_system_namespaces = true in [kubernetes] if you mean it \
                     (system namespaces: {})",
                    SYSTEM_NAMESPACES.join(", ")
                ),
            );
        }
    }
    let mode = read_mode(&f, sink);
    let grace_period = f.grace_period.as_ref().and_then(|g| {
        match crate::units::parse_duration(g.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                sink.error(
                    Some(g.span()),
                    "kubernetes.fault.grace_period",
                    e,
                    "e.g. \"0s\" or \"30s\"",
                );
                None
            }
        }
    });
    let start = match &f.start {
        None => Duration::ZERO,
        Some(s) => crate::units::parse_duration(s.get_ref()).unwrap_or_else(|e| {
            sink.error(Some(s.span()), "kubernetes.fault.start", e, "e.g. \"5s\"");
            Duration::ZERO
        }),
    };
    if sink.diagnostics.len() != before {
        return None;
    }
    let _ = span;
    let pod = PodFault {
        target: target?,
        mode: mode?,
        method: if f.eviction { KillMethod::Evict } else { KillMethod::Delete },
        grace_period,
    };
    Some(Fault {
        id: f
            .name
            .map(|n| n.into_inner())
            .unwrap_or_else(|| format!("pod-fault-{}", index + 1)),
        start,
        // A kill is instant; "revert" is waiting for nothing.
        duration: None,
        probability: 1.0,
        at: String::new(),
        target: None,
        host_target: None,
        selection: Selection::Count(1),
        kind: FaultKind::Kubernetes(pod),
    })
}

fn read_mode(f: &TomlFault, sink: &mut Sink) -> Option<Mode> {
    let (name, span) = match &f.mode {
        Some(m) => (m.get_ref().as_str(), Some(m.span())),
        None => ("one", Some(f.kind.span())),
    };
    let value = f.value.as_ref();
    let need = |what: &str, sink: &mut Sink| {
        sink.error(
            value.map(|v| v.span()).or(span.clone()),
            "kubernetes.fault.value",
            format!("mode {name:?} needs value = {what}"),
            "e.g. mode = \"fixed\" value = 2, or mode = \"fixed-percent\" value = \"30%\"",
        );
    };
    let percent = |sink: &mut Sink| -> Option<f64> {
        let v = value?;
        let text = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(x) => x.to_string(),
            _ => String::new(),
        };
        match crate::units::parse_percent(&text) {
            Ok(p) if p > 0.0 => Some(p),
            Ok(_) => {
                need("a percentage above 0%", sink);
                None
            }
            Err(e) => {
                sink.error(Some(v.span()), "kubernetes.fault.value", e, "e.g. \"30%\"");
                None
            }
        }
    };
    match name {
        "one" => Some(Mode::One),
        "all" => Some(Mode::All),
        "fixed" => match value.map(|v| v.get_ref()) {
            Some(toml::Value::Integer(n)) if *n >= 1 && *n <= i64::from(u32::MAX) => {
                Some(Mode::Fixed(*n as u32))
            }
            _ => {
                need("a count of at least 1", sink);
                None
            }
        },
        "fixed-percent" => match value {
            Some(_) => percent(sink).map(Mode::FixedPercent),
            None => {
                need("a percentage", sink);
                None
            }
        },
        "random-max-percent" => match value {
            Some(_) => percent(sink).map(Mode::RandomMaxPercent),
            None => {
                need("a percentage", sink);
                None
            }
        },
        other => {
            let hint = match did_you_mean(other, MODES) {
                Some(m) => format!("did you mean {m:?}?"),
                None => format!("modes: {}", MODES.join(", ")),
            };
            sink.error(
                span,
                "kubernetes.fault.mode",
                format!("unknown mode {other:?}"),
                &hint,
            );
            None
        }
    }
}
