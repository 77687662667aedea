//! The demo fleet and the load generator with real child processes on
//! loopback: health, cohort propagation, resilient vs fragile behaviour
//! under SIGSTOP / SIGKILL / malformed payloads, cleanup, and load rate.

use chaos::cohort::Cohort;
use chaos::demo::{
    Fleet, FleetSpec, Region, Role, Variant, PAYMENT_ATTEMPTS_HEADER,
    PAYMENT_COHORT_HEADER,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{chaos_bin, eventually};

const EXP: Cohort = Cohort::Experiment;
const CTL: Cohort = Cohort::Control;

fn start(
    variant: Variant,
    tweak: impl FnOnce(&mut FleetSpec),
) -> (tempfile::TempDir, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = FleetSpec::new(variant, dir.path().join("fleet"));
    spec.exe = Some(chaos_bin());
    tweak(&mut spec);
    let fleet = Fleet::start(spec).expect("fleet starts");
    (dir, fleet)
}

struct Reply {
    status: u16,
    attempts: Option<String>,
    payment_cohort: Option<String>,
    body: serde_json::Value,
    elapsed: Duration,
}

fn checkout(fleet: &Fleet, pool: Cohort) -> Reply {
    let url = format!("{}/checkout", fleet.api_url(pool).unwrap());
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let t = Instant::now();
    let resp = client.get(url).header("x-chaos-cohort", pool.as_str()).send().unwrap();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, attempts, payment_cohort) = (
        resp.status().as_u16(),
        header(PAYMENT_ATTEMPTS_HEADER),
        header(PAYMENT_COHORT_HEADER),
    );
    let body = resp.json().unwrap();
    Reply { status, attempts, payment_cohort, body, elapsed: t.elapsed() }
}

fn payments_pid(fleet: &Fleet, pool: Cohort, region: Region) -> u32 {
    fleet.pid(Role::Payments, pool, Some(region)).unwrap()
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn all_pids(fleet: &Fleet) -> Vec<u32> {
    fleet.processes().map(|p| p.pid).collect()
}

/// Gone = no /proc entry, or a zombie whose new parent has not reaped it yet.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn assert_all_gone(pids: &[u32]) {
    for pid in pids {
        assert!(gone(*pid), "demo process {pid} still exists");
    }
}

#[test]
fn fleet_starts_healthy_and_checkout_propagates_the_cohort_to_payments() {
    let (_dir, fleet) = start(Variant::Resilient, |_| {});
    assert_eq!(fleet.processes().count(), 6);
    for p in fleet.processes() {
        let r = reqwest::blocking::get(format!("{}/healthz", p.url())).unwrap();
        assert_eq!(r.status(), 200, "{} healthz", p.name);
        let pidfile = std::fs::read_to_string(&p.pidfile).unwrap();
        assert_eq!(pidfile.trim(), p.pid.to_string());
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap();
        assert!(cmdline.starts_with(format!("{}\0", p.name).as_bytes()), "{}", p.name);
    }
    let vars = fleet.env_vars();
    let var = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(var("CHAOS_DEMO_API_EXPERIMENT"), fleet.api_url(EXP));
    assert_eq!(
        var("CHAOS_DEMO_PAYMENTS_CONTROL_EU_WEST"),
        fleet.payments_url(CTL, Region::EuWest)
    );
    for pool in Cohort::ALL {
        let r = checkout(&fleet, pool);
        assert_eq!(r.status, 200);
        assert_eq!(r.body["order"], "ok");
        assert_eq!(r.body["fallback"], false);
        assert_eq!(r.body["payment"]["region"], "us-east");
        assert_eq!(r.body["payment"]["amount_cents"], 4200);
        // payments echoed the cohort header the API propagated to it
        assert_eq!(r.payment_cohort.as_deref(), Some(pool.as_str()));
        assert_eq!(r.attempts.as_deref(), Some("1"));
    }
    let pids = all_pids(&fleet);
    drop(fleet);
    assert_all_gone(&pids);
}

#[test]
fn resilient_api_fails_over_to_eu_west_when_us_east_is_stopped_killed_and_restarted() {
    let (_dir, mut fleet) = start(Variant::Resilient, |_| {});
    let victim = payments_pid(&fleet, EXP, Region::UsEast);
    checkout(&fleet, EXP); // warm the keep-alive connection to us-east
    signal(victim, Signal::SIGSTOP);
    let r = checkout(&fleet, EXP);
    assert_eq!((r.status, r.body["payment"]["region"].as_str()), (200, Some("eu-west")));
    assert_eq!(r.attempts.as_deref(), Some("2"));
    assert!(
        r.elapsed >= Duration::from_millis(120),
        "no timeout waited: {:?}",
        r.elapsed
    );
    assert!(r.elapsed < Duration::from_millis(700), "slow failover: {:?}", r.elapsed);
    // the control pool is a separate cluster and does not notice
    assert_eq!(checkout(&fleet, CTL).body["payment"]["region"], "us-east");

    signal(victim, Signal::SIGKILL);
    let r = checkout(&fleet, EXP);
    assert_eq!((r.status, r.body["payment"]["region"].as_str()), (200, Some("eu-west")));
    assert!(r.elapsed < Duration::from_millis(500), "refused connection was slow");

    let dead = eventually(Duration::from_secs(2), || {
        let d = fleet.exited();
        (!d.is_empty()).then_some(d)
    });
    let names: Vec<String> = dead.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["chaos-demo-payments-experiment-us-east"]);
    assert_eq!(fleet.restart_exited().unwrap(), names);
    assert!(fleet.exited().is_empty());
    let new_pid = payments_pid(&fleet, EXP, Region::UsEast);
    assert_ne!(new_pid, victim);
    let pidfile = fleet.pidfile(Role::Payments, EXP, Some(Region::UsEast)).unwrap();
    assert_eq!(std::fs::read_to_string(pidfile).unwrap().trim(), new_pid.to_string());
    let r = eventually(Duration::from_secs(3), || {
        let r = checkout(&fleet, EXP);
        (r.body["payment"]["region"] == "us-east").then_some(r)
    });
    assert!(r.is_some(), "API never went back to the restarted us-east replica");

    let mut pids = all_pids(&fleet);
    pids.push(victim);
    drop(fleet);
    assert_all_gone(&pids);
}

#[test]
fn fragile_api_fails_when_us_east_is_stopped_or_killed() {
    let bound = Duration::from_millis(600);
    let (_dir, fleet) = start(Variant::Fragile, |s| s.safety_timeout = bound);
    assert_eq!(checkout(&fleet, EXP).status, 200);
    let victim = payments_pid(&fleet, EXP, Region::UsEast);
    signal(victim, Signal::SIGSTOP);
    let r = checkout(&fleet, EXP);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.elapsed >= bound, "answered before its bound: {:?}", r.elapsed);
    assert!(r.elapsed < bound * 4, "hung past its bound: {:?}", r.elapsed);

    signal(victim, Signal::SIGKILL);
    let r = checkout(&fleet, EXP);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(checkout(&fleet, CTL).status, 200);

    // a paused process must not stall shutdown: SIGCONT comes before SIGTERM
    signal(payments_pid(&fleet, CTL, Region::UsEast), Signal::SIGSTOP);
    let pids = all_pids(&fleet);
    let t = Instant::now();
    drop(fleet);
    assert!(t.elapsed() < Duration::from_millis(1500), "shutdown took {:?}", t.elapsed());
    assert_all_gone(&pids);
}

/// A payments impostor that answers a well-typed-looking but malformed
/// charge (string amount, truncated JSON) to at most 50 connections.
fn malformed_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let body = r#"{"status":"charged","amount_cents":"lots""#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn resilient_api_survives_a_malformed_payload_and_fragile_answers_500() {
    let bad = malformed_upstream();
    let route = |s: &mut FleetSpec| {
        s.payments_urls_override.insert((EXP, Region::UsEast), bad.clone());
    };
    let (_d1, resilient) = start(Variant::Resilient, route);
    let r = checkout(&resilient, EXP);
    assert_eq!((r.status, r.body["payment"]["region"].as_str()), (200, Some("eu-west")));
    assert_eq!(r.attempts.as_deref(), Some("2"));
    assert_eq!(checkout(&resilient, CTL).body["payment"]["region"], "us-east");
    drop(resilient);

    let (_d2, fragile) = start(Variant::Fragile, route);
    let r = checkout(&fragile, EXP);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("invalid payload"), "{}", r.body);
    assert_eq!(checkout(&fragile, CTL).status, 200);
}

#[test]
fn load_generator_hits_its_rate_within_ten_percent() {
    let _heavy = crate::support::heavy();
    let (_dir, fleet) = start(Variant::Resilient, |_| {});
    let target = format!("{}/checkout", fleet.api_url(CTL).unwrap()).parse().unwrap();
    let mut cfg = chaos::load::LoadConfig::new(target, 200.0);
    cfg.concurrency = 128;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = rt.block_on(chaos::load::run(cfg, rx, Duration::from_secs(3))).unwrap();
    eprintln!("load: {stats:?} rate {:.1}/s", stats.achieved_rate());
    assert!((540..=660).contains(&stats.sent), "{stats:?}");
    assert!((180.0..=220.0).contains(&stats.achieved_rate()), "{stats:?}");
    assert_eq!(stats.ok, stats.sent, "{stats:?}");
    // Open loop: a scheduling hiccup on a busy 2-core box may drop a few.
    assert!(stats.dropped <= 12, "{stats:?}");
}

/// Starts `chaos demo fleet` and returns it with its listing and the
/// pids from its pidfiles.
fn fleet_command(dir: &Path) -> (Reap, String, Vec<u32>) {
    let mut child = Command::new(chaos_bin())
        .args(["demo", "fleet", "--variant", "fragile", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Reap(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("running;") {
                let _ = tx.send(text.clone());
            }
        }
        let _ = tx.send(text);
    });
    let text =
        rx.recv_timeout(Duration::from_secs(15)).expect("fleet printed its listing");
    assert!(
        text.contains("export CHAOS_DEMO_API_EXPERIMENT=http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("payments  experiment  eu-west"), "{text}");
    let pids: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "pid")
                .then(|| std::fs::read_to_string(p).ok()?.trim().parse().ok())?
        })
        .collect();
    assert_eq!(pids.len(), 6, "{text}");
    (guard, text, pids)
}

/// Kills and reaps the `chaos demo fleet` process if a test fails early.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_fleet_command_prints_the_fleet_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guard, _text, pids) = fleet_command(dir.path());
    signal(guard.0.id(), Signal::SIGTERM);
    let status = eventually(Duration::from_secs(10), || guard.0.try_wait().unwrap());
    assert_eq!(status.expect("exited after SIGTERM").code(), Some(0));
    assert_all_gone(&pids);
}

#[test]
fn demo_load_command_prints_its_counts_as_json() {
    let (_dir, fleet) = start(Variant::Resilient, |_| {});
    let target = format!("{}/checkout", fleet.api_url(EXP).unwrap());
    let out = crate::support::chaos(&[
        "demo",
        "load",
        "--target",
        &target,
        "--rate",
        "50",
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sent"], 50, "{json}");
    assert_eq!(json["ok"], 50, "{json}");
    assert!(json["p99"].as_f64().unwrap() > 0.0, "{json}");
    let bad =
        crate::support::chaos(&["demo", "load", "--target", &target, "--rate", "0"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn demo_services_exit_by_themselves_when_their_parent_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guard, _text, pids) = fleet_command(dir.path());
    guard.0.kill().unwrap(); // SIGKILL: no chance to stop its children
    guard.0.wait().unwrap();
    let all_gone = eventually(Duration::from_secs(3), || {
        pids.iter().all(|p| gone(*p)).then_some(())
    });
    assert!(all_gone.is_some(), "orphaned demo services survive: {pids:?}");
}

#[test]
fn a_process_that_fails_to_start_is_named_with_its_stderr_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = FleetSpec::new(Variant::Resilient, dir.path().join("fleet"));
    // sh treats "demo-service" as a script path and fails loudly
    spec.exe = Some("/bin/sh".into());
    let err = Fleet::start(spec).unwrap_err().to_string();
    assert!(err.contains("chaos-demo-payments-control-us-east"), "{err}");
    assert!(err.contains("demo-service"), "stderr tail missing: {err}");
    let pidfiles = std::fs::read_dir(dir.path().join("fleet"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "pid"))
        .count();
    assert_eq!(pidfiles, 0, "pidfiles left behind");
}
