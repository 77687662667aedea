//! Faults inside a container, for real, on this machine: a "container"
//! is a cgroup v2 directory named like containerd's
//! (`cri-containerd-<64 hex>.scope`, under a test-owned parent) holding
//! real processes that live in their own network namespace. A local
//! `chaos agent --stdio` gets `container:containerd://<id>` targets,
//! exactly what the controller sends the DaemonSet agent for a pod's
//! container: it finds the processes by the id in /proc/*/cgroup, names
//! their namespace, injects nft loss / blackhole there (checked with
//! real traffic and `nft list` in that namespace), pauses the
//! container's processes (not the others), and reverts, leaving no
//! table, name or stopped process behind. Cgroups, processes and
//! namespaces are removed on drop, also when a test fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos::agent::client::AgentClient;
use chaos::agent::protocol::{Request, Response};
use chaos::agent::wire::{WireContext, WireFault, WireFilter, WireSelection};

use crate::fleet_agent::{state, LocalAgent};
use crate::netns::{self, Lab};
use crate::support::{chaos_bin, eventually, require_capability, unique_name};

/// The cgroup v2 mount point, if this host has one.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// A fake container: a containerd-style cgroup with our processes in it.
pub struct FakeContainer {
    pub id: String,
    parent: PathBuf,
    scope: PathBuf,
    procs: Vec<Child>,
}

impl FakeContainer {
    /// An empty container cgroup, or None (SKIPPED) without cgroup v2.
    pub fn new() -> Option<FakeContainer> {
        let root = cgroup2_root();
        let writable = root.as_ref().is_some_and(|r| {
            let probe = r.join(unique_name("chaos-cgprobe"));
            let ok = std::fs::create_dir(&probe).is_ok();
            let _ = std::fs::remove_dir(&probe);
            ok
        });
        if !require_capability(writable, "a writable cgroup v2 hierarchy (root)") {
            return None;
        }
        let id: String =
            (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
        let parent = root?.join(unique_name("chaos-test-kubepods"));
        let scope = parent.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("create container cgroup");
        Some(FakeContainer { id, parent, scope, procs: Vec::new() })
    }

    pub fn target(&self) -> String {
        format!("container:containerd://{}", self.id)
    }

    pub fn netns_name(&self) -> String {
        format!("chaos-c-{}", &self.id[..12])
    }

    /// Starts `argv` and moves it into the container's cgroup.
    pub fn spawn(&mut self, argv: &[&str]) -> u32 {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn container process");
        let pid = child.id();
        self.procs.push(child);
        std::fs::write(self.scope.join("cgroup.procs"), pid.to_string())
            .expect("join the container cgroup");
        pid
    }

    /// The pids started in it so far.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Child::id).collect()
    }

    /// True once every process started in it has exited (and is reaped).
    pub fn all_exited(&mut self) -> bool {
        self.procs.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Kills the container's processes (the container exits).
    pub fn stop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs.clear();
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        self.stop();
        // A process the test started may have been left stopped by a
        // failing assertion: it has been killed above; the cgroup can go
        // once the kernel has reaped it.
        let gone =
            eventually(Duration::from_secs(5), || std::fs::remove_dir(&self.scope).ok());
        if gone.is_none() {
            eprintln!("could not remove {}", self.scope.display());
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// The inode of the network namespace of `pid` (or of a /run/netns name).
fn ns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn in_ns(ns: &str, argv: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(client: &AgentClient, fault: WireFault) -> Result<(u64, Vec<String>), String> {
    let ctx = WireContext { run_id: unique_name("ctr"), seed: 1, ..Default::default() };
    match client
        .call(|id| Request::Apply {
            id,
            label: "in-container".into(),
            fault,
            context: ctx,
            lease_ms: None,
        })
        .expect("apply")
    {
        Response::Applied { handle, lines, .. } => Ok((handle, lines)),
        Response::Error { message, .. } => Err(message),
        other => panic!("{other:?}"),
    }
}

fn revert(client: &AgentClient, handle: u64) {
    match client.call(|id| Request::Revert { id, handle: Some(handle) }).expect("revert")
    {
        Response::Reverted { handles, .. } => assert_eq!(handles, vec![handle]),
        other => panic!("revert: {other:?}"),
    }
}

/// A lab spoke whose namespace is the container's: the container's
/// process runs in it, a TCP listener waits there at `addr`.
fn container_in_lab(
) -> Option<(Lab, FakeContainer, u32, SocketAddr, std::net::TcpListener)> {
    if !require_capability(netns::can_create_netns(), "network namespaces (root)") {
        return None;
    }
    let mut c = FakeContainer::new()?;
    let lab = Lab::new(1);
    let spoke = lab.spokes[0].clone();
    let pid = c.spawn(&["ip", "netns", "exec", &spoke, "sleep", "600"]);
    // `ip netns exec` enters the namespace, then becomes `sleep`.
    let want = ns_inode(&format!("/run/netns/{spoke}"));
    let entered = eventually(Duration::from_secs(5), || {
        (ns_inode(&format!("/proc/{pid}/ns/net")) == want).then_some(())
    });
    assert!(entered.is_some(), "the container process never entered its netns");
    let listener = netns::listen(&spoke, Lab::spoke_addr(0), 0);
    let addr = listener.local_addr().unwrap();
    Some((lab, c, pid, addr, listener))
}

#[test]
fn network_faults_on_a_container_land_in_its_namespace_and_revert_to_nothing() {
    let Some((lab, c, _pid, addr, _listener)) = container_in_lab() else { return };
    let spoke = lab.spokes[0].clone();
    let before = lab.snapshot();
    assert!(netns::reachable(&lab.hub, addr), "reachable before the fault");
    let agent = LocalAgent::spawn("30s");
    agent.client().hello(Duration::from_secs(30)).expect("hello");

    // Blackhole: nothing reaches the container.
    let (h, lines) = apply(
        agent.client(),
        WireFault::Blackhole {
            target: c.target(),
            selection: WireSelection::Count(1),
            filter: WireFilter::default(),
        },
    )
    .expect("blackhole applied");
    let name = c.netns_name();
    assert!(
        lines.iter().any(|l| l.contains(&format!("ip netns attach {name}"))),
        "{lines:?}"
    );
    assert_eq!(
        ns_inode(&format!("/run/netns/{name}")),
        ns_inode(&format!("/run/netns/{spoke}")),
        "the container's namespace is the one named"
    );
    let tables = in_ns(&spoke, &["nft", "list", "tables"]);
    assert!(tables.contains("chaos_"), "chaos table in the container netns: {tables}");
    assert!(!netns::reachable(&lab.hub, addr), "blackholed");
    revert(agent.client(), h);
    assert!(netns::reachable(&lab.hub, addr), "reachable after revert");
    assert!(!std::path::Path::new("/run/netns").join(&name).exists(), "name released");

    // Loss 50%: about half of 400 datagrams arrive, then all of them.
    let (h, _) = apply(
        agent.client(),
        WireFault::PacketLoss {
            target: c.target(),
            selection: WireSelection::Count(1),
            loss: 0.5,
            filter: WireFilter::default(),
        },
    )
    .expect("loss applied");
    let got = netns::udp_delivered(&lab.hub, &spoke, Lab::spoke_addr(0), 400);
    assert!((120..=280).contains(&got), "50% loss delivered {got}/400");
    revert(agent.client(), h);
    let got = netns::udp_delivered(&lab.hub, &spoke, Lab::spoke_addr(0), 200);
    assert_eq!(got, 200, "no loss after revert");

    // tbf on the container's interfaces (found from /proc/PID/net/dev).
    let (h, lines) = apply(
        agent.client(),
        WireFault::Bandwidth {
            target: c.target(),
            selection: WireSelection::Count(1),
            rate: "1mbit".into(),
        },
    )
    .expect("bandwidth applied");
    assert!(lines.iter().any(|l| l.contains("dev s0")), "{lines:?}");
    assert!(in_ns(&spoke, &["tc", "qdisc", "show", "dev", "s0"]).contains("tbf"));
    revert(agent.client(), h);
    assert_eq!(lab.snapshot(), before, "nft and tc state as before");
    assert!(!std::path::Path::new("/run/netns").join(&name).exists(), "name released");
}

#[test]
fn pausing_a_container_stops_its_processes_only_and_the_lease_resumes_them() {
    let Some(mut c) = FakeContainer::new() else { return };
    let a = c.spawn(&["sleep", "600"]);
    let b = c.spawn(&["sleep", "600"]);
    let mut outside = Command::new("sleep").arg("600").spawn().unwrap();
    let agent = LocalAgent::spawn("30s");
    // No heartbeats follow: the 1.5 s lease must revert by itself.
    agent.client().hello(Duration::from_millis(1500)).expect("hello");
    let applied = apply(
        agent.client(),
        WireFault::ProcessPause {
            target: c.target(),
            selection: WireSelection::Percent(1.0),
        },
    );
    let paused = eventually(Duration::from_secs(1), || {
        (state(a) == Some('T') && state(b) == Some('T')).then_some(())
    });
    let outside_state = state(outside.id());
    let resumed = eventually(Duration::from_secs(5), || {
        (state(a) == Some('S') && state(b) == Some('S')).then_some(())
    });
    let _ = outside.kill();
    let _ = outside.wait();
    applied.expect("pause applied");
    assert!(paused.is_some(), "both container processes stopped");
    assert_eq!(outside_state, Some('S'), "a process outside the container is untouched");
    assert!(resumed.is_some(), "the lease resumed the container's processes");
}

#[test]
fn a_container_that_exits_under_a_fault_is_settled_by_recover_and_leaves_nothing() {
    if !require_capability(netns::can_create_netns(), "network namespaces (root)") {
        return;
    }
    let Some(mut c) = FakeContainer::new() else { return };
    // A namespace of its own, named nowhere: as a real pod's.
    let pid = c.spawn(&["unshare", "--net", "--", "sleep", "600"]);
    let host = ns_inode("/proc/self/ns/net");
    let own = eventually(Duration::from_secs(5), || {
        let ino = ns_inode(&format!("/proc/{pid}/ns/net"));
        (ino.is_some() && ino != host).then_some(())
    });
    assert!(own.is_some(), "unshare never made a namespace");
    let state_dir = tempfile::tempdir().unwrap();
    let mut agent = LocalAgent::spawn_with_state("30s", Some(state_dir.path()));
    agent.client().hello(Duration::from_secs(30)).expect("hello");
    apply(
        agent.client(),
        WireFault::Blackhole {
            target: c.target(),
            selection: WireSelection::Count(1),
            filter: WireFilter::default(),
        },
    )
    .expect("blackhole applied");
    let name = c.netns_name();
    assert!(in_ns(&name, &["nft", "list", "tables"]).contains("chaos_"));
    // The agent dies without reverting, then the container exits.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    c.stop();
    assert!(
        std::path::Path::new("/run/netns").join(&name).exists(),
        "the name outlives the agent (recover needs it)"
    );
    let out = Command::new(chaos_bin())
        .env("CHAOS_STATE_DIR", state_dir.path())
        .args(["recover", "--journal-dir"])
        .arg(agent._journal.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string()
        + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&name), "recover names what it released: {text}");
    assert!(text.contains("container no longer exists"), "the note says why: {text}");
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "name released by recover: {text}"
    );
    // Idempotent: a second recover has nothing left to do.
    let again = Command::new(chaos_bin())
        .env("CHAOS_STATE_DIR", state_dir.path())
        .args(["recover", "--journal-dir"])
        .arg(agent._journal.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&again.stdout).contains(&name));
}
