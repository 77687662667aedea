//! Infrastructure faults on real processes and real network namespaces:
//! kill / pause / resume seen through /proc, nftables loss measured,
//! blackhole and region outage reachability, netem argv through a fake
//! `tc`, and crash safety (SIGKILL + `chaos recover`, SIGINT alone).

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::netns::{self, Lab};
use crate::support::{chaos, chaos_bin, eventually, require_capability};

pub(crate) fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A child killed and reaped on drop (unless taken to be waited for).
pub(crate) struct Guard(pub(crate) Child, bool);

impl Guard {
    pub(crate) fn new(child: Child) -> Guard {
        Guard(child, true)
    }

    /// Waits for the child and collects its output; the guard is spent.
    pub(crate) fn wait_output(mut self) -> Output {
        self.1 = false;
        let child = std::mem::replace(
            &mut self.0,
            Command::new("true").spawn().expect("placeholder child"),
        );
        let out = child.wait_with_output().expect("wait child");
        let _ = self.0.wait();
        out
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.1 {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A `sleep 300` child, returned once it is asleep (state S), so
/// snapshots of its state are stable.
pub(crate) fn victim() -> Guard {
    let g = Guard::new(Command::new("sleep").arg("300").spawn().expect("spawn sleep"));
    let pid = g.0.id();
    let asleep =
        eventually(Duration::from_secs(5), || (state(pid) == Some('S')).then_some(()));
    assert!(asleep.is_some(), "victim {pid} never went to sleep");
    g
}

fn spawn_chaos(args: &[&str]) -> Guard {
    Guard::new(
        Command::new(chaos_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chaos"),
    )
}

/// Sends `sig` to the runner and collects its output.
pub(crate) fn signal_and_wait(g: Guard, sig: nix::sys::signal::Signal) -> Output {
    let pid = nix::unistd::Pid::from_raw(g.0.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal runner");
    g.wait_output()
}

pub(crate) fn netns_ok() -> bool {
    require_capability(
        netns::can_create_netns() && chaos::fault::has_net_admin(),
        "root with CAP_NET_ADMIN to create network namespaces",
    )
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn kill_refuses_pid_one_with_a_clear_error() {
    let out = chaos(&["kill", "--target", "pid:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pid 1"), "{}", text(&out));
}

#[test]
fn kill_refuses_its_own_pid() {
    // `exec` makes the shell's pid ($$) the pid of chaos itself.
    let script = format!("exec {} kill --target pid:$$", chaos_bin().display());
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("itself"), "{}", text(&out));
}

#[test]
fn kill_dry_run_prints_the_target_and_changes_nothing() {
    let v = victim();
    let dir = tempfile::tempdir().unwrap();
    let pid = v.0.id().to_string();
    let target = format!("pid:{pid}");
    let jd = dir.path().to_str().unwrap();
    let out = chaos(&["kill", "--target", &target, "--dry-run", "--journal-dir", jd]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("kill -KILL {pid}")));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(state(v.0.id()), Some('S'));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no journal written"
    );
}

#[test]
fn kill_by_name_signals_exactly_the_selected_process_and_journals_it() {
    let mut v = victim();
    let other = victim();
    let dir = tempfile::tempdir().unwrap();
    let pattern = "name:^sleep 300$";
    let target = format!("pid:{}", v.0.id());
    let jd = dir.path().to_str().unwrap();
    // By pid, with TERM: the victim dies of SIGTERM.
    let out =
        chaos(&["kill", "--target", &target, "--signal", "TERM", "--journal-dir", jd]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = v.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(state(other.0.id()), Some('S'), "the other sleeper is untouched");
    let journal = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "journal"))
        .expect("a journal file");
    let body = std::fs::read_to_string(journal.path()).unwrap();
    assert!(body.contains("SIGTERM") && body.contains("\"reverted\""), "{body}");
    // A name pattern never selects chaos itself even though its command
    // line contains the pattern; dry run to leave the sleeper alone.
    let out = chaos(&["kill", "--target", pattern, "--count", "5", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&other.0.id().to_string()));
}

#[test]
fn recover_prunes_old_settled_journals_and_keeps_recent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let jd = dir.path().to_str().unwrap();
    let journals = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "journal"))
            .collect();
        v.sort();
        v
    };
    // Two settled journals from two real kills; the first is made 40 days old.
    let kill_a_victim = || {
        let mut v = victim();
        let target = format!("pid:{}", v.0.id());
        let out = chaos(&["kill", "--target", &target, "--journal-dir", jd]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let _ = v.0.wait();
    };
    kill_a_victim();
    let old = journals().pop().expect("first journal");
    let aged = Command::new("touch").args(["-d", "40 days ago"]).arg(&old).status();
    assert!(aged.is_ok_and(|s| s.success()), "touch -d");
    kill_a_victim();
    assert_eq!(journals().len(), 2);

    let out = chaos(&[
        "recover",
        "--journal-dir",
        jd,
        "--prune-older-than",
        "30d",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("would prune: {}", old.display())),
        "{}",
        text(&out)
    );
    assert_eq!(journals().len(), 2, "a dry run deletes nothing");

    let out = chaos(&["recover", "--journal-dir", jd, "--prune-older-than", "30d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 settled journal(s) pruned"), "{}", text(&out));
    let left = journals();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], old, "the recent journal stays");

    let out = chaos(&["recover", "--journal-dir", jd, "--prune-older-than", "0d"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("number of days"), "{}", text(&out));
}

#[test]
fn pause_stops_the_process_for_the_duration_then_resumes_it() {
    let v = victim();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("pid:{}", v.0.id());
    let jd = dir.path().to_str().unwrap();
    let runner = spawn_chaos(&[
        "inject",
        "process-pause",
        "--target",
        &target,
        "--duration",
        "1s",
        "--journal-dir",
        jd,
    ]);
    let paused = eventually(Duration::from_secs(5), || {
        (state(v.0.id()) == Some('T')).then_some(())
    });
    assert!(paused.is_some(), "victim never stopped");
    let out = runner.wait_output();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Just after SIGCONT the sleeper may still be running ('R').
    let st = state(v.0.id());
    assert!(matches!(st, Some('S' | 'R')), "victim resumed with SIGCONT: {st:?}");
}

#[test]
fn nft_loss_of_ten_percent_drops_between_8_and_12_percent_of_4000_datagrams() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let before = lab.snapshot();
    let target = format!("netns:{}", lab.spokes[0]);
    let runner = spawn_chaos(&[
        "inject",
        "packet-loss",
        "--target",
        &target,
        "--loss",
        "10%",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(eventually(Duration::from_secs(10), || (lab.snapshot() != before)
        .then_some(()))
    .is_some());
    let sent = 4000;
    let got = netns::udp_delivered(&lab.hub, &lab.spokes[0], Lab::spoke_addr(0), sent);
    let loss = 1.0 - got as f64 / sent as f64;
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGINT);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    eprintln!("measured loss {loss:.4} ({got}/{sent} delivered)");
    assert!((0.08..=0.12).contains(&loss), "measured loss {loss:.4} ({got}/{sent})");
    assert_eq!(lab.snapshot(), before, "SIGINT reverted the table");
    let clean = netns::udp_delivered(&lab.hub, &lab.spokes[0], Lab::spoke_addr(0), 500);
    assert_eq!(clean, 500, "no loss after revert");
}

#[test]
fn a_blackhole_blocks_traffic_and_its_revert_restores_it() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let _l = netns::listen(&lab.spokes[0], Lab::spoke_addr(0), 8080);
    let to = SocketAddr::from((Lab::spoke_addr(0), 8080));
    assert!(netns::reachable(&lab.hub, to), "reachable before");
    let target = format!("netns:{}", lab.spokes[0]);
    let out = chaos(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--port",
        "8080",
        "--duration",
        "3s",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    // Probe in parallel with a fresh runner instead: the first run above
    // proves a timed run exits 0 and leaves nothing behind.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(netns::reachable(&lab.hub, to), "reachable after the timed blackhole");
    let before = lab.snapshot();
    let runner = spawn_chaos(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(eventually(Duration::from_secs(10), || (lab.snapshot() != before)
        .then_some(()))
    .is_some());
    assert!(!netns::reachable(&lab.hub, to), "blocked during the blackhole");
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(netns::reachable(&lab.hub, to), "restored after revert");
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn an_ipv6_destination_blackhole_blocks_ipv6_only_and_reverts() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1).with_ipv6();
    let dir = tempfile::tempdir().unwrap();
    let to6 = SocketAddr::from((Lab::spoke_addr6(0), 8080));
    let to4 = SocketAddr::from((Lab::spoke_addr(0), 8080));
    let _l6 = netns::listen_on(&lab.spokes[0], to6);
    let _l4 = netns::listen_on(&lab.spokes[0], to4);
    assert!(netns::reachable(&lab.hub, to6), "IPv6 reachable before");
    assert!(netns::reachable(&lab.hub, to4), "IPv4 reachable before");
    let before = lab.snapshot();
    // In the spoke the hub's prefix is the far side: the rule matches
    // traffic to and from fd00:0:0:0::/64 and nothing of IPv4.
    let runner = spawn_chaos(&[
        "inject",
        "blackhole",
        "--target",
        &format!("netns:{}", lab.spokes[0]),
        "--destination",
        "fd00:0:0:0::/64",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(eventually(Duration::from_secs(10), || (lab.snapshot() != before)
        .then_some(()))
    .is_some());
    let during = lab.snapshot();
    assert!(during.contains("ip6 saddr") && during.contains("fd00::/64"), "{during}");
    assert!(!netns::reachable(&lab.hub, to6), "IPv6 blocked during the blackhole");
    assert!(netns::reachable(&lab.hub, to4), "IPv4 untouched by an IPv6 rule");
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(netns::reachable(&lab.hub, to6), "IPv6 restored after revert");
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn a_region_outage_blocks_every_host_of_one_region_and_not_the_other() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(3);
    let dir = tempfile::tempdir().unwrap();
    let listeners: Vec<_> =
        (0..3).map(|i| netns::listen(&lab.spokes[i], Lab::spoke_addr(i), 8080)).collect();
    let addr = |i: usize| SocketAddr::from((Lab::spoke_addr(i), 8080));
    let east = format!("us-east=netns:{},netns:{}", lab.spokes[0], lab.spokes[1]);
    let west = format!("eu-west=netns:{}", lab.spokes[2]);
    let before = lab.snapshot();
    let runner = spawn_chaos(&[
        "inject",
        "region-outage",
        "--region",
        &east,
        "--region",
        &west,
        "--target",
        "region:us-east",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    let active = |n: usize| lab.snapshot().matches("table inet chaos_").count() == n;
    assert!(eventually(Duration::from_secs(10), || active(2).then_some(())).is_some());
    assert!(!netns::reachable(&lab.hub, addr(0)), "us-east host 1 blocked");
    assert!(!netns::reachable(&lab.hub, addr(1)), "us-east host 2 blocked");
    assert!(netns::reachable(&lab.hub, addr(2)), "eu-west untouched");
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGINT);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_eq!(lab.snapshot(), before);
    assert!((0..3).all(|i| netns::reachable(&lab.hub, addr(i))));
    drop(listeners);
}

#[test]
fn preflight_reports_missing_netem_and_uses_the_nftables_fallback() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let before = lab.snapshot();
    let target = format!("netns:{}", lab.spokes[0]);
    let out =
        chaos(&["inject", "netem", "--target", &target, "--loss", "5%", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if chaos::fault::netem_available() {
        assert!(stdout.contains("netem loss 5%"), "{}", text(&out));
    } else {
        assert!(stderr.contains("no netem qdisc"), "{}", text(&out));
        assert!(stdout.contains("numgen random mod 10000 < 500"), "{}", text(&out));
    }
    // Pure delay cannot fall back: a clear environment error.
    let out = chaos(&["inject", "netem", "--target", &target, "--delay", "100ms"]);
    if !chaos::fault::netem_available() {
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("proxy"), "{}", text(&out));
    }
    assert_eq!(lab.snapshot(), before, "dry run and refusal changed nothing");
}

/// A fake `tc` on PATH that logs its argv and reports our qdisc as
/// present: this kernel has no netem, so the real invocation path is
/// exercised against the fake.
fn fake_tc(dir: &Path) -> (String, std::path::PathBuf) {
    let log = dir.join("tc.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *show*) echo 'qdisc netem 4c43: root refcnt 2';; esac\nexit 0\n",
        log.display()
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("tc");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let new_path =
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    (new_path, log)
}

#[test]
fn netem_runs_the_exact_tc_commands_and_recover_deletes_only_its_handle() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = fake_tc(dir.path());
    let jd = dir.path().join("journal");
    let target = format!("iface:h0@{}", lab.hub);
    let runner = Guard::new(
        Command::new(chaos_bin())
            .env("PATH", &path)
            .args(["inject", "netem", "--target", &target, "--delay", "100ms"])
            .args([
                "--jitter",
                "10ms",
                "--loss",
                "5%",
                "--journal-dir",
                jd.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let added = "qdisc add dev h0 root handle 4c43: netem delay 100ms 10ms loss 5%";
    let seen = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains(added))
    });
    assert!(seen.is_some(), "tc add never ran: {:?}", std::fs::read_to_string(&log));
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("qdisc del"), "no revert ran before recover: {logged}");
    let out = Command::new(chaos_bin())
        .env("PATH", &path)
        .args(["recover", "--journal-dir", jd.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("qdisc show dev h0"), "{logged}");
    assert!(logged.contains("qdisc del dev h0 root handle 4c43:"), "{logged}");
}

/// Waits (bounded) for a snapshot to equal `before`: a process resumed by
/// SIGCONT is briefly runnable (R) before it sleeps again.
fn settle(snapshot: &dyn Fn() -> String, before: &str) {
    let _ = eventually(Duration::from_secs(2), || (snapshot() == before).then_some(()));
}

/// Crash safety for one fault: SIGKILL the runner while the fault is
/// active, check it was left behind, `chaos recover`, compare snapshots;
/// then the same fault again ended by SIGINT without recover.
fn crash_and_interrupt(args: &[&str], snapshot: &dyn Fn() -> String) {
    for sig in [nix::sys::signal::Signal::SIGKILL, nix::sys::signal::Signal::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let jd = dir.path().to_str().unwrap();
        let before = snapshot();
        let mut full: Vec<&str> = vec!["inject"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--journal-dir", jd]);
        let runner = spawn_chaos(&full);
        let active =
            eventually(Duration::from_secs(10), || (snapshot() != before).then_some(()));
        assert!(active.is_some(), "{args:?} never became active");
        let out = signal_and_wait(runner, sig);
        if sig == nix::sys::signal::Signal::SIGKILL {
            assert_ne!(snapshot(), before, "{args:?}: the killed runner left its fault");
            let dry = chaos(&["recover", "--journal-dir", jd, "--dry-run"]);
            assert!(String::from_utf8_lossy(&dry.stdout).contains("would revert"));
            assert_ne!(snapshot(), before, "{args:?}: recover --dry-run changed nothing");
            let rec = chaos(&["recover", "--journal-dir", jd]);
            assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
            settle(snapshot, &before);
            assert_eq!(snapshot(), before, "{args:?}: recover restored everything");
            let again = chaos(&["recover", "--journal-dir", jd]);
            assert!(String::from_utf8_lossy(&again.stdout).contains("0 record(s)"));
        } else {
            assert_eq!(out.status.code(), Some(130), "{args:?}: {}", text(&out));
            settle(snapshot, &before);
            assert_eq!(snapshot(), before, "{args:?}: SIGINT reverted everything");
        }
    }
}

#[test]
fn a_killed_or_interrupted_runner_leaves_no_network_fault_behind() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(2);
    let ns = format!("netns:{}", lab.spokes[0]);
    let dev = format!("iface:h1@{}", lab.hub);
    let region = format!("r=netns:{},netns:{}", lab.spokes[0], lab.spokes[1]);
    let snap = || lab.snapshot();
    for args in [
        vec!["packet-loss", "--target", &ns, "--loss", "10%"],
        vec!["blackhole", "--target", &ns, "--destination", "10.0.0.0/24"],
        vec!["tcp-reset", "--target", &ns, "--port", "80"],
        vec!["bandwidth", "--target", &dev, "--rate", "1mbit"],
        vec!["region-outage", "--region", &region, "--target", "region:r"],
    ] {
        crash_and_interrupt(&args, &snap);
    }
}

#[test]
fn a_killed_or_interrupted_runner_leaves_no_process_paused() {
    let v = victim();
    let pid = v.0.id();
    let target = format!("pid:{pid}");
    let snap = || format!("{:?}", state(pid));
    crash_and_interrupt(&["process-pause", "--target", &target], &snap);
    let v2 = victim();
    let region = format!("r=pid:{},pid:{}", pid, v2.0.id());
    let snap2 = || format!("{:?} {:?}", state(pid), state(v2.0.id()));
    crash_and_interrupt(
        &[
            "region-outage",
            "--region",
            &region,
            "--target",
            "region:r",
            "--method",
            "pause",
        ],
        &snap2,
    );
}

#[test]
fn two_runners_never_hold_a_fault_on_the_same_target() {
    let v = victim();
    let dir = tempfile::tempdir().unwrap();
    let jd = dir.path().to_str().unwrap();
    let target = format!("pid:{}", v.0.id());
    let first = spawn_chaos(&[
        "inject",
        "process-pause",
        "--target",
        &target,
        "--journal-dir",
        jd,
    ]);
    assert!(eventually(Duration::from_secs(5), || (state(v.0.id()) == Some('T'))
        .then_some(()))
    .is_some());
    let second =
        chaos(&["inject", "process-pause", "--target", &target, "--journal-dir", jd]);
    assert_eq!(second.status.code(), Some(5), "{}", text(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already under a fault"));
    let out = signal_and_wait(first, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let st = state(v.0.id());
    assert!(matches!(st, Some('S' | 'R')), "victim resumed: {st:?}");
}

#[test]
fn network_dry_run_prints_the_commands_and_changes_nothing() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let before = lab.snapshot();
    let target = format!("netns:{}", lab.spokes[0]);
    let out = chaos(&[
        "inject",
        "tcp-reset",
        "--target",
        &target,
        "--port",
        "443",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nft -f -") && stdout.contains("reject with tcp reset"),
        "{stdout}"
    );
    assert!(stdout.contains("revert: ip netns exec"), "{stdout}");
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn kill_with_a_grace_period_sends_term_then_kill_to_a_process_ignoring_term() {
    // An ignored signal stays ignored across exec, so this sleep shrugs
    // off SIGTERM.
    let mut v = Guard::new(
        Command::new("sh").args(["-c", "trap '' TERM; exec sleep 300"]).spawn().unwrap(),
    );
    let pid = v.0.id();
    let asleep = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .ok()
            .filter(|c| c.starts_with("sleep"))
    });
    assert!(asleep.is_some());
    let dir = tempfile::tempdir().unwrap();
    let target = format!("pid:{pid}");
    let started = std::time::Instant::now();
    let out = chaos(&[
        "kill",
        "--target",
        &target,
        "--grace",
        "300ms",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_millis(300), "waited out the grace");
    assert_eq!(v.0.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn a_repeated_kill_re_resolves_its_targets_at_every_interval() {
    let tag = format!("299.{}", std::process::id());
    let mut victims: Vec<Guard> = (0..3)
        .map(|_| Guard::new(Command::new("sleep").arg(&tag).spawn().unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("name:^sleep {}$", tag.replace('.', "[.]"));
    let out = chaos(&[
        "inject",
        "process-kill",
        "--target",
        &target,
        "--count",
        "1",
        "--interval",
        "200ms",
        "--duration",
        "1500ms",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for v in &mut victims {
        assert_eq!(v.0.wait().unwrap().signal(), Some(libc::SIGKILL), "{}", text(&out));
    }
}

#[test]
fn tcp_reset_refuses_connections_instead_of_timing_them_out() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let _l = netns::listen(&lab.spokes[0], Lab::spoke_addr(0), 8080);
    let to = SocketAddr::from((Lab::spoke_addr(0), 8080));
    let before = lab.snapshot();
    let target = format!("netns:{}", lab.spokes[0]);
    let runner = spawn_chaos(&[
        "inject",
        "tcp-reset",
        "--target",
        &target,
        "--port",
        "8080",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(eventually(Duration::from_secs(10), || (lab.snapshot() != before)
        .then_some(()))
    .is_some());
    let refused = netns::in_netns(&lab.hub, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| e.kind())
    });
    let out = signal_and_wait(runner, nix::sys::signal::Signal::SIGINT);
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(netns::reachable(&lab.hub, to));
}

#[test]
fn a_selection_beyond_the_blast_radius_is_refused_before_anything_happens() {
    let tag = format!("298.{}", std::process::id());
    let victims: Vec<Guard> = (0..3)
        .map(|_| Guard::new(Command::new("sleep").arg(&tag).spawn().unwrap()))
        .collect();
    let target = format!("name:^sleep {}$", tag.replace('.', "[.]"));
    let out =
        chaos(&["kill", "--target", &target, "--percent", "100%", "--max-targets", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_targets = 2"),
        "{}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(victims.iter().all(|v| matches!(state(v.0.id()), Some('S' | 'R'))));
}

#[test]
fn a_name_pattern_never_selects_another_chaos_runner() {
    let v = victim();
    let dir = tempfile::tempdir().unwrap();
    let jd = dir.path().to_str().unwrap();
    // The holder's command line contains "marker-<pid>", and so does the
    // second command's pattern: only the sleeper may match.
    let marker = format!("marker-{}", std::process::id());
    let region = format!("{marker}=pid:{}", v.0.id());
    let target = format!("region:{marker}");
    let holder = spawn_chaos(&[
        "inject",
        "region-outage",
        "--region",
        &region,
        "--target",
        &target,
        "--method",
        "pause",
        "--journal-dir",
        jd,
    ]);
    assert!(eventually(Duration::from_secs(5), || (state(v.0.id()) == Some('T'))
        .then_some(()))
    .is_some());
    let pattern = format!("name:{marker}");
    let out = chaos(&["kill", "--target", &pattern, "--count", "10", "--dry-run"]);
    let out2 = signal_and_wait(holder, nix::sys::signal::Signal::SIGINT);
    assert_eq!(out2.status.code(), Some(130), "{}", text(&out2));
    assert_eq!(out.status.code(), Some(5), "nothing but chaos matched: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("matches nothing"),
        "{}",
        text(&out)
    );
}
