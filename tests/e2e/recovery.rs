//! Issue 12, recovery and journals: one regression test per case, named
//! after it, each through the real CLI on real processes, nft tables and
//! tc qdiscs. Every test has its own state directory (target locks, halt
//! marker) and journal directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::faults::{netns_ok, signal_and_wait, state, text, victim, Guard};
use crate::netns::Lab;
use crate::support::{chaos_bin, eventually};

/// A private state directory and journal directory for one test.
pub(crate) struct Dirs {
    pub state: tempfile::TempDir,
    pub journal: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            state: tempfile::tempdir().unwrap(),
            journal: tempfile::tempdir().unwrap(),
        }
    }

    pub fn jd(&self) -> &str {
        self.journal.path().to_str().unwrap()
    }

    /// `chaos ARGS` with this state directory and no inherited journal
    /// variables.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(chaos_bin());
        c.args(args)
            .env("CHAOS_STATE_DIR", self.state.path())
            .env_remove("CHAOS_JOURNAL_DIR")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run chaos")
    }

    pub fn spawn(&self, args: &[&str]) -> Guard {
        Guard::new(
            self.cmd(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn chaos"),
        )
    }

    /// `chaos inject process-pause --target pid:PID` journalled here,
    /// left running (it holds the pause until stopped or killed).
    pub fn spawn_pause(&self, pid: u32) -> Guard {
        let args = self.pause_args(pid, &[]);
        self.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `chaos inject process-pause --target pid:PID EXTRA…` journalled
    /// here, run to completion.
    pub fn run_pause(&self, pid: u32, extra: &[&str]) -> Output {
        let args = self.pause_args(pid, extra);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn pause_args(&self, pid: u32, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["inject", "process-pause", "--target"]
            .into_iter()
            .map(String::from)
            .collect();
        v.push(format!("pid:{pid}"));
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(["--journal-dir".to_string(), self.jd().to_string()]);
        v
    }

    /// The journal files in the journal directory.
    pub fn journals(&self) -> Vec<PathBuf> {
        journals_in(self.journal.path())
    }
}

pub(crate) fn journals_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "journal"));
    v.sort();
    v
}

fn wait_state(pid: u32, want: char) -> bool {
    eventually(Duration::from_secs(5), || (state(pid) == Some(want)).then_some(()))
        .is_some()
}

/// `chaos inject process-pause` on `pid`, SIGKILLed once the pause is in
/// place: a dead runner's journal with one pending `continue`.
fn killed_pause(dirs: &Dirs, pid: u32) {
    let before = applies(dirs);
    let runner = dirs.spawn_pause(pid);
    let applied = eventually(Duration::from_secs(5), || {
        (applies(dirs) > before && state(pid) == Some('T')).then_some(())
    });
    assert!(applied.is_some(), "the pause never took");
    signal_and_wait(runner, Signal::SIGKILL);
}

/// Number of `apply` records in the journal directory.
fn applies(dirs: &Dirs) -> usize {
    dirs.journals()
        .iter()
        .filter_map(|j| std::fs::read_to_string(j).ok())
        .map(|t| t.matches("\"type\":\"apply\"").count())
        .sum()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn case1_recover_never_continues_a_process_a_live_runner_paused_since() {
    let v = victim();
    let pid = v.0.id();
    let dirs = Dirs::new();
    // Runner A pauses P and dies.
    killed_pause(&dirs, pid);
    // Runner B pauses P (already stopped) and stays alive.
    let b = dirs.spawn_pause(pid);
    let b_has_lock =
        eventually(Duration::from_secs(5), || (applies(&dirs) == 2).then_some(()));
    assert!(b_has_lock.is_some(), "runner B never applied its pause");
    std::thread::sleep(Duration::from_millis(200));
    let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        state(pid),
        Some('T'),
        "recover continued a process runner B holds: {}",
        text(&rec)
    );
    assert_eq!(rec.status.code(), Some(5), "{}", text(&rec));
    assert!(stdout(&rec).contains("held by a live chaos runner"), "{}", text(&rec));
    // B ends: it found P stopped, so it leaves it stopped; A's record is
    // still pending and the next recover (nobody holds P) continues it.
    let out = signal_and_wait(b, Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_eq!(state(pid), Some('T'));
    let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    assert!(wait_state(pid, 'S'), "the dead runner's pause was never reverted");
}

fn tc_show(ns: &str, dev: &str) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn case2_a_failed_apply_never_deletes_another_runners_qdisc() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let dev = format!("iface:h0@{}", lab.hub);
    let dirs_a = Dirs::new();
    // Runner B: another journal directory, the same machine (state dir).
    let journal_b = tempfile::tempdir().unwrap();
    let jb = journal_b.path().to_str().unwrap();
    let a = dirs_a.spawn(&[
        "inject",
        "bandwidth",
        "--target",
        &dev,
        "--rate",
        "1mbit",
        "--journal-dir",
        dirs_a.jd(),
    ]);
    let held = eventually(Duration::from_secs(10), || {
        tc_show(&lab.hub, "h0").contains("tbf 4c43:").then_some(())
    });
    assert!(held.is_some(), "runner A never applied its qdisc");
    let b = dirs_a.run(&[
        "inject",
        "bandwidth",
        "--target",
        &dev,
        "--rate",
        "2mbit",
        "--journal-dir",
        jb,
        "--duration",
        "1s",
    ]);
    assert_eq!(b.status.code(), Some(5), "{}", text(&b));
    assert!(stderr(&b).contains("already under a fault"), "{}", text(&b));
    let shown = tc_show(&lab.hub, "h0");
    assert!(
        shown.contains("tbf 4c43:") && shown.contains("1Mbit"),
        "A's qdisc is gone: {shown}"
    );
    let out = signal_and_wait(a, Signal::SIGTERM);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(!tc_show(&lab.hub, "h0").contains("4c43:"));

    // A qdisc under chaos's handle that chaos did not apply (no lock to
    // stop the apply): the add fails and the cleanup leaves it alone.
    let st = Command::new("ip")
        .args([
            "netns", "exec", &lab.hub, "tc", "qdisc", "add", "dev", "h0", "root",
            "handle", "4c43:", "tbf", "rate", "3mbit", "burst", "1600b", "latency",
            "50ms",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let c = dirs_a.run(&[
        "inject",
        "bandwidth",
        "--target",
        &dev,
        "--rate",
        "2mbit",
        "--journal-dir",
        jb,
        "--duration",
        "1s",
    ]);
    assert_ne!(c.status.code(), Some(0), "{}", text(&c));
    let shown = tc_show(&lab.hub, "h0");
    assert!(
        shown.contains("tbf 4c43:") && shown.contains("3Mbit"),
        "the failed apply deleted a qdisc it did not create: {shown}\n{}",
        text(&c)
    );
    let rec = dirs_a.run(&["recover", "--journal-dir", jb]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    assert!(tc_show(&lab.hub, "h0").contains("3Mbit"), "recover deleted it");
}

#[test]
fn case3_one_unreadable_journal_does_not_stop_the_others() {
    let v = victim();
    let pid = v.0.id();
    let dirs = Dirs::new();
    killed_pause(&dirs, pid);
    let jd = dirs.journal.path();
    // A journal torn inside a multi-byte character, a directory and a
    // dangling symlink, all named *.journal and sorted before the good one.
    std::fs::write(
        jd.join("0-bad.journal"),
        b"{\"type\":\"apply\",\"fault\":\"pause pid 9 (caf\xc3",
    )
    .unwrap();
    std::fs::create_dir(jd.join("1-dir.journal")).unwrap();
    std::os::unix::fs::symlink(jd.join("nowhere"), jd.join("2-link.journal")).unwrap();
    let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    assert!(wait_state(pid, 'S'), "the good journal was not recovered: {}", text(&rec));
    assert_eq!(rec.status.code(), Some(5), "{}", text(&rec));
    let err = stderr(&rec);
    for name in ["0-bad.journal", "1-dir.journal", "2-link.journal"] {
        assert!(err.contains(name), "{name} not reported: {}", text(&rec));
    }
}

fn nft_tables(ns: &str) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn case4_a_corrupted_apply_record_is_reported_and_fails_the_recover() {
    if !netns_ok() {
        return;
    }
    let lab = Lab::new(1);
    let ns = lab.spokes[0].clone();
    for damage in ["byte", "cut"] {
        let dirs = Dirs::new();
        let target = format!("netns:{ns}");
        let runner = dirs.spawn(&[
            "inject",
            "blackhole",
            "--target",
            &target,
            "--journal-dir",
            dirs.jd(),
        ]);
        let on = eventually(Duration::from_secs(10), || {
            nft_tables(&ns).contains("chaos_").then_some(())
        });
        assert!(on.is_some(), "blackhole never applied");
        signal_and_wait(runner, Signal::SIGKILL);
        let journal = dirs.journals().pop().unwrap();
        let body = std::fs::read_to_string(&journal).unwrap();
        let start = body.find("{\"type\":\"apply\"").expect("an apply line");
        let damaged = match damage {
            // One byte: "apply" becomes "applx".
            "byte" => body.replacen("\"type\":\"apply\"", "\"type\":\"applx\"", 1),
            // Cut in half.
            _ => body[..start + (body.len() - start) / 2].to_string(),
        };
        std::fs::write(&journal, damaged).unwrap();
        let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
        assert_eq!(rec.status.code(), Some(5), "{damage}: {}", text(&rec));
        assert!(stderr(&rec).contains("damaged record"), "{damage}: {}", text(&rec));
        assert!(
            stderr(&rec).contains("{\\\"type\\\":\\\"app"),
            "{damage}: raw line not shown: {}",
            text(&rec)
        );
        assert!(
            nft_tables(&ns).contains("chaos_"),
            "{damage}: an unverified record was acted upon"
        );
        // Clean up by hand, as the hint says.
        let table = nft_tables(&ns)
            .lines()
            .find(|l| l.contains("chaos_"))
            .unwrap()
            .trim()
            .to_string();
        let name = table.rsplit(' ').next().unwrap().to_string();
        let del = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "delete", "table", "inet", &name])
            .status()
            .unwrap();
        assert!(del.success());
    }
}

#[test]
fn case5_a_torn_last_line_does_not_make_the_second_recover_revert_again() {
    let v = victim();
    let pid = v.0.id();
    let dirs = Dirs::new();
    killed_pause(&dirs, pid);
    let journal = dirs.journals().pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(b"{\"type\":\"reverted\",\"i").unwrap();
    drop(f);
    let first = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    assert!(stdout(&first).contains("1 record(s) reverted"), "{}", text(&first));
    assert!(wait_state(pid, 'S'));
    // Someone pauses it again (say, a debugger): a second recover must not
    // replay the first one's record.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    assert!(wait_state(pid, 'T'));
    let second = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(stdout(&second).contains("0 record(s) reverted"), "{}", text(&second));
    assert_eq!(state(pid), Some('T'), "the second recover reverted again");
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
}

#[test]
fn case6_every_command_honours_chaos_journal_dir() {
    let dirs = Dirs::new();
    let journal_dir = dirs.journal.path();
    let mut v = victim();
    let target = format!("pid:{}", v.0.id());
    let killed = dirs
        .cmd(&["kill", "--target", &target])
        .env("CHAOS_JOURNAL_DIR", journal_dir)
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), Some(0), "{}", text(&killed));
    let _ = v.0.wait();
    assert_eq!(dirs.journals().len(), 1, "kill ignored CHAOS_JOURNAL_DIR");
    let w = victim();
    let target = format!("pid:{}", w.0.id());
    let inject = dirs
        .cmd(&["inject", "process-pause", "--target", &target, "--duration", "100ms"])
        .env("CHAOS_JOURNAL_DIR", journal_dir)
        .output()
        .unwrap();
    assert_eq!(inject.status.code(), Some(0), "{}", text(&inject));
    assert_eq!(dirs.journals().len(), 2, "inject ignored CHAOS_JOURNAL_DIR");
    let rec =
        dirs.cmd(&["recover"]).env("CHAOS_JOURNAL_DIR", journal_dir).output().unwrap();
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    assert!(
        stdout(&rec).contains(&format!("2 journal(s) in {}", journal_dir.display())),
        "recover ignored CHAOS_JOURNAL_DIR: {}",
        text(&rec)
    );
    // CHAOS_STATE_DIR alone still names the journal directory (the older name).
    let rec =
        dirs.cmd(&["recover"]).env("CHAOS_STATE_DIR", journal_dir).output().unwrap();
    assert!(stdout(&rec).contains("2 journal(s)"), "{}", text(&rec));
}

#[test]
fn case7_a_process_stopped_before_the_pause_stays_stopped() {
    let v = victim();
    let pid = v.0.id();
    let p = Pid::from_raw(pid as i32);
    kill(p, Signal::SIGSTOP).unwrap();
    assert!(wait_state(pid, 'T'));
    let dirs = Dirs::new();
    let out = dirs.run_pause(pid, &["--duration", "200ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        state(pid),
        Some('T'),
        "the revert woke a process that was stopped before"
    );
    // The same through a crash and `chaos recover`.
    killed_pause(&dirs, pid);
    let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    assert_eq!(rec.status.code(), Some(0), "{}", text(&rec));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(state(pid), Some('T'), "recover woke a process that was stopped before");
    kill(p, Signal::SIGCONT).unwrap();
}
