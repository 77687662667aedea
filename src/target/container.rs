//! A container as a fault target (`container:RUNTIME://ID`): what the
//! `chaos agent` on a Kubernetes node needs to put a process or network
//! fault *inside* one container of a pod, without a container runtime
//! client and without a shell.
//!
//! The container's processes are found the way Chaos Mesh's daemon ends
//! up finding them through the CRI: by the container ID in their cgroup
//! path (`/proc/PID/cgroup`). Every runtime names the cgroup after the ID
//! (`cri-containerd-ID.scope`, `crio-ID.scope`, `docker-ID.scope` under
//! systemd; a bare `ID` directory under cgroupfs), so a cgroup path
//! component that is the ID, or ends in `-ID` / `-ID.scope`, marks a
//! process of that container. The ID is the 64 hex digits the kubelet
//! reports in `status.containerStatuses[].containerID`.
//!
//! Its network namespace is entered by name: applying a network fault
//! first attaches the container's namespace under `/run/netns` (what
//! `ip netns attach NAME PID` does: a bind mount of `/proc/PID/ns/net`),
//! journalled, so every nft/tc command and every revert — including
//! `chaos recover` from another process — runs through the same
//! `ip netns exec NAME` path as a named namespace. The name pins the
//! namespace until the fault is reverted, so a revert still finds it when
//! the container has exited in the meantime.

use std::path::Path;

use super::process::{self, ProcessInfo};
use super::TargetError;

/// A container ID as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId {
    /// `containerd`, `cri-o`, `docker`, or empty when written bare.
    pub runtime: String,
    /// 64 lowercase hex digits.
    pub id: String,
}

impl ContainerId {
    /// Parses `RUNTIME://ID` or a bare `ID` (64 hex digits).
    pub fn parse(text: &str) -> Result<ContainerId, String> {
        let (runtime, id) = match text.split_once("://") {
            Some((r, id)) => (r, id),
            None => ("", text),
        };
        let runtime_ok = runtime
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !runtime_ok || runtime.len() > 32 {
            return Err(format!("container runtime {runtime:?} is invalid"));
        }
        if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "container ID {id:?} is not 64 hex digits (write the containerID of the \
                 pod's status, e.g. containerd://<64 hex>)"
            ));
        }
        Ok(ContainerId { runtime: runtime.to_string(), id: id.to_ascii_lowercase() })
    }

    /// The first 12 digits, as `docker ps` and `crictl ps` print it.
    pub fn short(&self) -> &str {
        &self.id[..12]
    }

    /// The `/run/netns` name its network namespace is attached under
    /// while a network fault is applied (passes `check_netns`).
    pub fn netns_name(&self) -> String {
        format!("chaos-c-{}", self.short())
    }

    /// True when one line of `/proc/PID/cgroup` places the process in
    /// this container's cgroup.
    pub fn matches_cgroup_line(&self, line: &str) -> bool {
        // `hierarchy-id:controllers:path`; the path may itself hold ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else { return false };
        path.split('/').any(|part| {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            part == self.id
                || part
                    .strip_suffix(self.id.as_str())
                    .is_some_and(|prefix| prefix.ends_with('-'))
        })
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.runtime.is_empty() {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}://{}", self.runtime, self.id)
        }
    }
}

/// True when process `pid` lives in container `c` (its cgroup says so).
pub fn pid_in(c: &ContainerId, pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| text.lines().any(|l| c.matches_cgroup_line(l)))
        .unwrap_or(false)
}

/// The container's processes, oldest first (its main process leads: it
/// started before anything it spawned). Chaos itself and its ancestors
/// are never listed.
pub fn processes(c: &ContainerId) -> Vec<ProcessInfo> {
    let protected = process::self_and_ancestors();
    let mut found: Vec<ProcessInfo> = process::all()
        .into_iter()
        .filter(|p| !p.kernel_thread && pid_in(c, p.pid))
        .filter(|p| process::refusal(p, &protected).is_none())
        .collect();
    found.sort_by_key(|p| (p.starttime, p.pid));
    found
}

/// The container's processes, or why there are none.
pub fn resolve(c: &ContainerId, selector: &str) -> Result<Vec<ProcessInfo>, TargetError> {
    let found = processes(c);
    if found.is_empty() {
        return Err(TargetError::NoMatch {
            selector: selector.to_string(),
            reason: format!(
                "no process on this host has container {} in its cgroup path \
                 (/proc/*/cgroup); is the agent on the pod's node, with hostPID?",
                c.short()
            ),
        });
    }
    Ok(found)
}

/// A live process of the container whose network namespace is the
/// container's (its main process), or why not.
pub fn netns_pid(c: &ContainerId, selector: &str) -> Result<u32, TargetError> {
    Ok(resolve(c, selector)?[0].pid)
}

/// The network interfaces (other than `lo`) in the namespace of `pid`,
/// read from `/proc/PID/net/dev`: no tool and nothing entered, so a dry
/// run can list them.
pub fn interfaces(pid: u32) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else {
        return Vec::new();
    };
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .filter(|n| n != "lo" && crate::target::check_iface(n).is_ok())
        .collect()
}

/// The inode of the network namespace of `pid`.
pub fn netns_inode_of(pid: u32) -> Option<u64> {
    process::netns_inode(Path::new(&format!("/proc/{pid}/ns/net")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_ids_the_kubelet_reports_and_refuses_the_rest() {
        let c = ContainerId::parse(&format!("containerd://{ID}")).unwrap();
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.to_string(), format!("containerd://{ID}"));
        assert_eq!(c.netns_name(), "chaos-c-0123456789ab");
        assert!(crate::target::check_netns(&c.netns_name()).is_ok());
        assert_eq!(ContainerId::parse(ID).unwrap().runtime, "");
        assert!(ContainerId::parse(&format!("cri-o://{ID}")).is_ok());
        for bad in [
            "containerd://abc",
            "containerd://",
            &format!("containerd://{ID}0"),
            &format!("Docker://{ID}"),
            &format!("containerd://{}", ID.replace('0', "g")),
            &format!("x/y://{ID}"),
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn matches_the_cgroup_paths_of_every_runtime_and_nothing_else() {
        let c = ContainerId::parse(ID).unwrap();
        for yes in [
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("0::/system.slice/crio-{ID}.scope"),
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("4:memory:/kubepods/besteffort/pod1/{ID}"),
            format!("0::/test-parent/cri-containerd-{ID}.scope/init"),
        ] {
            assert!(c.matches_cgroup_line(&yes), "{yes}");
        }
        for no in [
            "0::/".to_string(),
            format!("0::/kubepods/{}", &ID[..63]),
            format!("0::/kubepods/x{ID}"),
            format!("0::/kubepods/{ID}x.scope"),
            ID.to_string(),
        ] {
            assert!(!c.matches_cgroup_line(&no), "{no}");
        }
    }

    #[test]
    fn a_container_with_no_process_here_is_no_match() {
        let c = ContainerId::parse(&"f".repeat(64)).unwrap();
        assert!(processes(&c).is_empty());
        let e = resolve(&c, "container:x").unwrap_err();
        assert!(e.to_string().contains("ffffffffffff"), "{e}");
    }

    #[test]
    fn lists_the_interfaces_of_our_own_namespace_without_lo() {
        let ifaces = interfaces(std::process::id());
        assert!(!ifaces.iter().any(|i| i == "lo"), "{ifaces:?}");
    }
}
