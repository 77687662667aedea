//! Network faults inside a container (`container:RUNTIME://ID` targets):
//! the step that names the container's network namespace before the
//! nft/tc steps run in it, and the revert that releases the name.
//!
//! Why a name and not `nsenter --net=/proc/PID/ns/net` per command: the
//! journal then holds the same `DeleteNftTable { netns: NAME }` /
//! `DeleteQdisc` records as for any named namespace, so the agent's
//! lease revert and `chaos recover` (another process, later) undo the
//! fault through one tested path, and they never depend on a pid that
//! may have exited or been reused by then: the name pins the namespace
//! until the revert releases it (last step undone, first step applied).
//! One network fault per container at a time: the name is the lock.

use std::path::Path;

use super::cmd::Cmd;
use super::plan::{Apply, Step};
use super::{FaultError, InfraFault};
use crate::journal::RevertAction;
use crate::target::container::{self, ContainerId};
use crate::target::{NetTarget, TargetSelector};

/// The container a network fault targets, if it targets one.
pub fn of_net_fault(fault: &InfraFault) -> Option<&ContainerId> {
    let target = match fault {
        InfraFault::Netem(f) => &f.target,
        InfraFault::PacketLoss(f) => &f.target,
        InfraFault::Blackhole(f) => &f.target,
        InfraFault::TcpReset(f) => &f.target,
        InfraFault::Bandwidth(f) => &f.target,
        _ => return None,
    };
    match target {
        TargetSelector::Container(c) => Some(c),
        _ => None,
    }
}

/// The network target a container stands for once its namespace is named.
pub fn net_target(c: &ContainerId) -> NetTarget {
    NetTarget { netns: Some(c.netns_name()), iface: None }
}

/// The container's interfaces (for tc), as (netns name, device), read
/// without entering anything.
pub fn devices(c: &ContainerId) -> Result<Vec<(Option<String>, String)>, FaultError> {
    let selector = format!("container:{c}");
    let pid = container::netns_pid(c, &selector)?;
    let found = container::interfaces(pid);
    if found.is_empty() {
        return Err(FaultError::Target(crate::target::TargetError::NoMatch {
            selector,
            reason: "the container's network namespace has no interface but lo".into(),
        }));
    }
    Ok(found.into_iter().map(|d| (Some(c.netns_name()), d)).collect())
}

/// The first step of a network fault in a container: name its namespace.
pub fn enter_step(c: &ContainerId) -> Result<Step, FaultError> {
    let pid = container::netns_pid(c, &format!("container:{c}"))?;
    let name = c.netns_name();
    Ok(Step {
        what: format!(
            "name the network namespace of container {} (pid {pid}) /run/netns/{name}",
            c.short()
        ),
        lock: net_target(c).lock_key(),
        apply: Apply::EnterNetns { name: name.clone(), container: c.to_string() },
        revert: RevertAction::ReleaseNetns { name, container: c.to_string() },
    })
}

fn named(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Attaches the namespace of the container's main process (looked up
/// again now) as `/run/netns/NAME`, then checks that the process is still
/// the container's and the name is its namespace: a pid that exited and
/// was reused between the lookup and the attach is caught and undone.
pub fn enter(name: &str, container_text: &str) -> Result<(), FaultError> {
    crate::target::check_netns(name).map_err(FaultError::Invalid)?;
    let c = ContainerId::parse(container_text).map_err(FaultError::Invalid)?;
    if named(name) {
        return Err(FaultError::Command {
            command: format!("ip netns attach {name}"),
            stderr: format!(
                "/run/netns/{name} exists: container {} is already under a network fault \
                 (one at a time per container; `chaos recover` if a dead run left it)",
                c.short()
            ),
        });
    }
    let pid = container::netns_pid(&c, &format!("container:{c}"))?;
    let attach = Cmd::new(None, "ip", &["netns", "attach", name, &pid.to_string()]);
    attach.run()?;
    let want = container::netns_inode_of(pid);
    let got = crate::target::process::netns_inode(&Path::new("/run/netns").join(name));
    if !container::pid_in(&c, pid) || want.is_none() || want != got {
        let _ = Cmd::new(None, "ip", &["netns", "del", name]).run();
        return Err(FaultError::Gone { pid });
    }
    Ok(())
}

/// Releases the name (never the namespace: the container holds that).
/// A container that exited while the fault was on is settled with a
/// note: its namespace lived on only through the name, and goes now.
pub fn release(name: &str, container_text: &str) -> Result<(), FaultError> {
    crate::target::check_netns(name).map_err(FaultError::Invalid)?;
    if !named(name) {
        return Ok(());
    }
    if let Ok(c) = ContainerId::parse(container_text) {
        if container::processes(&c).is_empty() {
            tracing::warn!(
                container = %c,
                netns = name,
                "container no longer exists; its network namespace was kept only by \
                 chaos's name and is released now (the faults in it went with it)"
            );
        }
    }
    Cmd::new(None, "ip", &["netns", "del", name]).run().map(|_| ())
}
