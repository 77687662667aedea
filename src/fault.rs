//! Infrastructure faults with guaranteed revert: process kill and pause,
//! netem / nftables / tbf network faults, and region outages.
//!
//! Flow: [`preflight`] checks the host once (tools, CAP_NET_ADMIN, netem,
//! targets) and picks a backend per fault; [`prepare`] resolves and selects
//! targets and compiles the fault into a [`plan::Plan`] (no side effects, so
//! `describe` is the dry run); `inject` journals each step before acting;
//! `revert` (and [`recover`] from another process) undoes it idempotently.

use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub mod cmd;
pub mod container;
pub mod management;
pub mod nft;
pub mod plan;
pub mod recover;
pub mod session;
pub mod tc;

pub use management::ManagementPath;
pub use recover::{recover, RecoverReport};
pub use session::Session;

use crate::journal::{Journal, JournalError, RevertAction};
use crate::target::{
    self, process::ProcessInfo, BlastRadius, NetTarget, Resolved, Selection, TargetError,
    TargetSelector,
};
use plan::{Apply, Plan, Step};

/// Errors of the fault engine; each names what to act on.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("sending {signal} to pid {pid} failed: {errno}")]
    Signal { pid: u32, signal: &'static str, errno: nix::Error },
    #[error("pid {pid} exited (or was replaced) before the fault was applied")]
    Gone { pid: u32 },
    #[error("`{tool}` is not installed (not on $PATH); {hint}")]
    MissingTool { tool: &'static str, hint: &'static str },
    #[error(
        "network faults need CAP_NET_ADMIN (run as root or grant the capability); \
         this process lacks it"
    )]
    NoNetAdmin,
    #[error(
        "the kernel has no netem qdisc (sch_netem), so {what} cannot be injected at the \
         network layer; use an HTTP `latency` fault in the proxy instead, or `packet-loss` \
         (nftables) for loss"
    )]
    NetemUnavailable { what: String },
    #[error("fault {kind} cannot hit {target}: {reason}")]
    WrongTarget { kind: &'static str, target: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("refusing to remove {what}: {reason}; left alone (remove it yourself if it is yours)")]
    NotOwned { what: String, reason: String },
}

impl FaultError {
    /// The one mapping from fault errors to exit codes, shared by `run`,
    /// `inject`, `kill`, game days and the daemon. Refusals and bad input
    /// are 2 (nothing was injected and the file or flags must change; a
    /// blast-radius refusal is one of them), the rest (host, privileges,
    /// missing or locked targets, failed commands) 5.
    pub fn exit_code(&self) -> u8 {
        match self {
            FaultError::Invalid(_)
            | FaultError::WrongTarget { .. }
            | FaultError::Target(TargetError::Refused { .. })
            | FaultError::Target(TargetError::Invalid { .. })
            | FaultError::Target(TargetError::UnknownRegion { .. })
            | FaultError::Target(TargetError::BlastRadius { .. })
            | FaultError::Journal(JournalError::RunId(_)) => crate::exit::INVALID,
            _ => crate::exit::ENVIRONMENT,
        }
    }
}

/// Only towards these peers / ports (empty = everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetFilter {
    /// CIDRs or addresses of the peer (v4 or v6).
    pub destinations: Vec<String>,
    /// Ports, matched as source or destination port.
    pub ports: Vec<u16>,
}

/// `process-kill`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessKill {
    pub target: TargetSelector,
    pub selection: Selection,
    /// Default SIGKILL.
    pub signal: Signal,
    /// SIGTERM first, then `signal` after this grace period.
    pub grace: Option<Duration>,
    /// Repeat every interval (the caller re-prepares to re-resolve).
    pub interval: Option<Duration>,
}

/// `process-pause` (SIGSTOP, reverted by SIGCONT).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPause {
    pub target: TargetSelector,
    pub selection: Selection,
}

/// `netem` via tc (fractions in [0, 1]).
#[derive(Debug, Clone, PartialEq)]
pub struct Netem {
    pub target: TargetSelector,
    pub selection: Selection,
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub loss: Option<f64>,
    pub corrupt: Option<f64>,
    pub duplicate: Option<f64>,
    pub reorder: Option<f64>,
    /// tc rate, e.g. "1mbit".
    pub rate: Option<String>,
}

/// `packet-loss` via nftables.
#[derive(Debug, Clone, PartialEq)]
pub struct NftLoss {
    pub target: TargetSelector,
    pub selection: Selection,
    /// Fraction in [0, 1].
    pub loss: f64,
    pub filter: NetFilter,
}

/// `blackhole` via nftables.
#[derive(Debug, Clone, PartialEq)]
pub struct NftBlackhole {
    pub target: TargetSelector,
    pub selection: Selection,
    pub filter: NetFilter,
}

/// `tcp-reset` via nftables `reject with tcp reset`.
#[derive(Debug, Clone, PartialEq)]
pub struct NftReset {
    pub target: TargetSelector,
    pub selection: Selection,
    pub filter: NetFilter,
}

/// `bandwidth` via a tbf root qdisc.
#[derive(Debug, Clone, PartialEq)]
pub struct Tbf {
    pub target: TargetSelector,
    pub selection: Selection,
    /// tc rate, e.g. "1mbit".
    pub rate: String,
}

/// How a region is made unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMethod {
    /// nftables drop in each of the region's namespaces / interfaces (and
    /// the named namespaces its processes live in).
    Blackhole,
    /// SIGSTOP every process of the region (and every process inside its
    /// namespaces).
    Pause,
}

/// `region-outage`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionOutage {
    pub region: String,
    pub method: OutageMethod,
}

/// Every infrastructure fault.
#[derive(Debug, Clone, PartialEq)]
pub enum InfraFault {
    ProcessKill(ProcessKill),
    ProcessPause(ProcessPause),
    Netem(Netem),
    PacketLoss(NftLoss),
    Blackhole(NftBlackhole),
    TcpReset(NftReset),
    Bandwidth(Tbf),
    RegionOutage(RegionOutage),
}

impl InfraFault {
    /// The TOML / CLI kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            InfraFault::ProcessKill(_) => "process-kill",
            InfraFault::ProcessPause(_) => "process-pause",
            InfraFault::Netem(_) => "netem",
            InfraFault::PacketLoss(_) => "packet-loss",
            InfraFault::Blackhole(_) => "blackhole",
            InfraFault::TcpReset(_) => "tcp-reset",
            InfraFault::Bandwidth(_) => "bandwidth",
            InfraFault::RegionOutage(_) => "region-outage",
        }
    }

    fn is_network(&self) -> bool {
        match self {
            InfraFault::ProcessKill(_) | InfraFault::ProcessPause(_) => false,
            InfraFault::RegionOutage(r) => r.method == OutageMethod::Blackhole,
            _ => true,
        }
    }
}

/// Everything shared by the faults of one run.
#[derive(Debug, Clone, Default)]
pub struct FaultContext {
    pub regions: BTreeMap<String, Vec<TargetSelector>>,
    pub seed: u64,
    pub limits: BlastRadius,
    pub run_id: String,
}

/// Which mechanism a fault will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Signals,
    Nftables,
    TcNetem,
    TcTbf,
    /// netem asked for, but the kernel lacks it: loss goes through nftables.
    NftablesFallback,
}

/// Result of [`preflight`]: one backend per fault, plus warnings to print.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pub backends: Vec<Backend>,
    pub netem_available: Option<bool>,
    pub warnings: Vec<String>,
}

/// An applied-or-not fault.
pub trait Injector: Send {
    /// Resolved targets and the exact commands / signals (the dry run).
    fn describe(&self) -> Vec<String>;
    /// Applies the fault; each step is journalled (fsynced) before acting.
    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError>;
    /// Undoes what `inject` did; idempotent, marks records reverted.
    fn revert(&mut self, journal: &mut Journal) -> Result<(), FaultError>;
}

/// Checks the host for `faults`: tools present, CAP_NET_ADMIN, netem
/// available (probed in a throwaway namespace), targets resolvable.
pub fn preflight(
    faults: &[InfraFault],
    ctx: &FaultContext,
) -> Result<Preflight, FaultError> {
    let mut pre = Preflight::default();
    let network = faults.iter().any(InfraFault::is_network);
    if network {
        require_tool("ip", "install iproute2")?;
        if !has_net_admin() {
            return Err(FaultError::NoNetAdmin);
        }
    }
    let needs_nft = faults.iter().any(|f| {
        matches!(
            f,
            InfraFault::PacketLoss(_)
                | InfraFault::Blackhole(_)
                | InfraFault::TcpReset(_)
                | InfraFault::Netem(_)
        ) || matches!(f, InfraFault::RegionOutage(r) if r.method == OutageMethod::Blackhole)
    });
    let needs_tc = faults
        .iter()
        .any(|f| matches!(f, InfraFault::Netem(_) | InfraFault::Bandwidth(_)));
    if needs_nft {
        require_tool("nft", "install nftables")?;
    }
    if needs_tc {
        require_tool("tc", "install iproute2")?;
    }
    if faults.iter().any(|f| matches!(f, InfraFault::Netem(_))) {
        let available = netem_available();
        pre.netem_available = Some(available);
        if !available {
            pre.warnings.push(
                "the kernel has no netem qdisc (sch_netem); netem loss falls back to \
                 nftables, latency must come from the proxy's HTTP latency fault"
                    .into(),
            );
        }
    }
    for fault in faults {
        let backend = match fault {
            InfraFault::ProcessKill(_) | InfraFault::ProcessPause(_) => Backend::Signals,
            InfraFault::PacketLoss(_)
            | InfraFault::Blackhole(_)
            | InfraFault::TcpReset(_) => Backend::Nftables,
            InfraFault::Bandwidth(_) => Backend::TcTbf,
            InfraFault::RegionOutage(r) => match r.method {
                OutageMethod::Blackhole => Backend::Nftables,
                OutageMethod::Pause => Backend::Signals,
            },
            InfraFault::Netem(n) => {
                if pre.netem_available == Some(true) {
                    Backend::TcNetem
                } else {
                    netem_fallback(n)?;
                    pre.warnings.push(format!(
                        "netem on {}: using nftables random drop for loss instead of netem",
                        n.target
                    ));
                    Backend::NftablesFallback
                }
            }
        };
        pre.backends.push(backend);
        // Resolving now surfaces missing targets before anything runs.
        compile(fault, ctx, backend, None)?;
    }
    Ok(pre)
}

/// Resolves and selects the fault's targets and compiles its steps. Pure:
/// nothing is changed until `inject`.
pub fn prepare(
    fault: &InfraFault,
    ctx: &FaultContext,
    preflight: &Preflight,
) -> Result<Box<dyn Injector>, FaultError> {
    prepare_sparing(fault, ctx, preflight, None)
}

/// [`prepare`] for an agent: every nftables table the fault creates
/// accepts `spare` (the agent's own SSH session) ahead of its verdict, so
/// the controller keeps heartbeating and can revert; the exemption is a
/// note of the plan (dry run) and part of each step's journal record.
/// tc faults (netem, bandwidth) shape a whole device and cannot spare it.
pub fn prepare_sparing(
    fault: &InfraFault,
    ctx: &FaultContext,
    preflight: &Preflight,
    spare: Option<&ManagementPath>,
) -> Result<Box<dyn Injector>, FaultError> {
    let backend = match fault {
        InfraFault::Netem(_) if preflight.netem_available != Some(true) => {
            Backend::NftablesFallback
        }
        _ => default_backend(fault),
    };
    Ok(Box::new(compile(fault, ctx, backend, spare)?))
}

fn default_backend(fault: &InfraFault) -> Backend {
    match fault {
        InfraFault::ProcessKill(_) | InfraFault::ProcessPause(_) => Backend::Signals,
        InfraFault::Netem(_) => Backend::TcNetem,
        InfraFault::Bandwidth(_) => Backend::TcTbf,
        InfraFault::RegionOutage(r) if r.method == OutageMethod::Pause => {
            Backend::Signals
        }
        _ => Backend::Nftables,
    }
}

/// The nftables loss a netem fault becomes without netem, or why not.
fn netem_fallback(n: &Netem) -> Result<f64, FaultError> {
    let mut missing = Vec::new();
    for (name, set) in [
        ("delay", n.delay.is_some()),
        ("jitter", n.jitter.is_some()),
        ("corrupt", n.corrupt.is_some()),
        ("duplicate", n.duplicate.is_some()),
        ("reorder", n.reorder.is_some()),
        ("rate", n.rate.is_some()),
    ] {
        if set {
            missing.push(name);
        }
    }
    match (n.loss, missing.is_empty()) {
        (Some(loss), true) => Ok(loss),
        _ => Err(FaultError::NetemUnavailable {
            what: if missing.is_empty() {
                "this netem fault".to_string()
            } else {
                format!("netem {}", missing.join(", "))
            },
        }),
    }
}

fn compile(
    fault: &InfraFault,
    ctx: &FaultContext,
    backend: Backend,
    spare: Option<&ManagementPath>,
) -> Result<Plan, FaultError> {
    let kind = fault.kind();
    let mut notes = vec![format!("{kind}: selection seed {}", ctx.seed)];
    let mut steps = Vec::new();
    let table_step = |t: &NetTarget, filter: &NetFilter, verdict| {
        nft_step(t, filter, verdict, ctx, spare)
    };
    match fault {
        InfraFault::ProcessKill(k) => {
            for p in pick_processes(kind, &k.target, k.selection, ctx, &mut notes)? {
                steps.push(kill_step(&p, k.signal, k.grace));
            }
        }
        InfraFault::ProcessPause(k) => {
            for p in pick_processes(kind, &k.target, k.selection, ctx, &mut notes)? {
                steps.push(pause_step(&p));
            }
        }
        InfraFault::PacketLoss(l) => {
            for t in pick_net(kind, &l.target, l.selection, ctx, &mut notes)? {
                steps.push(table_step(&t, &l.filter, nft::Verdict::Loss(l.loss))?);
            }
        }
        InfraFault::Blackhole(b) => {
            for t in pick_net(kind, &b.target, b.selection, ctx, &mut notes)? {
                steps.push(table_step(&t, &b.filter, nft::Verdict::Drop)?);
            }
        }
        InfraFault::TcpReset(r) => {
            for t in pick_net(kind, &r.target, r.selection, ctx, &mut notes)? {
                steps.push(table_step(&t, &r.filter, nft::Verdict::TcpReset)?);
            }
        }
        InfraFault::Netem(n) if backend == Backend::NftablesFallback => {
            let loss = netem_fallback(n)?;
            notes.push("no netem in this kernel: loss via nftables (fallback)".into());
            for t in pick_net(kind, &n.target, n.selection, ctx, &mut notes)? {
                steps.push(table_step(
                    &t,
                    &NetFilter::default(),
                    nft::Verdict::Loss(loss),
                )?);
            }
        }
        InfraFault::Netem(n) => {
            let args = tc::netem_args(n)?;
            for (ns, dev) in pick_devices(kind, &n.target, n.selection, ctx, &mut notes)?
            {
                steps.push(qdisc_step(ns, dev, "netem", &args));
            }
        }
        InfraFault::Bandwidth(b) => {
            let args = tc::tbf_args(&b.rate)?;
            for (ns, dev) in pick_devices(kind, &b.target, b.selection, ctx, &mut notes)?
            {
                steps.push(qdisc_step(ns, dev, "tbf", &args));
            }
        }
        InfraFault::RegionOutage(r) => {
            let selector = TargetSelector::Region(r.region.clone());
            let members = target::resolve(&selector, &ctx.regions)?;
            notes.push(format!(
                "region {} ({} targets), method {:?}",
                r.region,
                members.len(),
                r.method
            ));
            for m in members {
                match (r.method, m) {
                    (OutageMethod::Pause, Resolved::Process(p)) => {
                        steps.push(pause_step(&p))
                    }
                    (OutageMethod::Pause, Resolved::Net(t)) => {
                        let ns =
                            t.netns.clone().ok_or_else(|| FaultError::WrongTarget {
                                kind,
                                target: t.to_string(),
                                reason:
                                    "method \"pause\" needs processes or a named netns"
                                        .into(),
                            })?;
                        for p in target::process::in_netns(&ns) {
                            steps.push(pause_step(&p));
                        }
                    }
                    (OutageMethod::Blackhole, Resolved::Net(t)) => steps
                        .push(table_step(&t, &NetFilter::default(), nft::Verdict::Drop)?),
                    (OutageMethod::Blackhole, Resolved::Process(p)) => {
                        let ns = named_netns_of(p.pid).ok_or_else(|| FaultError::WrongTarget {
                            kind,
                            target: format!("pid {} ({})", p.pid, p.comm),
                            reason: "it does not live in a named network namespace, so it \
                                     cannot be blackholed alone; use method = \"pause\""
                                .into(),
                        })?;
                        let t = NetTarget { netns: Some(ns), iface: None };
                        if !steps.iter().any(|s: &Step| s.lock == t.lock_key()) {
                            steps.push(table_step(
                                &t,
                                &NetFilter::default(),
                                nft::Verdict::Drop,
                            )?);
                        }
                    }
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            steps.retain(|s| seen.insert(s.lock.clone()));
            if steps.is_empty() {
                // Reporting "applied (0 targets)" would pass a game day
                // that tested nothing.
                return Err(FaultError::Target(TargetError::NoMatch {
                    selector: selector.to_string(),
                    reason: "the region resolves to no process or network target".into(),
                }));
            }
        }
    }
    if let Some(m) = spare {
        if steps.iter().any(|s| matches!(s.revert, RevertAction::DeleteNftTable { .. })) {
            notes.push(format!(
                "management path spared: {m} is accepted ahead of the fault in each \
                 table (both directions), so the controller keeps its heartbeats"
            ));
        }
    }
    if let Some(c) = container::of_net_fault(fault) {
        // Name the container's namespace before anything runs in it.
        steps.insert(0, container::enter_step(c)?);
    }
    Ok(Plan::new(notes, steps))
}

fn pick_processes(
    kind: &'static str,
    selector: &TargetSelector,
    selection: Selection,
    ctx: &FaultContext,
    notes: &mut Vec<String>,
) -> Result<Vec<ProcessInfo>, FaultError> {
    let mut procs = Vec::new();
    for r in target::resolve(selector, &ctx.regions)? {
        match r {
            Resolved::Process(p) => procs.push(p),
            Resolved::Net(t) => {
                return Err(FaultError::WrongTarget {
                    kind,
                    target: t.to_string(),
                    reason: "a process fault needs pid:, pidfile: or name: targets"
                        .into(),
                })
            }
        }
    }
    let picked =
        target::select(&selector.to_string(), &procs, selection, ctx.seed, ctx.limits)?;
    notes.push(format!("{selector}: {} matched, {} selected", procs.len(), picked.len()));
    Ok(picked)
}

fn pick_net(
    kind: &'static str,
    selector: &TargetSelector,
    selection: Selection,
    ctx: &FaultContext,
    notes: &mut Vec<String>,
) -> Result<Vec<NetTarget>, FaultError> {
    let mut nets = Vec::new();
    if let TargetSelector::Container(c) = selector {
        target::container::netns_pid(c, &selector.to_string())?;
        notes.push(format!("{selector}: its network namespace"));
        return Ok(vec![container::net_target(c)]);
    }
    for r in target::resolve(selector, &ctx.regions)? {
        match r {
            Resolved::Net(t) => nets.push(t),
            Resolved::Process(p) => {
                return Err(FaultError::WrongTarget {
                    kind,
                    target: format!("pid {} ({})", p.pid, p.comm),
                    reason: "a network fault needs netns: or iface: targets".into(),
                })
            }
        }
    }
    let picked =
        target::select(&selector.to_string(), &nets, selection, ctx.seed, ctx.limits)?;
    notes.push(format!("{selector}: {} matched, {} selected", nets.len(), picked.len()));
    Ok(picked)
}

/// Network targets as (netns, device): a whole namespace means each of
/// its non-loopback interfaces.
fn pick_devices(
    kind: &'static str,
    selector: &TargetSelector,
    selection: Selection,
    ctx: &FaultContext,
    notes: &mut Vec<String>,
) -> Result<Vec<(Option<String>, String)>, FaultError> {
    if let TargetSelector::Container(c) = selector {
        notes.push(format!("{selector}: the interfaces of its network namespace"));
        return container::devices(c);
    }
    let mut out = Vec::new();
    for t in pick_net(kind, selector, selection, ctx, notes)? {
        match (&t.iface, &t.netns) {
            (Some(dev), ns) => out.push((ns.clone(), dev.clone())),
            (None, Some(ns)) => {
                let listing =
                    cmd::Cmd::new(None, "ip", &["-n", ns, "-o", "link", "show"]).run()?;
                for line in listing.lines() {
                    let name = line.split(':').nth(1).unwrap_or("").trim();
                    let name = name.split('@').next().unwrap_or("");
                    if !name.is_empty() && name != "lo" {
                        out.push((Some(ns.clone()), name.to_string()));
                    }
                }
            }
            (None, None) => unreachable_host(kind)?,
        }
    }
    Ok(out)
}

fn unreachable_host(kind: &'static str) -> Result<(), FaultError> {
    Err(FaultError::WrongTarget {
        kind,
        target: "host network".into(),
        reason: "name an interface (iface:NAME[@NETNS])".into(),
    })
}

fn kill_step(p: &ProcessInfo, signal: Signal, grace: Option<Duration>) -> Step {
    Step {
        what: format!("send {} to pid {} ({})", signal.as_str(), p.pid, p.comm),
        lock: format!("proc-{}", p.pid),
        apply: Apply::Signal { pid: p.pid, starttime: p.starttime, signal, grace },
        revert: RevertAction::Nothing { note: format!("pid {} was signalled", p.pid) },
    }
}

fn pause_step(p: &ProcessInfo) -> Step {
    Step {
        what: format!("pause pid {} ({}) with SIGSTOP", p.pid, p.comm),
        lock: format!("proc-{}", p.pid),
        apply: Apply::Signal {
            pid: p.pid,
            starttime: p.starttime,
            signal: Signal::SIGSTOP,
            grace: None,
        },
        revert: RevertAction::Continue {
            pid: p.pid,
            starttime: p.starttime,
            stopped_before: false,
        },
    }
}

fn nft_step(
    t: &NetTarget,
    filter: &NetFilter,
    verdict: nft::Verdict,
    ctx: &FaultContext,
    spare: Option<&ManagementPath>,
) -> Result<Step, FaultError> {
    let table = nft::table_name(&ctx.run_id);
    let rules = nft::ruleset_sparing(&table, t, filter, verdict, spare)?;
    // The journal record names the exemption: `chaos recover` (and its
    // dry run) shows that deleting this table also ends it.
    let sparing = spare.map(|m| format!(", sparing {m}")).unwrap_or_default();
    Ok(Step {
        what: format!("nftables table inet {table} on {t}{sparing}"),
        lock: t.lock_key(),
        apply: Apply::Command(nft::add_cmd(t.netns.as_deref(), rules)),
        revert: RevertAction::DeleteNftTable {
            netns: t.netns.clone(),
            family: "inet".into(),
            table,
        },
    })
}

fn qdisc_step(ns: Option<String>, dev: String, kind: &str, args: &[String]) -> Step {
    let t = NetTarget { netns: ns.clone(), iface: Some(dev.clone()) };
    Step {
        what: format!("{kind} qdisc {} on {t}", tc::HANDLE),
        lock: format!("{}-{dev}", t.lock_key()),
        apply: Apply::Command(tc::add_cmd(ns.as_deref(), &dev, args)),
        revert: RevertAction::DeleteQdisc {
            netns: ns,
            dev,
            handle: tc::HANDLE.into(),
            kind: kind.into(),
        },
    }
}

/// The name of the /run/netns namespace a process lives in, if any.
fn named_netns_of(pid: u32) -> Option<String> {
    let ino = target::process::netns_inode(Path::new(&format!("/proc/{pid}/ns/net")))?;
    let host = target::process::netns_inode(Path::new("/proc/1/ns/net"));
    if Some(ino) == host {
        return None;
    }
    std::fs::read_dir("/run/netns").ok()?.filter_map(Result::ok).find_map(|e| {
        (target::process::netns_inode(&e.path()) == Some(ino))
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// Parses a signal as written in TOML or on the command line: "KILL",
/// "SIGKILL" or "9".
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let t = text.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| format!("{text:?} is not a signal number"));
    }
    let name = if t.starts_with("SIG") { t } else { format!("SIG{t}") };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {text:?}; e.g. KILL, TERM, INT"))
}

fn require_tool(tool: &'static str, hint: &'static str) -> Result<(), FaultError> {
    if cmd::on_path(tool) {
        Ok(())
    } else {
        Err(FaultError::MissingTool { tool, hint })
    }
}

/// True when the effective capability set holds CAP_NET_ADMIN (bit 12).
pub fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Probes for netem by adding it to a veth in a throwaway namespace; the
/// result is cached for the process.
pub fn netem_available() -> bool {
    static CACHE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        let ns = format!("chaosprobe{}", std::process::id());
        let run = |c: cmd::Cmd| c.output().map(|o| o.0).unwrap_or(false);
        if !run(cmd::Cmd::new(None, "ip", &["netns", "add", &ns])) {
            return false;
        }
        let ok = run(cmd::Cmd::new(
            None,
            "ip",
            &["-n", &ns, "link", "add", "cp0", "type", "veth", "peer", "name", "cp1"],
        )) && run(cmd::Cmd::new(
            Some(&ns),
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                "cp0",
                "root",
                "handle",
                tc::HANDLE,
                "netem",
                "delay",
                "1ms",
            ],
        ));
        let _ = cmd::Cmd::new(None, "ip", &["netns", "del", &ns]).output();
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals_by_name_with_or_without_sig_and_by_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("unknown signal"));
    }

    #[test]
    fn pure_delay_netem_without_netem_is_refused_with_a_pointer_to_the_proxy() {
        let n = Netem {
            target: TargetSelector::Netns("x".into()),
            selection: Selection::Count(1),
            delay: Some(Duration::from_millis(100)),
            jitter: None,
            loss: Some(0.1),
            corrupt: None,
            duplicate: None,
            reorder: None,
            rate: None,
        };
        let err = netem_fallback(&n).unwrap_err().to_string();
        assert!(err.contains("netem delay") && err.contains("proxy"), "{err}");
        assert_eq!(netem_fallback(&Netem { delay: None, ..n }).unwrap(), 0.1);
    }

    #[test]
    fn a_pause_plan_describes_the_stop_and_the_continue() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let fault = InfraFault::ProcessPause(ProcessPause {
            target: TargetSelector::Pid(child.id()),
            selection: Selection::Count(1),
        });
        let ctx = FaultContext { run_id: "t".into(), seed: 7, ..Default::default() };
        let pre = preflight(std::slice::from_ref(&fault), &ctx).unwrap();
        let text = prepare(&fault, &ctx, &pre).unwrap().describe().join("\n");
        let _ = child.kill();
        let _ = child.wait();
        assert!(text.contains(&format!("kill -STOP {}", child.id())), "{text}");
        assert!(text.contains(&format!("revert: kill -CONT {}", child.id())), "{text}");
        assert!(text.contains("seed 7"), "{text}");
    }
}
