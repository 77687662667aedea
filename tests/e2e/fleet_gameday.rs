//! `chaos gameday` with host targets (`@host:`/`@hosts:`) on the test
//! fleet (see fleet_support): the game day's experiments reach the hosts
//! of `--inventory` through their agents over SSH, the faults land on the
//! hosts named (paused processes, an nft table in the host's namespace, a
//! killed process) and nowhere else, and everything is reverted after.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::fleet_support::{state, TestFleet};
use crate::support::{eventually, require_capability};

pub fn fleet() -> Option<TestFleet> {
    if !require_capability(
        crate::fleet_support::available(),
        "sshd (openssh-server), ssh and network namespaces (root)",
    ) {
        return None;
    }
    Some(TestFleet::new(&[
        &[("region", "us-east"), ("role", "payments")],
        &[("region", "eu-west"), ("role", "payments")],
        &[("region", "us-east"), ("role", "db")],
    ]))
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An HTTP upstream answering 200 inside namespace `ns` on 127.0.0.1;
/// returns its port.
pub fn upstream_in(ns: &str) -> u16 {
    crate::fleet_support::http_service_in(ns, std::net::Ipv4Addr::LOCALHOST.into())
}

/// A short experiment through a cohort proxy in the controller's
/// namespace to `port` there, with `faults` (TOML `[[fault]]` tables).
pub fn experiment(dir: &Path, name: &str, port: u16, faults: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[experiment]
name = "{name}"
duration = "5s"
baseline = "1s"
min_samples = 100

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{port}"
experiment_percent = 40
control_percent = 40

[load]
path = "/"
rate = 200
concurrency = 16
keys = 100000

# The faults are on the hosts, not on the upstream: errors stay flat. A
# 5pp margin keeps the verdict decisive at this sample size (with +1pp,
# 400 error-free requests per cohort sit at the edge of inconclusive).
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+5pp"
{faults}"#
        ),
    )
    .unwrap();
    path
}

/// Pause the payments service and add nft loss (never towards the
/// controller, 10.77.0.2: that would starve the agents' SSH path) on the
/// payments hosts (web-1, web-2).
pub fn payments_faults(f: &TestFleet) -> String {
    format!(
        r#"
[[fault]]
name = "pause-payments"
kind = "process-pause"
target = "{}"
duration = "3s"

[[fault]]
name = "loss"
kind = "packet-loss"
target = "iface:eth0@hosts:role=payments"
loss = "30%"
destinations = ["192.0.2.0/24"]
duration = "3s"
"#,
        f.svc("payments", "@hosts:role=payments")
    )
}

/// Both payments hosts show the pause and an nft table of chaos; web-3
/// shows neither.
pub fn payments_faults_active(f: &TestFleet) -> bool {
    let (w1, w2, w3) = (f.host("web-1"), f.host("web-2"), f.host("web-3"));
    let on = |h: &crate::fleet_support::TestHost| {
        state(h.service("payments")) == Some('T')
            && h.net_snapshot().contains("table inet chaos_")
    };
    let off = state(w3.service("payments")) != Some('T')
        && !w3.net_snapshot().contains("chaos_");
    on(w1) && on(w2) && off
}

/// Every journal file in `dir` has all its records settled.
pub fn journal_settled(dir: &Path) -> Result<usize, String> {
    let files = chaos::journal::journal_files(dir).map_err(|e| e.to_string())?;
    let mut records = 0;
    for file in &files {
        let entries = chaos::journal::read_entries(file).map_err(|e| e.to_string())?;
        records += entries.len();
        let pending = chaos::journal::pending(&entries);
        if !pending.is_empty() {
            return Err(format!("{}: pending {pending:?}", file.display()));
        }
    }
    Ok(records)
}

#[test]
fn a_game_day_runs_its_host_faults_on_the_inventory_hosts_and_reverts_them() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let inv = f.inventory();
    let before = f.snapshot();
    let port = upstream_in(&f.ctl);
    let dir = f.dir.path();
    experiment(dir, "fleet-pause", port, &payments_faults(&f));
    let kill = format!(
        "\n[[fault]]\nname = \"kill-db\"\nkind = \"process-kill\"\ntarget = \"{}\"\n\
         signal = \"SIGTERM\"\nstart = \"1s\"\n",
        f.svc("db", "@host:web-2")
    );
    experiment(dir, "fleet-kill", port, &kill);
    let scenario = dir.join("fleet-gameday.toml");
    std::fs::write(
        &scenario,
        "[gameday]\nname = \"fleet\"\nstop_on_abort = true\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"fleet-pause.toml\"\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"fleet-kill.toml\"\n",
    )
    .unwrap();
    let reports = dir.join("gd-reports");
    let journal = dir.join("gd-journal");
    let (db1, db2, db3) = (
        f.host("web-1").service("db"),
        f.host("web-2").service("db"),
        f.host("web-3").service("db"),
    );
    let child = f
        .controller(&[
            "gameday",
            "--yes",
            "--inventory",
            inv.to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
            "--journal-dir",
            journal.to_str().unwrap(),
            scenario.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let landed =
        eventually(Duration::from_secs(30), || payments_faults_active(&f).then_some(()));
    let out = child.wait_with_output().unwrap();
    assert!(
        landed.is_some(),
        "pause and nft table on web-1 and web-2 (not web-3): {:?}\n{}",
        f.snapshot(),
        text(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[2/2] finish experiment: fleet-kill"), "{stdout}");

    // Step 2 killed web-2's db only.
    let gone = eventually(Duration::from_secs(3), || {
        matches!(state(db2), None | Some('Z')).then_some(())
    });
    assert!(gone.is_some(), "web-2's db was killed: {:?}", state(db2));
    assert_eq!((state(db1), state(db3)), (Some('S'), Some('S')), "other dbs untouched");

    // Everything else is as before: processes running, no nft or tc left
    // (web-2's db is gone: a zombie, the test is its parent).
    let strip = |s: &str| {
        s.lines()
            .filter(|l| {
                !l.starts_with("db-web-2-")
                    && !l.ends_with("Some('Z')")
                    && !l.ends_with("None")
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let settled = eventually(Duration::from_secs(3), || {
        let now = f.snapshot();
        (0..3).all(|i| strip(&now[i]) == strip(&before[i])).then_some(())
    });
    assert!(settled.is_some(), "hosts back to their snapshot: {:?}", f.snapshot());

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join("gameday.json")).unwrap(),
    )
    .unwrap();
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{json}");
    for s in steps {
        assert_eq!(s["status"], "ran", "{s}");
        for fault in s["report"]["faults"].as_array().unwrap() {
            assert!(fault["applied_at_s"].is_number(), "{fault}");
            assert!(fault["revert_error"].is_null(), "{fault}");
        }
    }
    let records = journal_settled(&journal).unwrap();
    assert!(records > 0, "the controller journalled its host faults");
}

#[test]
fn a_game_day_whose_experiment_names_hosts_without_an_inventory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    experiment(
        dir.path(),
        "hosts",
        1,
        "\n[[fault]]\nkind = \"process-pause\"\ntarget = \"name:payments@hosts:role=payments\"\n",
    );
    let scenario = dir.path().join("gd.toml");
    std::fs::write(
        &scenario,
        "[gameday]\nname = \"x\"\n\n[[step]]\nkind = \"pause\"\nduration = \"1s\"\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"hosts.toml\"\n",
    )
    .unwrap();
    let reports = dir.path().join("out");
    let out = crate::support::chaos(&[
        "gameday",
        "--yes",
        "--report-dir",
        reports.to_str().unwrap(),
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step 2") && stderr.contains("--inventory"),
        "names the step and the fix: {stderr}"
    );
    assert!(out.stdout.is_empty() && !reports.exists(), "nothing ran");

    // A broken --inventory is refused before anything runs too.
    let out = crate::support::chaos(&[
        "gameday",
        "--yes",
        "--inventory",
        dir.path().join("missing.toml").to_str().unwrap(),
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
