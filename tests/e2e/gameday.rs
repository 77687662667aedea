//! `chaos gameday` as a real process against the demo fleet.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chaos::cohort::Cohort;
use chaos::demo::Variant;
use chaos::demo::{Fleet, FleetSpec};

use crate::support::{chaos, chaos_bin};

/// A free loopback port (bound then released; the proxy binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the demo fleet (children of the `chaos` binary) in `dir`.
pub fn start_fleet(dir: &Path) -> Fleet {
    let mut spec = FleetSpec::new(Variant::Resilient, dir.join("fleet"));
    spec.exe = Some(chaos_bin());
    Fleet::start(spec).expect("demo fleet starts")
}

/// A short experiment against the fleet: 2 s baseline, 4 s with `fault`.
pub fn write_experiment(
    dir: &Path,
    file: &str,
    name: &str,
    fleet: &Fleet,
    fault: &str,
) -> (PathBuf, u16) {
    let port = free_port();
    let control = fleet.api_url(Cohort::Control).unwrap();
    let experiment = fleet.api_url(Cohort::Experiment).unwrap();
    let path = dir.join(file);
    std::fs::write(
        &path,
        format!(
            r#"
[experiment]
name = "{name}"
duration = "4s"
baseline = "2s"
min_samples = 20

[traffic]
listen = "127.0.0.1:{port}"
upstream = "{control}"
control_upstream = "{control}"
experiment_upstream = "{experiment}"
experiment_percent = 50
control_percent = 50
upstream_timeout = "2s"

[load]
path = "/checkout"
rate = 100
concurrency = 32
# Sticky keys: with few keys the cohorts' key shares drift from the split
# and the request-count SRM check fires falsely; a million keep it binomial.
keys = 1000000

[[hypothesis]]
name = "checkout errors stay flat"
metric = "error_rate"
tolerance = "+5pp"

{fault}
"#
        ),
    )
    .unwrap();
    (path, port)
}

#[test]
fn a_two_step_game_day_against_the_demo_fleet_writes_the_combined_report() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_fleet(dir.path());
    write_experiment(dir.path(), "aa.toml", "calibration", &fleet, "");
    let fault = "[[fault]]\nname = \"slow-edge\"\nkind = \"latency\"\ndelay = \"20ms\"\n";
    write_experiment(dir.path(), "slow.toml", "slow edge", &fleet, fault);
    let scenario = dir.path().join("gd.toml");
    std::fs::write(
        &scenario,
        "[gameday]\nname = \"two steps\"\nstop_on_abort = false\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"aa.toml\"\n\n\
         [[step]]\nkind = \"experiment\"\nfile = \"slow.toml\"\n",
    )
    .unwrap();
    let reports = dir.path().join("out");
    let journal = dir.path().join("journal");
    let out = Command::new(chaos_bin())
        .args(["gameday", "--yes", "--report-dir"])
        .arg(&reports)
        .arg("--journal-dir")
        .arg(&journal)
        .arg(&scenario)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap();
    assert!([0, 1, 4].contains(&code), "exit {code}\n{stdout}\n{stderr}");
    assert!(stdout.contains("[1/2] start experiment: calibration"), "{stdout}");
    assert!(stdout.contains("[2/2] finish experiment: slow edge — "), "{stdout}");
    assert!(
        stdout.contains("checkout errors stay flat: "),
        "verdicts in the timeline: {stdout}"
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join("gameday.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["name"], "two steps");
    assert_eq!(json["exit_code"], code);
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["status"], "ran", "step {i}: {s}");
        assert!(
            s["report"]["hypotheses"].as_array().is_some_and(|h| h.len() == 1),
            "{s}"
        );
        let run_dir = PathBuf::from(s["report_dir"].as_str().unwrap());
        assert!(run_dir.join("result.json").is_file(), "{}", run_dir.display());
    }
    let junit = std::fs::read_to_string(reports.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testsuite ").count(), 2, "{junit}");
    let html = std::fs::read_to_string(reports.join("gameday.html")).unwrap();
    assert!(html.contains("calibration") && html.contains("slow edge"));
    drop(fleet);
}

#[test]
fn a_game_day_with_a_checkpoint_refuses_to_start_without_a_terminal_or_yes() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("gd.toml");
    std::fs::write(
        &scenario,
        "[gameday]\nname = \"needs a human\"\n\n[[step]]\nkind = \"pause\"\nduration = \"1s\"\n\n\
         [[step]]\nkind = \"checkpoint\"\nmessage = \"ready?\"\n",
    )
    .unwrap();
    let reports = dir.path().join("out");
    let out = Command::new(chaos_bin())
        .args(["gameday", "--report-dir"])
        .arg(&reports)
        .arg(&scenario)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--yes") && stderr.contains("1 checkpoint"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran");
    assert!(!reports.exists());
}

#[test]
fn an_invalid_scenario_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("gd.toml");
    std::fs::write(&scenario, "[gameday]\nname = \"x\"\n\n[[step]]\nkind = \"pasue\"\n")
        .unwrap();
    let out = chaos(&["gameday", "--yes", scenario.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gd.toml:5:8: error: unknown step kind"), "{stderr}");
    assert!(stderr.contains("did you mean \"pause\""), "{stderr}");
}

#[test]
fn gameday_help_explains_it_with_an_example() {
    let out = chaos(&["gameday", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chaos gameday --yes"));
}
