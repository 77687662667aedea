//! The self-healing check's wait: a watch on the Deployment or
//! StatefulSet (the fake API server streams k8s-openapi `WatchEvent`s:
//! ADDED with the current state, MODIFIED when it heals), with a bound,
//! falling back to polling when the watch is refused; the checks'
//! watchers started at each kill, a later kill superseding an earlier
//! one; and StatefulSets as pod-kill targets.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::k8s::client::Kube;
use chaos::k8s::heal::Healing;
use chaos::k8s::spec::{ReadyCheck, Settings};
use chaos::k8s::target::Workload;
use chaos::k8s::watch::{until_ready, Via};

use crate::k8s_support::{deployment, pod, statefulset, FakeKube};
use crate::support::{chaos_bin, ClosedPort};

fn client(kube: &FakeKube, dir: &Path) -> Kube {
    Kube::connect(&Settings {
        kubeconfig: Some(kube.kubeconfig(dir)),
        context: None,
        allow_system_namespaces: false,
        request_timeout: Duration::from_secs(3),
        server_dry_run: true,
        agent_namespace: "chaos".into(),
        agent_selector: "app=chaos-agent".into(),
        checks: Vec::new(),
    })
    .expect("client")
}

fn watches(kube: &FakeKube, kind: &str) -> usize {
    kube.seen()
        .iter()
        .filter(|s| s.path.ends_with(kind) && s.query.contains("watch=true"))
        .filter(|s| s.query.contains("fieldSelector=metadata.name"))
        .count()
}

#[test]
fn the_check_sees_a_deployment_heal_through_its_watch() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    kube.add_deployment(deployment("shop", "web", "web", 3));
    kube.heal_after(Some(Duration::from_millis(800)));
    kube.mark_killed();
    let k = client(&kube, dir.path());
    let w = Workload::parse("deployment:shop/web").unwrap();
    let start = Instant::now();
    let (got, via) = until_ready(&k, &w, start + Duration::from_secs(5));
    let took = start.elapsed();
    assert_eq!(got, Ok((3, 3)));
    assert_eq!(via, Via::Watch);
    assert!(took >= Duration::from_millis(600), "not before it healed: {took:?}");
    assert!(took < Duration::from_secs(3), "at the event, not the bound: {took:?}");
    assert_eq!(watches(&kube, "/deployments"), 1);
    let polls =
        kube.seen().iter().filter(|s| s.path.ends_with("/deployments/web")).count();
    assert_eq!(polls, 0, "no polling while the watch works");
}

#[test]
fn a_refused_watch_falls_back_to_polling_within_the_same_bound() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    kube.add_deployment(deployment("shop", "web", "web", 3));
    kube.refuse_watches();
    kube.heal_after(Some(Duration::from_millis(600)));
    kube.mark_killed();
    let k = client(&kube, dir.path());
    let w = Workload::parse("deployment:shop/web").unwrap();
    let (got, via) = until_ready(&k, &w, Instant::now() + Duration::from_secs(5));
    assert_eq!(got, Ok((3, 3)));
    assert_eq!(via, Via::Polling);
    let polls =
        kube.seen().iter().filter(|s| s.path.ends_with("/deployments/web")).count();
    assert!(polls >= 2, "polled until healed: {polls}");

    // Never heals: the bound holds, and the last state is named.
    kube.heal_after(None);
    kube.mark_killed();
    let start = Instant::now();
    let (got, _) = until_ready(&k, &w, start + Duration::from_millis(1200));
    let took = start.elapsed();
    assert_eq!(got, Err("2/3 ready".to_string()));
    assert!(took < Duration::from_millis(2500), "bounded: {took:?}");
}

#[test]
fn a_statefulset_is_watched_and_a_bound_ends_a_watch_that_never_heals() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    kube.add_statefulset(statefulset("data", "db", "db", 3));
    kube.heal_after(Some(Duration::from_millis(500)));
    kube.mark_killed();
    let k = client(&kube, dir.path());
    let w = Workload::parse("statefulset:data/db").unwrap();
    let (got, via) = until_ready(&k, &w, Instant::now() + Duration::from_secs(5));
    assert_eq!((got, via), (Ok((3, 3)), Via::Watch));
    assert_eq!(watches(&kube, "/statefulsets"), 1);

    kube.heal_after(None);
    kube.mark_killed();
    let start = Instant::now();
    let (got, _) = until_ready(&k, &w, start + Duration::from_millis(1000));
    assert_eq!(got, Err("2/3 ready".to_string()));
    assert!(start.elapsed() < Duration::from_millis(2500), "{:?}", start.elapsed());
}

#[test]
fn pod_kill_on_a_statefulset_target_resolves_its_pods_by_its_selector() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    kube.add_statefulset(statefulset("data", "db", "db", 3));
    for (name, node) in [("db-0", "n1"), ("db-1", "n2"), ("db-2", "n1")] {
        kube.add_pod(pod("data", name, "db", node));
    }
    kube.add_pod(pod("data", "cache-0", "cache", "n1"));
    let port = ClosedPort::new();
    let exp = dir.path().join("sts.toml");
    let text = format!(
        r#"
[experiment]
name = "sts"
duration = "4s"
baseline = "2s"

[traffic]
listen = "127.0.0.1:0"
upstream = "{}"

[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+2pp"

[kubernetes]
[[kubernetes.fault]]
name = "kill-db"
kind = "pod-kill"
target = "statefulset:data/db"
mode = "all"

[[kubernetes.check]]
metric = "ready_replicas"
target = "statefulset:data/db"
within = "30s"
"#,
        port.url()
    );
    std::fs::write(&exp, text).unwrap();
    let out = Command::new(chaos_bin())
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
    assert!(so.contains("statefulset:data/db: 3 pod(s) match"), "{so}");
    assert!(
        so.contains("api: GET /apis/apps/v1/namespaces/data/statefulsets/db"),
        "{so}"
    );
    assert!(so.contains("labelSelector=app=db"), "{so}");
    assert!(!so.contains("cache-0"), "{so}");
    assert!(so.contains("check ready_replicas statefulset:data/db"), "{so}");
}

#[test]
fn a_later_kill_supersedes_the_earlier_watch_and_the_bound_runs_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start();
    kube.add_deployment(deployment("shop", "web", "web", 3));
    kube.heal_after(Some(Duration::from_millis(1500)));
    let k = Arc::new(client(&kube, dir.path()));
    let check = ReadyCheck {
        target: Workload::parse("deployment:shop/web").unwrap(),
        within: Duration::from_secs(2),
    };
    let healing = Healing::new(Some(k.clone()), vec![check.clone()]);
    kube.mark_killed();
    healing.killed(Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    // The second kill: healed 1.5 s after it, 2.5 s after the first (out
    // of the first kill's bound, within the second's).
    kube.mark_killed();
    let second = Instant::now();
    healing.killed(second);
    let results = healing.judge();
    let took = second.elapsed();
    assert_eq!(results.len(), 1);
    let text = &results[0].text;
    assert!(results[0].passed, "{text}");
    assert!(text.contains("3/3 ready 1."), "timed from the second kill: {text}");
    assert!(text.contains("(bound 2s, seen by watch)"), "{text}");
    assert!(took < Duration::from_millis(2500), "joined at the heal: {took:?}");
    assert_eq!(watches(&kube, "/deployments"), 2, "one watch per kill");

    // Nothing killed: the bound runs from the judging, as before.
    let results = Healing::new(Some(k), vec![check]).judge();
    assert!(results[0].passed, "{}", results[0].text);
    assert!(results[0].text.contains("nothing was killed"), "{}", results[0].text);
}
