//! `chaos run` end to end: real demo fleet processes, the real cohort
//! proxy, real faults and their revert, reports validated against their
//! schemas, and the exit codes CI gates depend on.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos::demo::{Fleet, FleetSpec, Variant};

use crate::support::{chaos_bin, eventually, repo_root, require_capability};

/// A fleet started from the test, using the `chaos` binary under test.
fn fleet(variant: Variant, dir: &Path) -> Fleet {
    let mut spec = FleetSpec::new(variant, dir.join("fleet"));
    spec.exe = Some(chaos_bin());
    Fleet::start(spec).expect("demo fleet starts")
}

/// Runs `chaos ARGS` with the fleet's addresses in the environment.
fn chaos_with(fleet: &Fleet, dir: &Path, args: &[&str]) -> Output {
    Command::new(chaos_bin())
        .args(args)
        .envs(fleet.env_vars())
        .env("CHAOS_DEMO_LISTEN", "127.0.0.1:0")
        .env("CHAOS_JOURNAL_DIR", dir.join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run chaos")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write experiment");
    p
}

/// A short experiment against the demo fleet: 2 s baseline, `duration` of
/// observation, 40%/40% cohorts at 400 req/s (about 1,300 requests per
/// cohort in 8 s — enough to accept "+0.5pp" with zero errors).
fn demo_experiment(duration: &str, hypotheses_and_faults: &str) -> String {
    format!(
        r#"
[experiment]
name = "e2e"
duration = "{duration}"
baseline = "2s"
min_samples = 300

[traffic]
listen = "${{CHAOS_DEMO_LISTEN}}"
upstream = "${{CHAOS_DEMO_API_CONTROL}}"
control_upstream = "${{CHAOS_DEMO_API_CONTROL}}"
experiment_upstream = "${{CHAOS_DEMO_API_EXPERIMENT}}"
experiment_percent = 40
control_percent = 40
upstream_timeout = "1s"

[load]
path = "/checkout"
rate = 400
concurrency = 128
keys = 50000
{hypotheses_and_faults}
"#
    )
}

/// `chaos run --quiet` on `exp` against the fleet, reports under `dir/reports`.
fn run_quiet(fleet: &Fleet, dir: &Path, exp: &Path) -> (Output, PathBuf) {
    let reports = dir.join("reports");
    let out = chaos_with(
        fleet,
        dir,
        &[
            "run",
            "--quiet",
            "--report-dir",
            reports.to_str().expect("utf-8"),
            exp.to_str().expect("utf-8"),
        ],
    );
    (out, reports)
}

fn result_json(report_root: &Path) -> (PathBuf, serde_json::Value) {
    let run_dir = std::fs::read_dir(report_root)
        .expect("report dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("result.json").exists())
        .expect("a run directory with result.json");
    let text = std::fs::read_to_string(run_dir.join("result.json")).expect("result.json");
    (run_dir, serde_json::from_str(&text).expect("result.json is JSON"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// nft ruleset, qdiscs and process states that a run must leave as found.
fn host_snapshot() -> (String, String) {
    let run = |p: &str, a: &[&str]| {
        Command::new(p)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    (run("nft", &["list", "ruleset"]), run("tc", &["qdisc", "show"]))
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

fn assert_journal_all_reverted(journal: &Path) {
    let files = chaos::journal::journal_files(journal).expect("journal dir");
    assert!(!files.is_empty(), "a run with infrastructure faults writes a journal");
    for f in files {
        let entries = chaos::journal::read_entries(&f).expect("journal parses");
        let pending = chaos::journal::pending(&entries);
        assert!(pending.is_empty(), "{}: unreverted faults {pending:?}", f.display());
    }
}

#[test]
fn the_demo_accepts_the_resilient_api_and_catches_the_fragile_one_with_valid_reports() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let before = host_snapshot();
    let reports = dir.path().join("reports");
    let out = Command::new(chaos_bin())
        .args(["demo", "run", "--quiet", "--report-dir"])
        .arg(&reports)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("chaos demo run");
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("resilient  ACCEPTED"), "{so}");
    assert!(
        so.contains("fragile    REJECTED") || so.contains("fragile    ABORTED"),
        "{so}"
    );
    assert_eq!(host_snapshot(), before, "nft ruleset / qdiscs changed");
    assert_journal_all_reverted(&dir.path().join("journal"));

    let runs: Vec<PathBuf> = std::fs::read_dir(&reports)
        .expect("reports")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(runs.len(), 2, "one report directory per variant");
    let xsd = repo_root().join("tests/fixtures/junit/junit.xsd");
    let have_xmllint = Command::new("xmllint").arg("--version").output().is_ok();
    for run in runs {
        let text = std::fs::read_to_string(run.join("result.json")).expect("result.json");
        let report: chaos::report::RunReport = serde_json::from_str(&text)
            .expect("result.json matches the RunReport schema");
        assert_eq!(report.schema_version, chaos::report::SCHEMA_VERSION);
        assert!(report
            .faults
            .iter()
            .all(|f| f.applied_at_s.is_some() && f.reverted_at_s.is_some()));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let errs = crate::report::schema_errors(&value);
        assert!(
            errs.is_empty(),
            "result.json breaks schemas/result.schema.json: {errs:?}"
        );
        let html = std::fs::read_to_string(run.join("report.html")).expect("report.html");
        assert!(html.contains("<svg"), "report.html has plots");
        if require_capability(
            have_xmllint,
            "xmllint (libxml2-utils) to validate junit.xml",
        ) {
            let v = Command::new("xmllint")
                .args(["--noout", "--schema"])
                .arg(&xsd)
                .arg(run.join("junit.xml"))
                .output()
                .expect("xmllint");
            assert!(v.status.success(), "junit.xml invalid: {}", stderr(&v));
        }
    }
}

#[test]
fn an_aa_run_without_faults_is_accepted() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(Variant::Resilient, dir.path());
    let exp = write(
        dir.path(),
        "aa.toml",
        &demo_experiment(
            "8s",
            r#"
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+0.5pp"

[[hypothesis]]
name = "latency holds"
metric = "latency"
tolerance = "+25%"
"#,
        ),
    );
    let reports = dir.path().join("reports");
    let out = chaos_with(
        &fleet,
        dir.path(),
        &[
            "run",
            "--quiet",
            "--json",
            "--report-dir",
            reports.to_str().expect("utf-8"),
            exp.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("--json prints the result");
    assert_eq!(v["outcome"], "accepted");
    for h in v["hypotheses"].as_array().expect("hypotheses") {
        assert_eq!(h["verdict"], "accepted", "{h}");
        assert!(h["n_experiment"].as_u64().unwrap_or(0) > 300, "{h}");
    }
}

#[test]
fn a_fault_beyond_the_abort_threshold_stops_early_reports_why_and_reverts() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(Variant::Resilient, dir.path());
    let exp = write(
        dir.path(),
        "abort.toml",
        &demo_experiment(
            "40s",
            r#"
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+0.5pp"
abort = "+5pp"

[[fault]]
name = "edge-503"
kind = "http-error"
status = 503
probability = "30%"
"#,
        ),
    );
    let started = Instant::now();
    let (out, reports) = run_quiet(&fleet, dir.path(), &exp);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", stdout(&out), stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(35), "did not stop early");
    let (_, v) = result_json(&reports);
    assert_eq!(v["outcome"], "aborted");
    let abort = &v["abort"];
    assert!(abort["at_s"].as_f64().is_some_and(|t| t < 30.0), "{abort}");
    assert_eq!(abort["hypothesis"], "errors flat", "{abort}");
    assert!(abort["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let fault = &v["faults"][0];
    assert!(fault["reverted_at_s"].as_f64().is_some(), "{fault}");
    assert!(stdout(&out).to_lowercase().contains("abort"), "{}", stdout(&out));
}

#[test]
fn a_latency_fault_past_the_clients_timeout_aborts_as_failures() {
    // Clients give up after 400 ms; the fault holds requests for 3 s. The
    // abandoned requests are the experiment cohort's failures: the run
    // must abort on them, not see an empty (or healthy) cohort.
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(Variant::Resilient, dir.path());
    let text = demo_experiment(
        "30s",
        r#"
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+0.5pp"
abort = "+5pp"

[[fault]]
name = "edge-stall"
kind = "latency"
delay = "3s"
"#,
    )
    .replace("keys = 50000", "keys = 50000\ntimeout = \"400ms\"");
    let exp = write(dir.path(), "stall.toml", &text);
    let (out, reports) = run_quiet(&fleet, dir.path(), &exp);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", stdout(&out), stderr(&out));
    let (_, v) = result_json(&reports);
    assert_eq!(v["outcome"], "aborted", "{}", v["abort"]);
    assert_eq!(v["abort"]["hypothesis"], "errors flat", "{}", v["abort"]);
    let experiment = v["cohorts"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["cohort"] == "experiment"))
        .unwrap_or_else(|| panic!("no experiment cohort in {}", v["cohorts"]));
    let (total, errors) = (experiment["total"].as_u64(), experiment["errors"].as_u64());
    assert!(
        total.zip(errors).is_some_and(|(t, e)| t > 100 && e * 4 >= t),
        "experiment cohort {experiment}"
    );
    assert!(v["faults"][0]["reverted_at_s"].is_number(), "{}", v["faults"]);
}

#[test]
fn an_unreachable_upstream_fails_preflight_with_exit_5_and_injects_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = crate::support::ClosedPort::new();
    let dead = closed.port;
    let exp = write(
        dir.path(),
        "dead.toml",
        &format!(
            r#"
[experiment]
name = "dead upstream"
duration = "5s"

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{dead}"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+0.5pp"
"#
        ),
    );
    let out = Command::new(chaos_bin())
        .args(["run", "--quiet", exp.to_str().expect("utf-8")])
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not accepting connections") && err.contains("nothing was injected"),
        "{err}"
    );
    assert!(!dir.path().join("journal").exists(), "preflight must not create a journal");
}

/// A victim process with a unique command line, killed by PID on drop.
struct Victim(Child);
impl Victim {
    fn spawn(tag: &str) -> Victim {
        let child = Command::new("sleep")
            .arg(tag)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Victim(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}
impl Drop for Victim {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pause_experiment(listen_port: u16, upstream_port: u16, tag: &str) -> String {
    format!(
        r#"
[experiment]
name = "pause a victim"
duration = "30s"
baseline = "0s"

[traffic]
listen = "127.0.0.1:{listen_port}"
upstream = "http://127.0.0.1:{upstream_port}"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+0.5pp"

[[fault]]
name = "pause-victim"
kind = "process-pause"
target = "name:^sleep {tag}$"
"#
    )
}

#[test]
fn sigint_mid_run_reverts_a_pause_and_exits_130() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("{}.{}", 3000 + std::process::id() % 1000, std::process::id());
    let victim = Victim::spawn(&tag);
    // Any listening socket passes the upstream health check.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_port = upstream.local_addr().expect("addr").port();
    let exp = write(dir.path(), "pause.toml", &pause_experiment(0, up_port, &tag));
    let mut child = Command::new(chaos_bin())
        .args(["run", "--quiet", "--report-dir"])
        .arg(dir.path().join("reports"))
        .arg(&exp)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos run");
    let paused = eventually(Duration::from_secs(15), || {
        (process_state(victim.pid()) == Some('T')).then_some(())
    });
    if paused.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!("victim never paused: {}", stderr(&out));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_ne!(process_state(victim.pid()), Some('T'), "victim left paused");
    assert_journal_all_reverted(&dir.path().join("journal"));
    let (_, v) = result_json(&dir.path().join("reports"));
    assert_eq!(v["outcome"], "interrupted");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("{}.{}", 4000 + std::process::id() % 1000, std::process::id());
    let victim = Victim::spawn(&tag);
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_port = upstream.local_addr().expect("addr").port();
    let exp = write(dir.path(), "pause.toml", &pause_experiment(0, up_port, &tag));
    let out = Command::new(chaos_bin())
        .args(["run", "--dry-run"])
        .arg(&exp)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .expect("dry run");
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{so}\n{}", stderr(&out));
    assert!(so.contains(&victim.pid().to_string()), "plan names the resolved pid: {so}");
    assert!(so.contains("nothing was started or changed"), "{so}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(process_state(victim.pid()), Some('S'), "dry run touched the victim");
    assert!(!dir.path().join("journal").exists(), "dry run wrote a journal");
    let _ = std::io::stdout().flush();
}

#[test]
fn run_help_teaches_the_lifecycle_and_exit_codes() {
    let out = Command::new(chaos_bin()).args(["run", "--help"]).output().expect("help");
    let s = stdout(&out);
    assert!(s.contains("chaos run experiments/replica-kill.toml"), "{s}");
    assert!(s.contains("130 interrupted"), "{s}");
}

#[test]
fn the_gate_passes_an_equal_canary_and_fails_a_broken_one() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = fleet(Variant::Resilient, &dir.path().join("good"));
    let bad = fleet(Variant::Fragile, &dir.path().join("bad"));
    // Break the fragile canary: its us-east payments replica dies.
    let victim = bad
        .pid(
            chaos::demo::Role::Payments,
            chaos::cohort::Cohort::Experiment,
            Some(chaos::demo::Region::UsEast),
        )
        .expect("payments pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let exp = write(
        dir.path(),
        "gate.toml",
        &demo_experiment(
            "6s",
            r#"
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+0.5pp"
"#,
        ),
    );
    let baseline = good.api_url(chaos::cohort::Cohort::Control).expect("baseline url");
    let equal = good.api_url(chaos::cohort::Cohort::Experiment).expect("canary url");
    let broken = bad.api_url(chaos::cohort::Cohort::Experiment).expect("broken url");
    let reports = dir.path().join("reports");
    let gate = |canary: &str| {
        chaos_with(
            &good,
            dir.path(),
            &[
                "gate",
                "--quiet",
                "--report-dir",
                reports.to_str().expect("utf-8"),
                "--canary",
                canary,
                "--baseline",
                &baseline,
                exp.to_str().expect("utf-8"),
            ],
        )
    };
    let out = gate(&equal);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let out = gate(&broken);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("REJECTED"), "{}", stdout(&out));
}

#[test]
fn a_kill_with_an_interval_strikes_again_until_the_fault_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = format!("{}.{}", 5000 + std::process::id() % 1000, std::process::id());
    let victims: Vec<Victim> = (0..4).map(|_| Victim::spawn(&tag)).collect();
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_port = upstream.local_addr().expect("addr").port();
    let exp = write(
        dir.path(),
        "interval.toml",
        &format!(
            r#"
[experiment]
name = "kill one every second"
duration = "5s"
baseline = "0s"

[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{up_port}"

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+0.5pp"

[[fault]]
name = "kill-every-second"
kind = "process-kill"
target = "name:^sleep {tag}$"
count = 1
interval = "1s"
duration = "3500ms"
"#
        ),
    );
    let out = Command::new(chaos_bin())
        .args(["run", "--quiet", "--report-dir"])
        .arg(dir.path().join("reports"))
        .arg(&exp)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .output()
        .expect("run");
    // No traffic: the verdict is inconclusive; what matters is the strikes.
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let dead = victims
        .iter()
        .filter(|v| matches!(process_state(v.pid()), None | Some('Z')))
        .count();
    assert!(
        dead >= 3,
        "strikes at 0s, 1s, 2s, 3s should kill at least 3 of 4, killed {dead}"
    );
    assert_journal_all_reverted(&dir.path().join("journal"));
}
