//! `chaos continuous` with `[daemon] inventory` on the test fleet (see
//! fleet_support): a scheduled experiment with `@hosts:` targets pauses
//! the payments service and adds an nft table on the payments hosts
//! (through their agents over SSH), each run reverts them, and SIGTERM
//! mid-run reverts them on every host before the daemon exits.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fleet_gameday::{
    experiment, fleet, journal_settled, payments_faults, payments_faults_active,
    upstream_in,
};
use crate::support::eventually;

/// Kills and reaps the daemon if the test fails before it exits.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

#[test]
fn the_daemon_runs_host_faults_from_its_inventory_and_reverts_them_on_sigterm() {
    let Some(f) = fleet() else { return };
    let _heavy = crate::support::heavy();
    let inv = f.inventory();
    let before = f.snapshot();
    let port = upstream_in(&f.ctl);
    let dir = f.dir.path();
    let exp = experiment(dir, "fleet-scheduled", port, &payments_faults(&f));
    let config = dir.join("continuous.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\nhistory = \"history.db\"\n\
             report_dir = \"reports\"\njournal_dir = \"journal\"\ninventory = \"{}\"\n\n\
             [[schedule]]\nname = \"fleet-pause\"\nexperiment = \"{}\"\n\
             cron = \"*/2 * * * * *\"\nbackoff = \"0s\"\nmax_consecutive_failures = 100\n",
            inv.display(),
            exp.display()
        ),
    )
    .unwrap();
    // `ip netns exec` execs chaos, so this PID is the daemon's.
    let mut child = f
        .controller(&["continuous", "--config", config.to_str().unwrap()])
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
    wait_line(&rx, "listening on http://", Duration::from_secs(20));

    // A whole run: the faults land on web-1 and web-2 only, and are
    // reverted when it finishes.
    wait_line(&rx, "start fleet-pause", Duration::from_secs(20));
    let landed =
        eventually(Duration::from_secs(20), || payments_faults_active(&f).then_some(()));
    assert!(landed.is_some(), "faults on the payments hosts: {:?}", f.snapshot());
    let finished = wait_line(&rx, "finish fleet-pause", Duration::from_secs(40));
    assert!(finished.contains("accepted"), "{finished}");

    // The next run: SIGTERM while its faults are active on the hosts.
    wait_line(&rx, "start fleet-pause", Duration::from_secs(20));
    let landed =
        eventually(Duration::from_secs(20), || payments_faults_active(&f).then_some(()));
    assert!(landed.is_some(), "second run's faults: {:?}", f.snapshot());
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let child = guard.0.as_mut().unwrap();
    let status = eventually(Duration::from_secs(30), || child.try_wait().unwrap())
        .expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    guard.0 = None;

    let settled =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    assert!(settled.is_some(), "every host back to its snapshot: {:?}", f.snapshot());
    let records = journal_settled(&dir.join("journal")).unwrap();
    assert!(records > 0, "the daemon's runs journalled their host faults");
    let out = crate::support::chaos(&[
        "history",
        "--json",
        "--db",
        dir.join("history.db").to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 2, "{rows:?}");
    assert_eq!(rows[0]["outcome"], "interrupted", "{:?}", rows[0]);
}
