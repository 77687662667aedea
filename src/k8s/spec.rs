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
use crate::agent::wire::{WireFault, WireFilter, WireSelection};
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
    /// `None`: a pod-kill through the API. `Some`: a fault inside one
    /// container of each chosen pod, through the `chaos agent` on the
    /// pod's node.
    pub inside: Option<InPodFault>,
}

impl PodFault {
    pub fn kind_name(&self) -> &'static str {
        self.inside.as_ref().map_or("pod-kill", |i| i.kind)
    }
}

/// A fault inside a pod's container, applied by the agent on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct InPodFault {
    pub kind: &'static str,
    /// The container by name; `None`: the pod's first container.
    pub container: Option<String>,
    /// The fault as sent to the agent; its target is filled in per pod
    /// (`container:RUNTIME://ID`).
    pub wire: WireFault,
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
    /// In-pod faults: the container by name (default: the first).
    container: Option<Spanned<String>>,
    /// container-kill: the signal (default KILL).
    signal: Option<Spanned<String>>,
    /// packet-loss / netem: the share of packets dropped ("30%").
    loss: Option<Spanned<toml::Value>>,
    /// bandwidth: the tbf rate ("1mbit").
    rate: Option<Spanned<String>>,
    /// netem: added delay ("100ms").
    delay: Option<Spanned<String>>,
    /// In-pod faults: how long they stay (default: to the end of the run).
    duration: Option<Spanned<String>>,
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
    (name, kind, target, mode, value, start, grace_period, eviction; in-pod faults: \
    container, signal, loss, rate, delay, duration) and \
    [[kubernetes.check]] (metric, target, within)";

/// Kubernetes fault kinds.
pub const KINDS: &[&str] = &[
    "pod-kill",
    "container-kill",
    "process-pause",
    "packet-loss",
    "blackhole",
    "bandwidth",
    "netem",
];

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
    let inside = read_inside(&f, sink, span);
    let duration = f.duration.as_ref().and_then(|d| {
        if inside.is_none() || f.kind.get_ref() == "container-kill" {
            sink.error(
                Some(d.span()),
                "kubernetes.fault.duration",
                format!("a {} is instant; it has no duration", f.kind.get_ref()),
                "remove duration (faults inside a pod take one)",
            );
            return None;
        }
        match crate::units::parse_duration(d.get_ref()) {
            Ok(d) if d > Duration::ZERO => Some(d),
            Ok(_) => {
                sink.error(
                    Some(d.span()),
                    "kubernetes.fault.duration",
                    "duration must be positive".into(),
                    "e.g. \"30s\"",
                );
                None
            }
            Err(e) => {
                sink.error(
                    Some(d.span()),
                    "kubernetes.fault.duration",
                    e,
                    "e.g. \"30s\"",
                );
                None
            }
        }
    });
    if sink.diagnostics.len() != before {
        return None;
    }
    let pod = PodFault {
        target: target?,
        mode: mode?,
        method: if f.eviction { KillMethod::Evict } else { KillMethod::Delete },
        grace_period,
        inside,
    };
    Some(Fault {
        id: f
            .name
            .map(|n| n.into_inner())
            .unwrap_or_else(|| format!("pod-fault-{}", index + 1)),
        start,
        // A kill is instant; "revert" is waiting for nothing.
        duration,
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

/// The in-pod part of a `[[kubernetes.fault]]`: `None` for a pod-kill
/// (or an unknown kind, already reported). Fields that do not apply to
/// the kind are errors, so a typo never silently does nothing.
fn read_inside(
    f: &TomlFault,
    sink: &mut Sink,
    span: std::ops::Range<usize>,
) -> Option<InPodFault> {
    let kind = KINDS.iter().copied().find(|k| *k == f.kind.get_ref())?;
    let not_for = |sink: &mut Sink, field: &str, sp: std::ops::Range<usize>| {
        sink.error(
            Some(sp),
            &format!("kubernetes.fault.{field}"),
            format!("{field} does not apply to kind {kind:?}"),
            "pod-kill takes grace_period and eviction; container-kill takes container \
             and signal; packet-loss takes loss; bandwidth takes rate; netem takes \
             delay and loss",
        )
    };
    let allowed: &[&str] = match kind {
        "pod-kill" => &["grace_period", "eviction"],
        "container-kill" => &["container", "signal"],
        "process-pause" | "blackhole" => &["container"],
        "packet-loss" => &["container", "loss"],
        "bandwidth" => &["container", "rate"],
        _ => &["container", "loss", "delay"],
    };
    let present = [
        ("grace_period", f.grace_period.as_ref().map(|x| x.span())),
        ("eviction", f.eviction.then(|| f.kind.span())),
        ("container", f.container.as_ref().map(|x| x.span())),
        ("signal", f.signal.as_ref().map(|x| x.span())),
        ("loss", f.loss.as_ref().map(|x| x.span())),
        ("rate", f.rate.as_ref().map(|x| x.span())),
        ("delay", f.delay.as_ref().map(|x| x.span())),
    ];
    for (field, sp) in present {
        if let Some(sp) = sp {
            if !allowed.contains(&field) {
                not_for(sink, field, sp);
            }
        }
    }
    if kind == "pod-kill" {
        return None;
    }
    let container = f.container.as_ref().map(|c| {
        let name = c.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !ok {
            sink.error(
                Some(c.span()),
                "kubernetes.fault.container",
                format!("{name:?} is not a container name"),
                "a name from the pod's spec.containers (lowercase letters, digits, -)",
            );
        }
        name.clone()
    });
    let loss = f.loss.as_ref().and_then(|v| {
        let text = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Float(x) => format!("{}%", x * 100.0),
            toml::Value::Integer(i) => format!("{i}%"),
            _ => String::new(),
        };
        match crate::units::parse_percent(&text) {
            Ok(p) if p > 0.0 && p <= 1.0 => Some(p),
            Ok(_) => {
                sink.error(
                    Some(v.span()),
                    "kubernetes.fault.loss",
                    "loss must be above 0% and at most 100%".into(),
                    "e.g. loss = \"30%\"",
                );
                None
            }
            Err(e) => {
                sink.error(
                    Some(v.span()),
                    "kubernetes.fault.loss",
                    e,
                    "e.g. loss = \"30%\"",
                );
                None
            }
        }
    });
    let missing = |sink: &mut Sink, field: &str, example: &str| {
        sink.error(
            Some(span.clone()),
            &format!("kubernetes.fault.{field}"),
            format!("kind {kind:?} needs {field}"),
            &format!("e.g. {example}"),
        )
    };
    let all = WireSelection::Percent(1.0);
    let wire = match kind {
        "container-kill" => {
            let signal =
                f.signal.as_ref().map_or("KILL".to_string(), |s| s.get_ref().clone());
            if let (Err(e), Some(s)) = (crate::fault::parse_signal(&signal), &f.signal) {
                sink.error(
                    Some(s.span()),
                    "kubernetes.fault.signal",
                    e,
                    "e.g. \"KILL\" or \"TERM\"",
                );
                return None;
            }
            // Every process of the container: what the runtime's kill does
            // (its main process dies; the kernel ends the rest with it).
            WireFault::ProcessKill {
                target: String::new(),
                selection: all,
                signal,
                grace_ms: None,
            }
        }
        "process-pause" => {
            WireFault::ProcessPause { target: String::new(), selection: all }
        }
        "blackhole" => WireFault::Blackhole {
            target: String::new(),
            selection: WireSelection::Count(1),
            filter: WireFilter::default(),
        },
        "packet-loss" => {
            let Some(loss) = loss else {
                if f.loss.is_none() {
                    missing(sink, "loss", "loss = \"30%\"");
                }
                return None;
            };
            WireFault::PacketLoss {
                target: String::new(),
                selection: WireSelection::Count(1),
                loss,
                filter: WireFilter::default(),
            }
        }
        "bandwidth" => {
            let Some(rate) = &f.rate else {
                missing(sink, "rate", "rate = \"1mbit\"");
                return None;
            };
            if let Err(e) = crate::fault::tc::tbf_args(rate.get_ref()) {
                sink.error(
                    Some(rate.span()),
                    "kubernetes.fault.rate",
                    e.to_string(),
                    "e.g. \"1mbit\"",
                );
                return None;
            }
            WireFault::Bandwidth {
                target: String::new(),
                selection: WireSelection::Count(1),
                rate: rate.get_ref().clone(),
            }
        }
        _ => {
            let delay =
                f.delay.as_ref().and_then(|d| {
                    match crate::units::parse_duration(d.get_ref()) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            sink.error(
                                Some(d.span()),
                                "kubernetes.fault.delay",
                                e,
                                "e.g. \"100ms\"",
                            );
                            None
                        }
                    }
                });
            if f.delay.is_none() && f.loss.is_none() {
                missing(sink, "delay or loss", "delay = \"100ms\"");
                return None;
            }
            WireFault::Netem {
                target: String::new(),
                selection: WireSelection::Count(1),
                delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                jitter_ms: None,
                loss,
                corrupt: None,
                duplicate: None,
                reorder: None,
                rate: None,
            }
        }
    };
    Some(InPodFault { kind, container, wire })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(body: &str) -> (Vec<Fault>, Vec<String>) {
        let src = format!(
            "[kubernetes]\n[[kubernetes.fault]]\ntarget = \"pod:shop/app=web\"\n{body}"
        );
        let mut sink = Sink::new("t.toml", &src);
        let (_, faults) = read(&src, &mut sink);
        let msgs = sink.diagnostics.iter().map(|d| d.to_string()).collect();
        (faults, msgs)
    }

    fn inside(f: &Fault) -> &InPodFault {
        match &f.kind {
            FaultKind::Kubernetes(p) => p.inside.as_ref().expect("an in-pod fault"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn in_pod_kinds_become_the_wire_fault_the_agent_gets() {
        let (f, errs) = faults("kind = \"packet-loss\"\nloss = \"30%\"\ncontainer = \"app\"\nduration = \"10s\"\n");
        assert!(errs.is_empty(), "{errs:?}");
        let i = inside(&f[0]);
        assert_eq!(i.container.as_deref(), Some("app"));
        assert!(
            matches!(&i.wire, WireFault::PacketLoss { loss, .. } if (*loss - 0.3).abs() < 1e-9)
        );
        assert_eq!(f[0].duration, Some(Duration::from_secs(10)));
        let (f, errs) = faults("kind = \"container-kill\"\nsignal = \"TERM\"\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert!(matches!(
            &inside(&f[0]).wire,
            WireFault::ProcessKill { signal, selection: WireSelection::Percent(p), .. }
                if signal == "TERM" && *p == 1.0
        ));
        let (f, errs) = faults("kind = \"netem\"\ndelay = \"100ms\"\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert!(matches!(
            &inside(&f[0]).wire,
            WireFault::Netem { delay_ms: Some(100), .. }
        ));
        let (f, _) = faults("kind = \"pod-kill\"\n");
        assert!(matches!(&f[0].kind, FaultKind::Kubernetes(p) if p.inside.is_none()));
    }

    #[test]
    fn in_pod_faults_refuse_missing_or_foreign_fields() {
        for (body, want) in [
            ("kind = \"packet-loss\"\n", "needs loss"),
            ("kind = \"packet-loss\"\nloss = \"150%\"\n", "between 0% and 100%"),
            ("kind = \"bandwidth\"\n", "needs rate"),
            ("kind = \"netem\"\n", "needs delay or loss"),
            ("kind = \"blackhole\"\neviction = true\n", "eviction does not apply"),
            ("kind = \"pod-kill\"\nloss = \"5%\"\n", "loss does not apply"),
            ("kind = \"container-kill\"\nsignal = \"NOPE\"\n", "unknown signal"),
            ("kind = \"container-kill\"\nduration = \"5s\"\n", "has no duration"),
            ("kind = \"blackhole\"\ncontainer = \"Bad_Name\"\n", "not a container name"),
        ] {
            let (f, errs) = faults(body);
            assert!(f.is_empty(), "{body}: {f:?}");
            assert!(errs.iter().any(|e| e.contains(want)), "{body}: {errs:?}");
        }
    }
}
