//! `chaos halt` / `chaos resume` with real runners: a `chaos run` holding
//! a process pause and an nft blackhole in a test namespace and a
//! `chaos inject` both revert and exit within 2 s; nothing new starts
//! until `chaos resume`; the daemon's API sets and lifts the same halt.
//! Each test has its own state directory, so a halt never reaches the
//! runners of other tests.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::faults::{netns_ok, state, text, victim, Guard};
use crate::netns::Lab;
use crate::recovery::Dirs;
use crate::support::eventually;

/// A loopback listener that accepts connections (the runner's upstream
/// probe only connects); the experiment sends no load.
pub(crate) fn upstream() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind upstream")
}

/// A minimal experiment: no load, one hypothesis, the given faults.
pub(crate) fn experiment(
    dir: &std::path::Path,
    up: &TcpListener,
    baseline: &str,
    duration: &str,
    faults: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("exp-{}.toml", crate::support::unique_name("e")));
    let text = format!(
        "[experiment]\nname = \"halt\"\nduration = \"{duration}\"\nbaseline = \"{baseline}\"\n\
         min_samples = 1\n\n[traffic]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\n\n\
         [[hypothesis]]\nname = \"errors\"\nmetric = \"error_rate\"\ntolerance = \"+100pp\"\n\n{faults}",
        up.local_addr().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn nft_has_chaos_table(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("chaos_"))
}

/// Waits (bounded) for the child to exit; returns its output and when.
fn exited(g: Guard, within: Duration) -> (Output, Instant) {
    let mut g = g;
    let pid = g.0.id();
    let at = eventually(within, || g.0.try_wait().ok().flatten().map(|_| Instant::now()))
        .unwrap_or_else(|| panic!("pid {pid} did not exit within {within:?}"));
    (g.wait_output(), at)
}

#[test]
fn halt_reverts_a_run_and_an_inject_within_two_seconds_and_resume_lifts_it() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let spoke = lab.spokes[0].clone();
    let v = victim();
    let pid = v.0.id();
    let dirs = Dirs::new();
    let up = upstream();
    let faults = format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\ntarget = \"pid:{pid}\"\n\n\
         [[fault]]\nname = \"hole\"\nkind = \"blackhole\"\ntarget = \"netns:{spoke}\"\n"
    );
    let exp = experiment(dirs.journal.path(), &up, "200ms", "60s", &faults);
    let reports = dirs.journal.path().join("reports");
    let run = dirs.spawn(&[
        "run",
        exp.to_str().unwrap(),
        "--quiet",
        "--report-dir",
        reports.to_str().unwrap(),
        "--journal-dir",
        dirs.jd(),
    ]);
    let hub_target = format!("netns:{}", lab.hub);
    let applied = eventually(Duration::from_secs(15), || {
        (state(pid) == Some('T') && nft_has_chaos_table(&spoke)).then_some(())
    });
    assert!(applied.is_some(), "the run never applied its faults");
    let inject = dirs.spawn(&[
        "inject",
        "packet-loss",
        "--target",
        &hub_target,
        "--loss",
        "50%",
        "--journal-dir",
        dirs.jd(),
    ]);
    let injected = eventually(Duration::from_secs(10), || {
        nft_has_chaos_table(&lab.hub).then_some(())
    });
    assert!(injected.is_some(), "the inject never applied");

    let t0 = Instant::now();
    let halt = dirs.run(&["halt", "--reason", "INC-42 freeze"]);
    assert_eq!(halt.status.code(), Some(0), "{}", text(&halt));
    let (run_out, run_end) = exited(run, Duration::from_secs(10));
    let (inj_out, inj_end) = exited(inject, Duration::from_secs(10));
    let run_s = run_end.duration_since(t0).as_secs_f64();
    let inj_s = inj_end.duration_since(t0).as_secs_f64();
    eprintln!("halt: run exited after {run_s:.2}s, inject after {inj_s:.2}s");
    assert!(run_s < 2.0 && inj_s < 2.0, "run {run_s:.2}s, inject {inj_s:.2}s");
    assert_eq!(run_out.status.code(), Some(3), "{}", text(&run_out));
    assert!(text(&run_out).contains("halted: INC-42 freeze"), "{}", text(&run_out));
    assert_eq!(inj_out.status.code(), Some(3), "{}", text(&inj_out));
    assert!(eventually(Duration::from_secs(2), || (state(pid) == Some('S'))
        .then_some(()))
    .is_some());
    assert!(
        !nft_has_chaos_table(&spoke) && !nft_has_chaos_table(&lab.hub),
        "a fault stayed"
    );

    // Nothing new starts, each saying why.
    let short = experiment(
        dirs.journal.path(),
        &up,
        "100ms",
        "300ms",
        &format!(
        "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\ntarget = \"pid:{pid}\"\n"
    ),
    );
    let target = format!("pid:{pid}");
    for args in [
        vec![
            "run",
            short.to_str().unwrap(),
            "--quiet",
            "--report-dir",
            reports.to_str().unwrap(),
        ],
        vec!["inject", "process-pause", "--target", &target, "--duration", "100ms"],
        vec!["kill", "--target", &target, "--signal", "CONT"],
    ] {
        let mut full = args.clone();
        full.extend(["--journal-dir", dirs.jd()]);
        let out = dirs.run(&full);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("INC-42 freeze"), "{args:?}: {}", text(&out));
    }
    assert_eq!(state(pid), Some('S'));

    let resume = dirs.run(&["resume"]);
    assert_eq!(resume.status.code(), Some(0), "{}", text(&resume));
    let again = dirs.run(&[
        "run",
        short.to_str().unwrap(),
        "--quiet",
        "--report-dir",
        reports.to_str().unwrap(),
        "--journal-dir",
        dirs.jd(),
    ]);
    assert!(![3, 5].contains(&again.status.code().unwrap_or(5)), "{}", text(&again));
    let inj = dirs.run_pause(pid, &["--duration", "100ms"]);
    assert_eq!(inj.status.code(), Some(0), "{}", text(&inj));
}

#[test]
fn halt_sigterms_a_registered_runner_that_does_not_stop_on_its_own() {
    // A runner stopped with SIGSTOP cannot poll: the backstop SIGTERM is
    // queued and acted upon (revert, exit 130) once it runs again.
    let v = victim();
    let pid = v.0.id();
    let dirs = Dirs::new();
    let inject = dirs.spawn_pause(pid);
    assert!(eventually(Duration::from_secs(5), || (state(pid) == Some('T'))
        .then_some(()))
    .is_some());
    let runner = Pid::from_raw(inject.0.id() as i32);
    kill(runner, Signal::SIGSTOP).unwrap();
    let halt = dirs.run(&["halt", "--reason", "stuck", "--grace", "300ms"]);
    assert!(
        text(&halt).contains(&format!("sent SIGTERM to pid {}", inject.0.id())),
        "{}",
        text(&halt)
    );
    assert_eq!(
        halt.status.code(),
        Some(5),
        "a runner still alive is reported: {}",
        text(&halt)
    );
    kill(runner, Signal::SIGCONT).unwrap();
    let (out, _) = exited(inject, Duration::from_secs(5));
    assert!([3, 130].contains(&out.status.code().unwrap_or(0)), "{}", text(&out));
    assert!(eventually(Duration::from_secs(2), || (state(pid) == Some('S'))
        .then_some(()))
    .is_some());
    assert_eq!(dirs.run(&["resume"]).status.code(), Some(0));
}

fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client.post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("post");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

fn get(url: &str) -> String {
    reqwest::blocking::get(url).expect("get").text().unwrap()
}

#[test]
fn the_daemon_api_halts_and_resumes_and_metrics_show_it() {
    // The monkey's target ignores SIGUSR1 (an ignored disposition survives
    // exec), so strikes are visible in the log and harmless.
    let v = Guard::new(
        Command::new("sh")
            .args(["-c", "trap '' USR1; exec sleep 300"])
            .spawn()
            .expect("spawn sleeper"),
    );
    let dirs = Dirs::new();
    let config = dirs.journal.path().join("continuous.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\ntoken = \"halt-token-0123456789\"\n\
             history = \"history.db\"\nreport_dir = \"reports\"\njournal_dir = \"journal\"\n\n\
             [[monkey]]\nname = \"m\"\ntargets = [\"pid:{}\"]\ncron = \"* * * * * *\"\n\
             max_targets = 1\nsignal = \"SIGUSR1\"\n",
            v.0.id()
        ),
    )
    .unwrap();
    let mut child = dirs
        .cmd(&["continuous", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let daemon = Guard::new(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("daemon: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no daemon line with {needle:?}"),
            }
        }
    };
    let listening = wait_line("listening on http://");
    let base = listening
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(get(&format!("{base}/metrics")).contains("chaos_halted 0"));

    let (code, _) = post(&format!("{base}/halt?reason=nope"), None);
    assert_eq!(code, 401, "halt needs the token");
    assert!(chaos::halt::check(dirs.state.path()).is_none());
    let (code, body) =
        post(&format!("{base}/halt?reason=api+test%21"), Some("halt-token-0123456789"));
    assert_eq!(code, 200, "{body}");
    let info = chaos::halt::check(dirs.state.path()).expect("the marker is set");
    assert_eq!(info.reason, "api test!");
    assert!(get(&format!("{base}/metrics")).contains("chaos_halted 1"));
    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{base}/status"))).unwrap();
    assert_eq!(status["halted"]["reason"], "api test!");
    // The daemon's own fires are skipped (not failed); so is everything
    // else on the machine.
    wait_line("skip m: halted: api test!");
    let metrics = get(&format!("{base}/metrics"));
    assert!(
        metrics.contains("chaos_daemon_skips_total{schedule=\"m\",reason=\"halted\"}"),
        "{metrics}"
    );
    let out = dirs.run_pause(v.0.id(), &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("api test!"), "{}", text(&out));

    let (code, body) = post(&format!("{base}/resume"), Some("halt-token-0123456789"));
    assert_eq!(code, 200, "{body}");
    assert!(chaos::halt::check(dirs.state.path()).is_none());
    assert!(get(&format!("{base}/metrics")).contains("chaos_halted 0"));
    wait_line("struck");
    let _ = kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM);
    let (out, _) = exited(daemon, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
}
