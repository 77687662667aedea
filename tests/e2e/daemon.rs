//! `chaos history` and `chaos continuous` as real processes.

use crate::support::chaos;

fn seeded_history(dir: &std::path::Path) -> std::path::PathBuf {
    let db = dir.join("history.db");
    let h = chaos::schedule::history::History::open(&db).unwrap();
    let id = h.begin("checkout", "experiments/aa.toml", "2026-01-05T09:00:00Z").unwrap();
    h.finish(
        id,
        &chaos::schedule::history::RunEnd {
            finished_at: "2026-01-05T09:00:06Z".into(),
            outcome: "rejected",
            verdicts: serde_json::json!([
                {"hypothesis": "p99 holds", "verdict": "rejected"},
                {"hypothesis": "errors flat", "verdict": "accepted"}
            ]),
            report_dir: Some(std::path::Path::new("/tmp/reports/checkout-1")),
            detail: None,
        },
    )
    .unwrap();
    db
}

#[test]
fn history_lists_and_shows_runs_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded_history(dir.path());
    let db = db.to_str().unwrap();

    let out = chaos(&["history", "--db", db]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checkout"), "{text}");
    assert!(text.contains("rejected"), "{text}");
    assert!(text.contains("p99 holds=rejected"), "{text}");
    assert!(text.contains("6s"), "duration column: {text}");

    let out = chaos(&["history", "--db", db, "--json", "--limit", "1"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["outcome"], "rejected");
    assert_eq!(rows[0]["verdicts"][1]["verdict"], "accepted");

    let out = chaos(&["history", "show", "1", "--db", db]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reports:     /tmp/reports/checkout-1"), "{text}");
    assert!(text.contains("errors flat=accepted"), "{text}");

    let out = chaos(&["history", "show", "99", "--db", db]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run 99"));
}

#[test]
fn history_without_a_database_says_where_it_looked() {
    let out = chaos(&["history", "--db", "/nonexistent/chaos-history.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/chaos-history.db")
    );
}

// ---- the real daemon against the demo fleet ----

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaos::cohort::Cohort;
use chaos::demo::{Region, Role};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::gameday::{start_fleet, write_experiment};
use crate::support::{chaos_bin, eventually};

/// Kills and reaps the daemon if a test fails before it exits.
struct Daemon(Option<Child>);
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Single-letter process state from /proc/PID/stat (`T` = stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no daemon line containing {needle:?} within {timeout:?}"),
        }
    }
}

fn get(url: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client.get(url).send().ok()?.text().ok()
}

#[test]
fn the_daemon_runs_a_schedule_against_the_demo_fleet_and_reverts_on_sigterm() {
    let _heavy = crate::support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_fleet(dir.path());
    let victim =
        fleet.pid(Role::Payments, Cohort::Experiment, Some(Region::UsEast)).unwrap();
    let pidfile =
        fleet.pidfile(Role::Payments, Cohort::Experiment, Some(Region::UsEast)).unwrap();
    let fault = format!(
        "[[fault]]\nname = \"pause-payments\"\nkind = \"process-pause\"\ntarget = \"pidfile:{}\"\n",
        pidfile.display()
    );
    let (exp, proxy_port) =
        write_experiment(dir.path(), "pause.toml", "pause payments", &fleet, &fault);
    let config = dir.path().join("continuous.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\ntoken = \"test-token-123456\"\n\
             history = \"history.db\"\nreport_dir = \"reports\"\njournal_dir = \"journal\"\n\n\
             [[schedule]]\nname = \"pause-payments\"\nexperiment = \"{}\"\n\
             cron = \"*/2 * * * * *\"\nbackoff = \"0s\"\nmax_consecutive_failures = 100\n",
            exp.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(chaos_bin())
        .args(["continuous", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let mut guard = Daemon(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("daemon: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = wait_line(&rx, "listening on http://", Duration::from_secs(20));
    let base =
        listening.split("listening on ").nth(1).unwrap().split(' ').next().unwrap();
    let base = base.to_string();

    // A whole run first: it finishes with verdicts and shows in /metrics.
    wait_line(&rx, "finish pause-payments", Duration::from_secs(40));
    let metrics = eventually(Duration::from_secs(10), || {
        get(&format!("{base}/metrics"))
            .filter(|m| m.contains("chaos_daemon_runs_total{schedule=\"pause-payments\""))
    })
    .expect("/metrics shows the finished run");
    assert!(metrics.contains("chaos_daemon_schedules_paused 0"), "{metrics}");
    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{base}/status")).unwrap()).unwrap();
    assert_eq!(status["schedules"][0]["name"], "pause-payments");

    // The next run: SIGTERM while the pause fault is active.
    wait_line(&rx, "start pause-payments", Duration::from_secs(20));
    eventually(Duration::from_secs(15), || {
        (proc_state(victim) == Some('T')).then_some(())
    })
    .expect("the process-pause fault is injected mid-experiment");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let child = guard.0.as_mut().unwrap();
    let status = eventually(Duration::from_secs(30), || child.try_wait().unwrap())
        .expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    guard.0 = None;

    assert_ne!(proc_state(victim), Some('T'), "the paused process was resumed");
    for p in fleet.processes() {
        assert_ne!(proc_state(p.pid), Some('T'), "{} left stopped", p.name);
    }
    assert!(
        TcpStream::connect(("127.0.0.1", proxy_port)).is_err(),
        "the cohort proxy port is closed"
    );
    let out = chaos(&[
        "history",
        "--json",
        "--db",
        dir.path().join("history.db").to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 2, "{rows:?}");
    assert_eq!(rows[0]["outcome"], "interrupted", "{:?}", rows[0]);
    let finished = rows.last().unwrap();
    assert!(
        ["accepted", "rejected", "inconclusive", "aborted"]
            .contains(&finished["outcome"].as_str().unwrap()),
        "{finished}"
    );
    assert_eq!(finished["verdicts"][0]["hypothesis"], "checkout errors stay flat");
    drop(fleet);
}

#[test]
fn an_invalid_daemon_config_is_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[daemon]\nlisten = \"127.0.0.1:0\"\n\n[[schedule]]\nname = \"x\"\n\
         experiment = \"missing.toml\"\ncron = \"*/5 * * *\"\n",
    )
    .unwrap();
    let out =
        crate::support::chaos(&["continuous", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("c.toml:6:14: error: experiment"), "{stderr}");
    assert!(stderr.contains("c.toml:7:8: error: has 4 fields"), "{stderr}");
    assert!(!dir.path().join("chaos-history.db").exists(), "nothing was started");
}

#[test]
fn check_prints_the_next_fire_of_every_entry_without_starting() {
    let out = crate::support::chaos(&[
        "continuous",
        "--config",
        crate::support::repo_root().join("scenarios/continuous.toml").to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("monkey payments-monkey: cron \"0 0 9-16 * * mon-fri\""),
        "{text}"
    );
    assert!(!crate::support::repo_root().join("state").exists(), "no history created");
}
