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
    blackhole_through_exec_then(protocols, true);
}

/// With `revert`, the controller reverts; without, it just goes away
/// (the exec stream closes) and the agent must revert by itself.
fn blackhole_through_exec_then(protocols: Vec<&'static str>, revert: bool) {
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
    if !revert {
        // The controller is gone: the WebSocket closes, the agent sees
        // end of input and reverts what it applied.
        drop(inj);
        let back = eventually(Duration::from_secs(5), || {
            netns::reachable(&lab.hub, addr).then_some(())
        });
        assert!(cut && named, "the fault was on (cut {cut}, named {named})");
        assert!(back.is_some(), "the agent reverted when the stream closed");
        assert!(
            !std::path::Path::new("/run/netns").join(c.netns_name()).exists(),
            "name released by the agent"
        );
        return;
    }
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
fn a_controller_that_goes_away_leaves_nothing_the_agent_reverts_on_stream_close() {
    blackhole_through_exec_then(vec!["v5.channel.k8s.io"], false);
}

#[test]
fn a_pod_network_fault_runs_through_exec_into_a_real_agent_v4() {
    blackhole_through_exec(vec!["v4.channel.k8s.io"]);
}

#[test]
fn container_kill_through_exec_kills_every_process_of_that_container_only() {
    let Some(mut c) = FakeContainer::new() else { return };
    c.spawn(&["sleep", "600"]);
    c.spawn(&["sleep", "600"]);
    let mut outside = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kube = cluster(&c, vec!["v5.channel.k8s.io"], dir.path());
    let s = settings(&kube, dir.path());
    let client = Arc::new(Kube::connect(&s).expect("client"));
    let fault = in_pod(
        "container-kill",
        chaos::agent::wire::WireFault::ProcessKill {
            target: String::new(),
            selection: chaos::agent::wire::WireSelection::Percent(1.0),
            signal: "KILL".into(),
            grace_ms: None,
        },
    );
    let mut inj = InPod::prepare(
        client,
        "kill-checkout",
        &fault,
        &s,
        Radius { max_targets: 10, max_fraction: 1.0 },
        7,
        Default::default(),
    )
    .expect("prepare");
    let mut journal = Journal::open(&dir.path().join("journal"), "k8s-kill-run").unwrap();
    inj.inject(&mut journal).expect("container-kill through exec");
    let died = eventually(Duration::from_secs(5), || c.all_exited().then_some(()));
    let outside_alive = outside.try_wait().unwrap().is_none();
    let _ = outside.kill();
    let _ = outside.wait();
    inj.revert(&mut journal).expect("nothing to undo, and no error");
    assert!(died.is_some(), "every process of the container was killed");
    assert!(outside_alive, "a process outside the container lives");
}

const IN_POD: &str = r#"
[experiment]
name = "k8s-in-pod"
duration = "4s"
baseline = "2s"

[traffic]
listen = "127.0.0.1:0"
upstream = "UPSTREAM"

[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+2pp"

[kubernetes]
agent_selector = "app=chaos-agent"

[[kubernetes.fault]]
name = "slow-checkout"
kind = "bandwidth"
target = "pod:shop/app=checkout"
container = "app"
rate = "1mbit"
duration = "2s"
"#;

#[test]
fn dry_run_of_an_in_pod_fault_names_pod_container_node_agent_and_exec_call() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    let id = format!("containerd://{}", "ab".repeat(32));
    kube.add_pod(pod_with_container(
        "shop",
        "checkout-0",
        "checkout",
        "node-a",
        "app",
        &id,
    ));
    kube.add_pod(pod("chaos", "chaos-agent-a", "chaos-agent", "node-a"));
    let port = crate::support::ClosedPort::new();
    let exp = dir.path().join("in-pod.toml");
    std::fs::write(&exp, IN_POD.replace("UPSTREAM", &port.url())).unwrap();
    let out = std::process::Command::new(chaos_bin())
        .args(["run", "--dry-run"])
        .arg(&exp)
        .env("KUBECONFIG", kube.kubeconfig(dir.path()))
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("bandwidth inside container app"), "{so}");
    assert!(
        so.contains(&format!(
            "pod shop/checkout-0 (node node-a): container app (ababababab ab) via agent pod \
             chaos/chaos-agent-a: bandwidth on container:{id}"
        )
        .replace("ababababab ab", "abababababab")),
        "{so}"
    );
    assert!(so.contains("POST /api/v1/namespaces/chaos/pods/chaos-agent-a/exec"), "{so}");
    let seen = kube.seen();
    assert!(seen.iter().all(|s| !s.path.ends_with("/exec")), "a dry run execs nothing");

    // A fault kind without its parameter, and a field of another kind.
    let bad = IN_POD
        .replace("rate = \"1mbit\"\n", "")
        .replace("container = \"app\"", "container = \"app\"\ngrace_period = \"1s\"");
    std::fs::write(&exp, bad.replace("UPSTREAM", &port.url())).unwrap();
    let out = std::process::Command::new(chaos_bin())
        .args(["validate"])
        .arg(&exp)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string()
        + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("kind \"bandwidth\" needs rate"), "{text}");
    assert!(text.contains("grace_period does not apply to kind \"bandwidth\""), "{text}");
    assert!(text.contains("in-pod.toml:"), "FILE:LINE:COL: {text}");
}
