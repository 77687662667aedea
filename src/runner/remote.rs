//! Where a step runs: a fault whose target names hosts (`...@host:NAME`,
//! `...@hosts:K=V`) runs through the agents on those hosts; every other
//! infrastructure fault through the local engine. Both look the same to
//! the runner's fault schedule: a `fault::Injector` (describe / inject /
//! revert). One [`Fleet`] (one agent per host, heartbeats running) serves
//! every remote fault of a run and is closed when the last one is dropped.
//!
//! The controller's journal gets an audit record per remote fault; what
//! to undo is journalled by each host's agent, which reverts by itself
//! when its lease runs out (a dead runner), and `chaos recover
//! --inventory` settles an agent that died.
//!
//! A `region-outage` with method blackhole on hosts drops all traffic of
//! the region's interfaces there; each agent spares its own SSH session
//! in the ruleset (see `fault::management`), and a host whose agent
//! cannot see that session is refused here, before anything is applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::plan;
use super::RunError;
use crate::agent::wire::WireContext;
use crate::experiment::model::Experiment;
use crate::fault::{FaultContext, FaultError, InfraFault, Injector, OutageMethod};
use crate::fleet::remote::{self, retarget, Assignment, ConnectOptions, Fleet};
use crate::journal::{Journal, RevertAction};
use crate::target::TargetError;

/// One fault on its hosts.
pub struct RemoteFault {
    fleet: Arc<Fleet>,
    label: String,
    work: Vec<Assignment>,
    ctx: WireContext,
    lines: Vec<String>,
    applied: Vec<(usize, u64)>,
}

/// True when some fault of `exp` names hosts.
pub fn any(exp: &Experiment) -> bool {
    exp.faults.iter().any(|f| f.placement(exp.hosts.as_ref()).is_some())
}

/// Connects to every host the experiment's faults name, preflights each
/// (all in parallel) and returns one injector per remote fault, by id.
/// Nothing is applied; any host's problem is an error naming the host.
pub fn prepare(
    exp: &Experiment,
    ctx: &FaultContext,
) -> Result<BTreeMap<String, RemoteFault>, RunError> {
    let remote_faults: Vec<_> = exp
        .faults
        .iter()
        .filter_map(|f| f.placement(exp.hosts.as_ref()).map(|p| (f, p)))
        .collect();
    if remote_faults.is_empty() {
        return Ok(BTreeMap::new());
    }
    let Some(inv) = &exp.hosts else {
        return Err(RunError::Preflight(format!(
            "fault {} targets hosts, but the experiment declares no [[host]] tables; \
             pass --inventory FILE",
            remote_faults[0].0.id
        )));
    };
    // Hosts in inventory order, each connected once.
    let mut names: Vec<String> = Vec::new();
    let mut per_fault = Vec::new();
    // Faults that would cut an agent off unless it spares its session.
    let mut needs_spare: Vec<String> = Vec::new();
    for (f, placed) in &remote_faults {
        let hosts = inv
            .select(&placed.place)
            .map_err(|e| RunError::Preflight(format!("fault {}: {e}", f.id)))?;
        // The host blast radius needs only the inventory (local data), so
        // a refusal comes before any host is contacted.
        if let Some(limit) =
            exp.safety.host_limits().exceeded(hosts.len(), inv.hosts.len())
        {
            return Err(RunError::Fault {
                context: format!("fault {}: ", f.id),
                source: FaultError::Target(TargetError::BlastRadius {
                    selector: format!("{placed} (hosts)"),
                    selected: hosts.len(),
                    matched: inv.hosts.len(),
                    limit,
                }),
            });
        }
        let infra = plan::infra_fault(f)?.ok_or_else(|| {
            RunError::Preflight(format!("fault {}: not an infrastructure fault", f.id))
        })?;
        let mut work = Vec::new();
        for h in hosts {
            let sel = placed.for_host(&h.name).map_err(|e| {
                RunError::Preflight(format!("fault {} on host {}: {e}", f.id, h.name))
            })?;
            if !names.contains(&h.name) {
                names.push(h.name.clone());
            }
            work.push((h.name.clone(), retarget(&infra, &sel)));
        }
        per_fault.push((f.id.clone(), work));
        if whole_host_blackhole(&infra) {
            needs_spare.push(f.id.clone());
        }
    }
    let hosts: Vec<_> = inv.hosts.iter().filter(|h| names.contains(&h.name)).collect();
    let opts = ConnectOptions {
        lease: inv.ssh.lease,
        install: inv.ssh.install,
        echo_stderr: false,
    };
    let fleet = remote::connect(&hosts, &inv.ssh, &opts).map_err(|errors| {
        RunError::Preflight(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        )
    })?;
    let index = |name: &str| {
        fleet
            .remotes
            .iter()
            .position(|r| r.host.name == name)
            .expect("connected every host")
    };
    let mut wctx = WireContext::from(ctx);
    // As written, so `{host}` reaches `WireContext::for_host`.
    for r in &exp.regions {
        wctx.regions.insert(r.name.clone(), r.texts.clone());
    }
    let per_fault: Vec<(String, Vec<Assignment>)> = per_fault
        .into_iter()
        .map(|(id, work)| (id, work.into_iter().map(|(n, w)| (index(&n), w)).collect()))
        .collect();
    let unspared: Vec<String> = per_fault
        .iter()
        .filter(|(id, _)| needs_spare.contains(id))
        .flat_map(|(id, work)| work.iter().map(move |(i, _)| (id, *i)))
        .filter(|(_, i)| fleet.remotes[*i].info.management.is_none())
        .map(|(id, i)| {
            format!(
                "fault {id}: host {}: its agent sees no SSH session to spare \
                 (SSH_CONNECTION unset: started outside sshd, or through sudo \
                 without env_keep); a region blackhole there would cut the agent \
                 off and undo itself after one lease",
                fleet.remotes[i].host.name
            )
        })
        .collect();
    if !unspared.is_empty() {
        return Err(RunError::Preflight(unspared.join("; ")));
    }
    let all: Vec<Assignment> = per_fault.iter().flat_map(|(_, w)| w.clone()).collect();
    let problems: Vec<String> = fleet
        .preflight(&all, &wctx)
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if !problems.is_empty() {
        return Err(RunError::Preflight(problems.join("; ")));
    }
    let mut described = Vec::new();
    for (id, work) in &per_fault {
        let mut lines = Vec::new();
        for (result, (i, _)) in fleet.describe(work, &wctx).into_iter().zip(work) {
            let lines_of =
                result.map_err(|e| RunError::Preflight(format!("fault {id}: {e}")))?;
            lines.push(format!("host {}:", fleet.remotes[*i].host.name));
            lines.extend(lines_of.into_iter().map(|l| format!("  {l}")));
        }
        described.push(lines);
    }
    let fleet = Arc::new(fleet);
    Ok(per_fault
        .into_iter()
        .zip(described)
        .map(|((id, work), lines)| {
            let rf = RemoteFault {
                fleet: fleet.clone(),
                label: id.clone(),
                work,
                ctx: wctx.clone(),
                lines,
                applied: Vec::new(),
            };
            (id, rf)
        })
        .collect())
}

/// A region blackhole drops everything on the region's interfaces or
/// namespaces of each host, the agent's own session included, unless
/// the agent spares it (each agent's `hello` says whether it can).
fn whole_host_blackhole(fault: &InfraFault) -> bool {
    matches!(fault, InfraFault::RegionOutage(r) if r.method == OutageMethod::Blackhole)
}

fn host_error(e: crate::fleet::FleetError) -> FaultError {
    FaultError::Command { command: "chaos agent (remote)".into(), stderr: e.to_string() }
}

impl Injector for RemoteFault {
    fn describe(&self) -> Vec<String> {
        self.lines.clone()
    }

    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        let hosts: Vec<&str> = self
            .work
            .iter()
            .map(|(i, _)| self.fleet.remotes[*i].host.name.as_str())
            .collect();
        // Audit only: each host's agent journals what to undo there.
        let id = journal.record_apply(
            &format!("{} on hosts {}", self.label, hosts.join(", ")),
            None,
            RevertAction::Nothing {
                note: "journalled and reverted by each host's agent (lease); \
                       `chaos recover --inventory` settles a dead agent"
                    .into(),
            },
        )?;
        journal.record_reverted(id, None)?;
        let mut first_error = None;
        for (result, (i, _)) in self
            .fleet
            .apply(&self.label, &self.work, &self.ctx)
            .into_iter()
            .zip(&self.work)
        {
            match result {
                Ok((handle, _)) => self.applied.push((*i, handle)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => {
                let _ = self.revert(journal);
                Err(host_error(e))
            }
        }
    }

    fn revert(&mut self, _journal: &mut Journal) -> Result<(), FaultError> {
        let mut first_error = None;
        while let Some((i, handle)) = self.applied.pop() {
            // An agent that left answers at once with its last word: it
            // reverted on its way out (lease, signal, halt: the fault
            // ended early) or, with no last word, died and its journal
            // needs `chaos recover --inventory`. Either way the run's
            // report says so instead of showing a fault that lasted.
            if let Err(e) = self.fleet.revert(i, handle) {
                let lost = self.fleet.remotes[i].is_lost();
                first_error.get_or_insert((e, lost));
            }
        }
        match first_error {
            None => Ok(()),
            Some((e, false)) => Err(host_error(e)),
            Some((e, true)) => Err(FaultError::Command {
                command: "chaos agent (remote)".into(),
                stderr: format!(
                    "{e}; the agent left before the revert (if it did not revert on \
                     its way out, run `chaos recover --inventory`)"
                ),
            }),
        }
    }
}
