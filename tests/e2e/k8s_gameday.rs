//! `chaos gameday` with an experiment whose faults and checks live in
//! `[kubernetes]`: the game day's run kills a pod through the fake API
//! server, the self-healing check watches the Deployment, and a workload
//! that never heals rejects the step with the check named.

use std::process::{Command, Stdio};

use crate::gameday::{start_fleet, write_experiment};
use crate::k8s_support::{deployment, pod, FakeKube};
use crate::support::chaos_bin;

const KILL_AND_CHECK: &str = r#"
[kubernetes]
request_timeout = "2s"

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
within = "6s"
"#;

#[test]
fn a_game_day_step_with_kubernetes_faults_kills_watches_and_judges_the_check() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_fleet(dir.path());
    let kube = FakeKube::start();
    kube.add_deployment(deployment("shop", "web", "web", 3));
    for (name, node) in [("web-a", "n1"), ("web-b", "n2"), ("web-c", "n1")] {
        kube.add_pod(pod("shop", name, "web", node));
    }
    kube.heal_after(None);
    write_experiment(dir.path(), "kill.toml", "kill a web pod", &fleet, KILL_AND_CHECK);
    let scenario = dir.path().join("gd.toml");
    std::fs::write(
        &scenario,
        "[gameday]\nname = \"k8s\"\nstop_on_abort = false\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"kill.toml\"\n",
    )
    .unwrap();
    let reports = dir.path().join("out");
    let out = Command::new(chaos_bin())
        .args(["gameday", "--yes", "--report-dir"])
        .arg(&reports)
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .arg(&scenario)
        .env("KUBECONFIG", kube.kubeconfig(dir.path()))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rejected by the check\n{stdout}\n{stderr}");
    let seen = kube.seen();
    let deletes = seen.iter().filter(|s| s.method == "DELETE").count();
    assert_eq!(deletes, 1, "one pod killed: {seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.path.ends_with("/deployments") && s.query.contains("watch=true")),
        "the check watched the Deployment: {seen:?}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join("gameday.json")).unwrap(),
    )
    .unwrap();
    let step = &json["steps"][0];
    assert_eq!(step["status"], "ran", "{step}");
    let text = step.to_string();
    assert!(
        text.contains("check ready_replicas deployment:shop/web: not back within 6s"),
        "{text}"
    );
    drop(fleet);
}
