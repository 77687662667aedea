//! The pods/exec path end to end: the controller's in-pod fault code
//! (`k8s::inpod`) resolves a pod to its container ID and node, finds the
//! agent DaemonSet pod there, and execs `chaos agent --stdio` through
//! kube's WebSocket exec API; the fake API server accepts the upgrade
//! (`v5.channel.k8s.io`, or `v4` when told) and runs a real local agent
//! behind it, which puts the fault inside the "container" of
//! `k8s_container` (a containerd-style cgroup v2 scope whose process
//! lives in a lab namespace). Real traffic says the fault landed and
//! left.

use std::sync::Arc;
use std::time::Duration;

use chaos::fault::Injector;
use chaos::journal::Journal;
use chaos::k8s::client::Kube;
use chaos::k8s::inpod::InPod;
use chaos::k8s::select::{Mode, Radius};
use chaos::k8s::spec::{InPodFault, KillMethod, PodFault, Settings};
use chaos::k8s::target::Workload;

use crate::k8s_container::FakeContainer;
use crate::k8s_support::{pod, pod_with_container, ExecBackend, FakeKube};
use crate::netns::{self, Lab};
use crate::support::{chaos_bin, eventually, require_capability};

fn settings(kube: &FakeKube, dir: &std::path::Path) -> Settings {
    Settings {
        kubeconfig: Some(kube.kubeconfig(dir)),
        context: None,
        allow_system_namespaces: false,
        request_timeout: Duration::from_secs(3),
        server_dry_run: true,
        agent_namespace: "chaos".into(),
        agent_selector: "app=chaos-agent".into(),
        checks: Vec::new(),
    }
}

fn in_pod(kind: &'static str, wire: chaos::agent::wire::WireFault) -> PodFault {
    PodFault {
        target: Workload::parse("pod:shop/app=checkout").unwrap(),
        mode: Mode::One,
        method: KillMethod::Delete,
        grace_period: None,
        inside: Some(InPodFault { kind, container: Some("app".into()), wire }),
    }
}

/// The cluster: pod shop/checkout-0 whose container `app` is `c`, on
/// node-a, and the agent pod there; a second pod of another app.
fn cluster(
    c: &FakeContainer,
    protocols: Vec<&'static str>,
    dir: &std::path::Path,
) -> FakeKube {
    let kube = FakeKube::start();
    let id = format!("containerd://{}", c.id);
    kube.add_pod(pod_with_container(
        "shop",
        "checkout-0",
        "checkout",
        "node-a",
        "app",
        &id,
    ));
    kube.add_pod(pod("chaos", "chaos-agent-a", "chaos-agent", "node-a"));
    std::fs::create_dir_all(dir.join("agent-journal")).unwrap();
    std::fs::create_dir_all(dir.join("agent-state")).unwrap();
    kube.serve_exec(ExecBackend {
        bin: chaos_bin(),
        journal_dir: dir.join("agent-journal"),
        state_dir: dir.join("agent-state"),
        protocols,
    });
    kube
}

fn blackhole_through_exec(protocols: Vec<&'static str>) {
    if !require_capability(netns::can_create_netns(), "network namespaces (root)") {
        return;
    }
    let Some(mut c) = FakeContainer::new() else { return };
    let lab = Lab::new(1);
    let spoke = lab.spokes[0].clone();
    c.spawn(&["ip", "netns", "exec", &spoke, "sleep", "600"]);
    let listener = netns::listen(&spoke, Lab::spoke_addr(0), 0);
    let addr = listener.local_addr().unwrap();
    let want = std::fs::metadata(format!("/run/netns/{spoke}")).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    let entered = eventually(Duration::from_secs(5), || {
        let ino =
            std::fs::metadata(format!("/proc/{}/ns/net", c.pids()[0])).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            });
        (ino == want).then_some(())
    });
    assert!(entered.is_some(), "container process in its namespace");
    let dir = tempfile::tempdir().unwrap();
    let kube = cluster(&c, protocols, dir.path());
    let s = settings(&kube, dir.path());
    let client = Arc::new(Kube::connect(&s).expect("client"));
    let fault = in_pod(
        "blackhole",
        chaos::agent::wire::WireFault::Blackhole {
            target: String::new(),
            selection: chaos::agent::wire::WireSelection::Count(1),
            filter: Default::default(),
        },
    );
    let mut inj = InPod::prepare(
        client,
        "cut-checkout",
        &fault,
        &s,
        Radius { max_targets: 10, max_fraction: 1.0 },
        7,
        Default::default(),
    )
    .expect("prepare");
    let lines = inj.describe().join("\n");
    assert!(
        lines.contains("pod shop/checkout-0 (node node-a): container app"),
        "{lines}"
    );
    assert!(lines.contains("via agent pod chaos/chaos-agent-a"), "{lines}");
    assert!(lines.contains(&format!("container:containerd://{}", c.id)), "{lines}");
    assert!(netns::reachable(&lab.hub, addr), "reachable before");

    let mut journal = Journal::open(&dir.path().join("journal"), "k8s-exec-run").unwrap();
    inj.inject(&mut journal).expect("inject through exec");
    let cut = !netns::reachable(&lab.hub, addr);
    let named = std::path::Path::new("/run/netns").join(c.netns_name()).exists();
    inj.revert(&mut journal).expect("revert through exec");
    let back = netns::reachable(&lab.hub, addr);
    assert!(cut, "the blackhole reached the container's namespace");
    assert!(named, "the agent named the container's namespace");
    assert!(back, "reachable after the revert");
    assert!(
        !std::path::Path::new("/run/netns").join(c.netns_name()).exists(),
        "name released"
    );
    let seen = kube.seen();
    let exec: Vec<_> = seen.iter().filter(|s| s.path.ends_with("/exec")).collect();
    assert_eq!(exec.len(), 1, "one agent connection: {seen:?}");
    assert_eq!(exec[0].path, "/api/v1/namespaces/chaos/pods/chaos-agent-a/exec");
    assert!(exec[0].query.contains("command=--stdio"), "{:?}", exec[0]);
    let lists: Vec<_> =
        seen.iter().filter(|s| s.path == "/api/v1/namespaces/chaos/pods").collect();
    assert!(
        lists.iter().all(|s| s.query.contains("fieldSelector=spec.nodeName%3Dnode-a")
            || s.query.contains("fieldSelector=spec.nodeName=node-a")),
        "the agent is looked up on the pod's node: {lists:?}"
    );
    // Dropping the injector closes the stream: the agent leaves.
    drop(inj);
    let journal_text = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(
        journal_text.contains("cut-checkout blackhole in pod shop/checkout-0"),
        "audit record: {journal_text}"
    );
}

#[test]
fn a_pod_network_fault_runs_through_exec_into_a_real_agent_v5() {
    blackhole_through_exec(vec!["v5.channel.k8s.io", "v4.channel.k8s.io"]);
}

#[test]
fn a_pod_network_fault_runs_through_exec_into_a_real_agent_v4() {
    blackhole_through_exec(vec!["v4.channel.k8s.io"]);
}
