//! Kubernetes targets end to end: the real `chaos` binary with a
//! generated kubeconfig against the in-process fake API server
//! (`k8s_support`). Asserts the exact requests (paths, selectors, grace
//! periods, dryRun) and the behaviour on API errors and timeouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chaos::demo::{Fleet, FleetSpec, Variant};

use crate::k8s_support::{deployment, pod, FakeKube, Seen};
use crate::support::{chaos_bin, ClosedPort};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A cluster with deployment shop/web (3 replicas, app=web) on two nodes,
/// and a pod of another app that must never be hit.
fn cluster() -> FakeKube {
    let k = FakeKube::start();
    k.add_deployment(deployment("shop", "web", "web", 3));
    k.add_pod(pod("shop", "web-a", "web", "node-1"));
    k.add_pod(pod("shop", "web-b", "web", "node-2"));
    k.add_pod(pod("shop", "web-c", "web", "node-1"));
    k.add_pod(pod("shop", "db-0", "db", "node-2"));
    k
}

fn experiment(dir: &Path, traffic: &str, kubernetes: &str) -> PathBuf {
    experiment_for("4s", dir, traffic, kubernetes)
}

/// An experiment whose fault window lasts `duration`.
fn experiment_for(
    duration: &str,
    dir: &Path,
    traffic: &str,
    kubernetes: &str,
) -> PathBuf {
    let text = format!(
        r#"
[experiment]
name = "k8s"
duration = "{duration}"
baseline = "2s"
min_samples = 200

{traffic}

[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+2pp"

{kubernetes}
"#
    );
    let p = dir.join("k8s.toml");
    std::fs::write(&p, text).expect("write experiment");
    p
}

fn offline_traffic(port: &ClosedPort) -> String {
    format!("[traffic]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n", port.url())
}

fn dry_run(dir: &Path, kube: &FakeKube, exp: &Path) -> Output {
    Command::new(chaos_bin())
        .args(["run", "--dry-run"])
        .arg(exp)
        .env("KUBECONFIG", kube.kubeconfig(dir))
        .env("CHAOS_JOURNAL_DIR", dir.join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("chaos run --dry-run")
}

fn of<'a>(seen: &'a [Seen], method: &str, path_end: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.method == method && s.path.ends_with(path_end)).collect()
}

const KILL_TWO: &str = r#"
[kubernetes]
request_timeout = "2s"

[[kubernetes.fault]]
name = "kill-web"
kind = "pod-kill"
target = "deployment:shop/web"
mode = "fixed"
value = 2
grace_period = "5s"
"#;

#[test]
fn dry_run_lists_the_pods_and_calls_and_the_server_dry_runs_the_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = cluster();
    let port = ClosedPort::new();
    let exp = experiment(dir.path(), &offline_traffic(&port), KILL_TWO);
    let out = dry_run(dir.path(), &kube, &exp);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}\n{}", stderr(&out));
    assert!(
        so.contains("deployment:shop/web: 3 pod(s) match, mode fixed 2 → 2 pod(s)"),
        "{so}"
    );
    assert_eq!(so.matches("  pod shop/web-").count(), 2, "two pods named: {so}");
    assert!(!so.contains("db-0"), "another app's pod is never a candidate: {so}");
    assert!(
        so.contains("api: GET /apis/apps/v1/namespaces/shop/deployments/web"),
        "{so}"
    );
    assert!(
        so.contains("api: GET /api/v1/namespaces/shop/pods?labelSelector=app=web"),
        "{so}"
    );
    assert!(so.contains("?dryRun=All (gracePeriodSeconds 5)"), "{so}");
    assert!(
        so.contains("server dry run (dryRun=All): accepted, nothing changed"),
        "{so}"
    );

    let seen = kube.seen();
    let lists = of(&seen, "GET", "/api/v1/namespaces/shop/pods");
    assert_eq!(lists.len(), 1, "{seen:?}");
    // Exactly as kube sends it (a leading `&`, which API servers ignore).
    assert_eq!(lists[0].query, "&labelSelector=app%3Dweb", "{seen:?}");
    let deletes: Vec<_> = seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 2, "{seen:?}");
    for d in deletes {
        assert!(d.path.starts_with("/api/v1/namespaces/shop/pods/web-"), "{d:?}");
        assert_eq!(d.query, "dryRun=All", "{d:?}");
        let body = d.body.as_ref().expect("DeleteOptions body");
        assert_eq!(body["gracePeriodSeconds"], 5, "{body}");
        assert_eq!(body["dryRun"], serde_json::json!(["All"]), "{body}");
    }
    assert_eq!(kube.pod_names().len(), 4, "a dry run deletes nothing");
    assert!(!dir.path().join("journal").exists(), "a dry run journals nothing");

    // Same seed, same pods.
    let again = stdout(&dry_run(dir.path(), &kube, &exp));
    let pods = |s: &str| {
        s.lines()
            .filter(|l| l.contains("  pod shop/"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(pods(&so), pods(&again));
}

#[test]
fn eviction_sends_an_eviction_and_reports_a_pdb_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = cluster();
    kube.pdb_blocks_evictions();
    let port = ClosedPort::new();
    let exp = experiment(
        dir.path(),
        &offline_traffic(&port),
        r#"
[kubernetes]
[[kubernetes.fault]]
kind = "pod-kill"
target = "pod:shop/app=web"
mode = "one"
eviction = true
grace_period = "0s"
"#,
    );
    let out = dry_run(dir.path(), &kube, &exp);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}\n{}", stderr(&out));
    assert!(so.contains("would be refused by a PodDisruptionBudget"), "{so}");
    let seen = kube.seen();
    assert!(
        of(&seen, "GET", "/deployments/web").is_empty(),
        "a pod: target reads no deployment"
    );
    let ev: Vec<_> = seen.iter().filter(|s| s.path.ends_with("/eviction")).collect();
    assert_eq!(ev.len(), 1, "{seen:?}");
    assert_eq!(ev[0].method, "POST");
    assert_eq!(ev[0].query, "dryRun=All");
    let body = ev[0].body.as_ref().expect("Eviction body");
    assert_eq!(body["apiVersion"], "policy/v1", "{body}");
    assert_eq!(body["kind"], "Eviction", "{body}");
    assert_eq!(body["deleteOptions"]["gracePeriodSeconds"], 0, "{body}");
    assert_eq!(body["metadata"]["namespace"], "shop", "{body}");
}

/// Each API failure is exit 5 with the status, the call and a hint.
#[test]
fn api_errors_and_timeouts_fail_preflight_with_exit_5_naming_the_call() {
    let port = ClosedPort::new();
    let cases: &[(&str, u16, &str)] = &[
        (
            "GET /apis/apps/v1/namespaces/shop/deployments/web",
            401,
            "credentials in the kubeconfig were refused",
        ),
        ("GET /api/v1/namespaces/shop/pods", 403, "deploy/kubernetes/rbac.yaml"),
        (
            "GET /apis/apps/v1/namespaces/shop/deployments/web",
            404,
            "check the namespace and name",
        ),
        ("DELETE /api/v1/namespaces/shop/pods/", 409, "conflict"),
        (
            "DELETE /api/v1/namespaces/shop/pods/",
            429,
            "PodDisruptionBudget or rate limit",
        ),
        ("GET /api/v1/namespaces/shop/pods", 500, "the API server failed"),
    ];
    for (prefix, status, hint) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let kube = cluster();
        kube.fail(prefix, *status);
        let exp = experiment(dir.path(), &offline_traffic(&port), KILL_TWO);
        let out = dry_run(dir.path(), &kube, &exp);
        let se = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{status}: {se}");
        assert!(se.contains(&format!(": {status} ")), "{status}: {se}");
        assert!(se.contains(hint), "{status}: {se}");
        assert!(
            se.contains(prefix.split_whitespace().nth(1).unwrap_or("")),
            "names the call: {se}"
        );
        assert_eq!(kube.pod_names().len(), 4);
    }
    // A server that does not answer within request_timeout.
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = cluster();
    kube.delay("GET /api/v1/namespaces/shop/pods", Duration::from_secs(5));
    let exp = experiment(
        dir.path(),
        &offline_traffic(&port),
        &KILL_TWO.replace("request_timeout = \"2s\"", "request_timeout = \"500ms\""),
    );
    let t = std::time::Instant::now();
    let out = dry_run(dir.path(), &kube, &exp);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no answer from the API server within 500ms"),
        "{}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "bounded by the timeout: {:?}",
        t.elapsed()
    );
}

#[test]
fn system_namespaces_and_bad_targets_are_refused_at_their_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = ClosedPort::new();
    let exp = experiment(
        dir.path(),
        &offline_traffic(&port),
        r#"
[kubernetes]
[[kubernetes.fault]]
kind = "pod-kill"
target = "pod:kube-system/k8s-app=kube-dns"

[[kubernetes.fault]]
kind = "pod-kil"
target = "deployment:shop/web"
mode = "fixed"

[[kubernetes.check]]
metric = "ready_replicas"
target = "pod:shop/app=web"
within = "60s"
"#,
    );
    let out =
        Command::new(chaos_bin()).arg("validate").arg(&exp).output().expect("validate");
    let se = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(2), "{se}");
    let file = exp.display().to_string();
    for (line_col, what) in [
        ("22:10", "kube-system is a system namespace"),
        ("22:10", "allow_system_namespaces = true"),
        ("25:8", "unknown Kubernetes fault kind \"pod-kil\""),
        ("25:8", "did you mean \"pod-kill\""),
        ("27:8", "mode \"fixed\" needs value"),
        ("31:10", "ready_replicas needs a workload with desired replicas"),
    ] {
        assert!(se.contains(&format!("{file}:{line_col}")), "{line_col}: {se}");
        assert!(se.contains(what), "{what}: {se}");
    }
    // With allow_system_namespaces the same target is accepted.
    let ok = experiment(
        dir.path(),
        &offline_traffic(&port),
        "[kubernetes]\nallow_system_namespaces = true\n[[kubernetes.fault]]\nkind = \"pod-kill\"\ntarget = \"pod:kube-system/k8s-app=kube-dns\"\n",
    );
    let out =
        Command::new(chaos_bin()).arg("validate").arg(&ok).output().expect("validate");
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn the_agent_transport_names_a_refused_exec_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = cluster();
    kube.add_pod(pod("chaos", "chaos-agent-x", "chaos-agent", "node-1"));
    let settings = chaos::k8s::spec::Settings {
        kubeconfig: Some(kube.kubeconfig(dir.path())),
        context: None,
        allow_system_namespaces: false,
        request_timeout: Duration::from_secs(2),
        server_dry_run: true,
        agent_namespace: "chaos".into(),
        agent_selector: "app=chaos-agent".into(),
        checks: Vec::new(),
    };
    let client = chaos::k8s::client::Kube::connect(&settings).expect("client");
    let agent =
        chaos::k8s::exec::find_agent(&client, "chaos", "app=chaos-agent", "node-1")
            .expect("the agent pod on node-1");
    assert_eq!(agent.name, "chaos-agent-x");
    let err = match chaos::k8s::exec::connect(&client, &agent, Duration::from_secs(3)) {
        Ok(_) => panic!("the fake server has no WebSocket"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("refused the pods/exec upgrade"), "{err}");
    assert!(err.contains("pods/exec"), "{err}");
    let seen = kube.seen();
    let exec: Vec<_> = seen.iter().filter(|s| s.path.ends_with("/exec")).collect();
    assert_eq!(exec.len(), 1, "{seen:?}");
    assert_eq!(exec[0].path, "/api/v1/namespaces/chaos/pods/chaos-agent-x/exec");
    assert!(
        exec[0].query.contains("command=chaos&command=agent&command=--stdio"),
        "{:?}",
        exec[0]
    );
    assert!(exec[0].query.contains("container=agent"), "{:?}", exec[0]);
    let none =
        chaos::k8s::exec::find_agent(&client, "chaos", "app=chaos-agent", "node-9");
    assert!(none.expect_err("no agent there").to_string().contains("no chaos agent pod"));
}

fn demo_fleet(dir: &Path) -> Fleet {
    let mut spec = FleetSpec::new(Variant::Resilient, dir.join("fleet"));
    spec.exe = Some(chaos_bin());
    Fleet::start(spec).expect("demo fleet starts")
}

const DEMO_TRAFFIC: &str = r#"
[traffic]
listen = "${CHAOS_DEMO_LISTEN}"
upstream = "${CHAOS_DEMO_API_CONTROL}"
control_upstream = "${CHAOS_DEMO_API_CONTROL}"
experiment_upstream = "${CHAOS_DEMO_API_EXPERIMENT}"
experiment_percent = 40
control_percent = 40
upstream_timeout = "1s"

[load]
path = "/checkout"
rate = 200
concurrency = 64
keys = 50000
"#;

fn run(dir: &Path, fleet: &Fleet, kube: &FakeKube, exp: &Path) -> Output {
    run_with(dir, fleet, kube, exp, &["--quiet"])
}

/// `run` with the progress on stderr (`&[]`) or not (`&["--quiet"]`).
fn run_with(
    dir: &Path,
    fleet: &Fleet,
    kube: &FakeKube,
    exp: &Path,
    extra: &[&str],
) -> Output {
    Command::new(chaos_bin())
        .arg("run")
        .args(extra)
        .args(["--json", "--report-dir"])
        .arg(dir.join("reports"))
        .arg(exp)
        .envs(fleet.env_vars())
        .env("CHAOS_DEMO_LISTEN", "127.0.0.1:0")
        .env("KUBECONFIG", kube.kubeconfig(dir))
        .env("CHAOS_JOURNAL_DIR", dir.join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("chaos run")
}

fn journal_text(dir: &Path) -> String {
    std::fs::read_dir(dir.join("journal"))
        .expect("journal dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

const KILL_AND_CHECK: &str = r#"
[kubernetes]
[[kubernetes.fault]]
name = "kill-web"
kind = "pod-kill"
target = "deployment:shop/web"
mode = "one"
grace_period = "0s"
start = "1s"

[[kubernetes.check]]
metric = "ready_replicas"
target = "deployment:shop/web"
within = "WITHIN"
"#;

#[test]
fn a_run_kills_a_pod_the_deployment_heals_and_the_run_is_accepted() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = demo_fleet(dir.path());
    let kube = cluster();
    kube.heal_after(Some(Duration::from_millis(1500)));
    let exp =
        experiment(dir.path(), DEMO_TRAFFIC, &KILL_AND_CHECK.replace("WITHIN", "10s"));
    let out = run(dir.path(), &fleet, &kube, &exp);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json");
    assert_eq!(v["outcome"], "accepted", "{v}");
    let seen = kube.seen();
    let deletes: Vec<_> = seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "one pod, no dry run: {seen:?}");
    assert_eq!(deletes[0].query, "", "{:?}", deletes[0]);
    assert_eq!(deletes[0].body.as_ref().expect("body")["gracePeriodSeconds"], 0);
    assert!(deletes[0].body.as_ref().expect("body").get("dryRun").is_none());
    let names = kube.pod_names();
    assert_eq!(names.len(), 4, "replaced by the fake ReplicaSet: {names:?}");
    let journal = journal_text(dir.path());
    assert!(journal.contains("kill-web pod-kill shop/web-"), "audit record: {journal}");
    assert!(journal.contains("reverted"), "settled, nothing for recover: {journal}");
}

#[test]
fn a_workload_that_does_not_heal_in_time_rejects_the_run() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = demo_fleet(dir.path());
    let kube = cluster();
    kube.heal_after(None);
    let exp =
        experiment(dir.path(), DEMO_TRAFFIC, &KILL_AND_CHECK.replace("WITHIN", "2s"));
    let out = run(dir.path(), &fleet, &kube, &exp);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json");
    assert_eq!(v["outcome"], "rejected", "{v}");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("check ready_replicas deployment:shop/web: not back within 2s"),
        "{warnings}"
    );
    assert!(warnings.contains("2/3 ready"), "{warnings}");
}

// The fault window of these runs (6 s, the kill 1 s in) outlasts every
// bound below: the check must judge what happened within the bound after
// the kill, not the state when the faults end.

/// The seconds from the kill to readiness in the passed check's line.
fn time_to_ready(progress: &str) -> f64 {
    let line = progress
        .lines()
        .find(|l| l.contains("check ready_replicas deployment:shop/web: 3/3 ready "))
        .unwrap_or_else(|| panic!("no passed check line: {progress}"));
    let after = line.split("3/3 ready ").nth(1).unwrap_or_default();
    let secs = after.split("s after the kill").next().unwrap_or_default();
    eprintln!("measured: {line}");
    secs.parse().unwrap_or_else(|_| panic!("no time in {line:?}"))
}

#[test]
fn a_deployment_that_heals_only_after_the_bound_fails_even_if_healed_when_the_faults_end()
{
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = demo_fleet(dir.path());
    let kube = cluster();
    // Bound 2 s, healed at 3.5 s, faults end about 5 s after the kill.
    kube.heal_after(Some(Duration::from_millis(3500)));
    let exp = experiment_for(
        "6s",
        dir.path(),
        DEMO_TRAFFIC,
        &KILL_AND_CHECK.replace("WITHIN", "2s"),
    );
    let out = run(dir.path(), &fleet, &kube, &exp);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json");
    assert_eq!(v["outcome"], "rejected", "{v}");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains(
            "check ready_replicas deployment:shop/web: not back within 2s of the kill (last: 2/3 ready)"
        ),
        "{warnings}"
    );
    let watches = kube
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/deployments") && s.query.contains("watch=true"))
        .count();
    assert_eq!(watches, 1, "watched from the kill, once");
}

#[test]
fn a_deployment_that_heals_within_the_bound_passes_with_its_measured_time() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = demo_fleet(dir.path());
    let kube = cluster();
    kube.heal_after(Some(Duration::from_millis(1000)));
    let exp = experiment_for(
        "6s",
        dir.path(),
        DEMO_TRAFFIC,
        &KILL_AND_CHECK.replace("WITHIN", "4s"),
    );
    let out = run_with(dir.path(), &fleet, &kube, &exp, &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let progress = stderr(&out);
    let t = time_to_ready(&progress);
    // Healed 1 s after the delete; the faults ended about 5 s after it.
    assert!(
        (0.8..2.0).contains(&t),
        "the heal, not the end of the faults: {t}\n{progress}"
    );
    assert!(progress.contains("(bound 4s, seen by watch)"), "{progress}");
    assert!(!progress.contains("no dip"), "the dip was seen: {progress}");
}

#[test]
fn a_status_still_ready_right_after_the_delete_is_not_taken_for_the_heal() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = demo_fleet(dir.path());
    let kube = cluster();
    // 3/3 for 0.7 s after the delete (not yet observed), 2/3, then 3/3
    // at 1.8 s.
    kube.stale_after_kill(Duration::from_millis(700));
    kube.heal_after(Some(Duration::from_millis(1800)));
    let exp = experiment_for(
        "6s",
        dir.path(),
        DEMO_TRAFFIC,
        &KILL_AND_CHECK.replace("WITHIN", "4s"),
    );
    let out = run_with(dir.path(), &fleet, &kube, &exp, &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let progress = stderr(&out);
    let t = time_to_ready(&progress);
    assert!(
        (1.6..3.0).contains(&t),
        "the heal after the dip, not 0.0 s: {t}\n{progress}"
    );
    assert!(progress.contains("seen by watch)"), "{progress}");
}
