//! The kill matrix: `chaos run` SIGKILLed in each phase (baseline, just
//! injected, observing, reverting) × every fault kind this kernel can do
//! (process-kill, process-pause, packet-loss, blackhole, tcp-reset,
//! bandwidth (tbf), netem loss through its nftables fallback, region
//! outage by blackhole and by pause), then `chaos recover`, then the nft
//! ruleset, tc qdiscs and process states compared with a snapshot taken
//! before the run. Cells run in parallel threads, each with its own
//! namespaces, processes, journal and state directory.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::faults::{netns_ok, signal_and_wait, state, text, victim, Guard};
use crate::halt::{experiment, upstream};
use crate::netns::Lab;
use crate::recovery::{journals_in, Dirs};
use crate::support::eventually;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Baseline,
    Injected,
    Observe,
    Revert,
}

const PHASES: [Phase; 4] =
    [Phase::Baseline, Phase::Injected, Phase::Observe, Phase::Revert];

const KINDS: [&str; 9] = [
    "process-kill",
    "process-pause",
    "packet-loss",
    "blackhole",
    "tcp-reset",
    "bandwidth",
    "netem-loss-fallback",
    "region-outage-blackhole",
    "region-outage-pause",
];

/// What one cell hits and how to look at it.
struct Setup {
    lab: Option<Lab>,
    /// Processes whose state is part of the snapshot.
    watched: Vec<Guard>,
    /// A process the fault kills (not in the snapshot: its death is the
    /// fault's intended, irreversible effect).
    _doomed: Option<Guard>,
    faults: String,
}

impl Setup {
    fn new(kind: &str) -> Setup {
        let net = !kind.starts_with("process-") && kind != "region-outage-pause";
        let lab = net.then(|| Lab::new(1));
        let ns = lab.as_ref().map(|l| l.spokes[0].clone()).unwrap_or_default();
        let hub = lab.as_ref().map(|l| l.hub.clone()).unwrap_or_default();
        let mut watched = vec![victim()];
        let mut doomed = None;
        let p0 = watched[0].0.id();
        let fault = |body: String| format!("[[fault]]\nname = \"f\"\n{body}");
        let faults = match kind {
            "process-kill" => {
                let d = victim();
                let body = format!("kind = \"process-kill\"\ntarget = \"pid:{}\"\n", d.0.id());
                doomed = Some(d);
                fault(body)
            }
            "process-pause" => fault(format!("kind = \"process-pause\"\ntarget = \"pid:{p0}\"\n")),
            "packet-loss" => fault(format!("kind = \"packet-loss\"\ntarget = \"netns:{ns}\"\nloss = \"10%\"\n")),
            "blackhole" => fault(format!("kind = \"blackhole\"\ntarget = \"netns:{ns}\"\n")),
            "tcp-reset" => fault(format!("kind = \"tcp-reset\"\ntarget = \"netns:{ns}\"\nports = [80]\n")),
            "bandwidth" => fault(format!("kind = \"bandwidth\"\ntarget = \"iface:h0@{hub}\"\nrate = \"1mbit\"\n")),
            "netem-loss-fallback" => fault(format!("kind = \"netem\"\ntarget = \"iface:h0@{hub}\"\nloss = \"10%\"\n")),
            "region-outage-blackhole" => format!(
                "[[region]]\nname = \"r\"\ntargets = [\"netns:{hub}\", \"netns:{ns}\"]\n\n{}",
                fault("kind = \"region-outage\"\nregion = \"r\"\nmethod = \"blackhole\"\n".into())
            ),
            "region-outage-pause" => {
                watched.push(victim());
                let p1 = watched[1].0.id();
                format!(
                    "[[region]]\nname = \"r\"\ntargets = [\"pid:{p0}\", \"pid:{p1}\"]\n\n{}",
                    fault("kind = \"region-outage\"\nregion = \"r\"\nmethod = \"pause\"\n".into())
                )
            }
            other => panic!("unknown kind {other}"),
        };
        Setup { lab, watched, _doomed: doomed, faults }
    }

    fn snapshot(&self) -> String {
        let mut out = self.lab.as_ref().map(Lab::snapshot).unwrap_or_default();
        for g in &self.watched {
            out.push_str(&format!("pid {} state {:?}\n", g.0.id(), state(g.0.id())));
        }
        out
    }
}

fn journal_text(dir: &Path) -> String {
    journals_in(dir).iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
}

/// Result of one cell.
#[derive(Debug)]
struct Cell {
    kind: &'static str,
    phase: Phase,
    clean: bool,
    /// The kill left a fault behind (so recover had something to do).
    left_fault: bool,
    detail: String,
}

fn run_cell(kind: &'static str, phase: Phase) -> Cell {
    let setup = Setup::new(kind);
    let dirs = Dirs::new();
    let up = upstream();
    let exp = experiment(dirs.journal.path(), &up, "1s", "1500ms", &setup.faults);
    let before = setup.snapshot();
    let reports = dirs.journal.path().join("reports");
    let runner = dirs.spawn(&[
        "run",
        exp.to_str().unwrap(),
        "--quiet",
        "--report-dir",
        reports.to_str().unwrap(),
        "--journal-dir",
        dirs.jd(),
    ]);
    let jd = dirs.journal.path().to_path_buf();
    let applied = || journal_text(&jd).contains("\"type\":\"apply\"");
    let reached = match phase {
        // The journal opens at preflight, just before the baseline.
        Phase::Baseline => eventually(Duration::from_secs(20), || {
            (!journals_in(&jd).is_empty()).then_some(())
        })
        .map(|_| std::thread::sleep(Duration::from_millis(300))),
        // Right after the fault took effect (for a kill, once journalled).
        Phase::Injected => eventually(Duration::from_secs(20), || {
            (applied() && (kind == "process-kill" || setup.snapshot() != before))
                .then_some(())
        }),
        Phase::Observe => eventually(Duration::from_secs(20), || applied().then_some(()))
            .map(|_| std::thread::sleep(Duration::from_millis(500))),
        Phase::Revert => eventually(Duration::from_secs(20), || {
            journal_text(&jd).contains("\"type\":\"reverted\"").then_some(())
        }),
    };
    let out = signal_and_wait(runner, Signal::SIGKILL);
    if reached.is_none() {
        return Cell {
            kind,
            phase,
            clean: false,
            left_fault: false,
            detail: format!("phase never reached: {}", text(&out)),
        };
    }
    let left_fault = setup.snapshot() != before;
    let rec = dirs.run(&["recover", "--journal-dir", dirs.jd()]);
    let settled =
        eventually(Duration::from_secs(2), || (setup.snapshot() == before).then_some(()));
    let after = setup.snapshot();
    let clean = settled.is_some() && rec.status.code() == Some(0);
    let detail = if clean {
        String::new()
    } else {
        format!("recover: {}\nbefore:\n{before}\nafter:\n{after}", text(&rec))
    };
    Cell { kind, phase, clean, left_fault, detail }
}

#[test]
fn sigkill_in_every_phase_and_fault_kind_then_recover_leaves_nothing_behind() {
    if !netns_ok() {
        return;
    }
    if !Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert!(crate::support::require_capability(false, "nft"));
        return;
    }
    // Six runners at once: keep the timing-sensitive heavy tests apart.
    let _heavy = crate::support::heavy();
    let started = Instant::now();
    let work: Vec<(&'static str, Phase)> =
        KINDS.iter().flat_map(|k| PHASES.iter().map(move |p| (*k, *p))).collect();
    let queue = Arc::new(Mutex::new(work));
    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || loop {
                let Some((kind, phase)) = queue.lock().unwrap().pop() else { return };
                let cell = run_cell(kind, phase);
                results.lock().unwrap().push(cell);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a cell thread panicked");
    }
    let results = results.lock().unwrap();
    let clean = results.iter().filter(|c| c.clean).count();
    let leftovers: Vec<&Cell> = results.iter().filter(|c| !c.clean).collect();
    let left = results.iter().filter(|c| c.left_fault).count();
    eprintln!(
        "kill matrix: {} cells, {clean} clean, {} leftovers ({left} kills left a fault \
         for recover to undo), {:.1}s",
        results.len(),
        leftovers.len(),
        started.elapsed().as_secs_f64()
    );
    for c in &leftovers {
        eprintln!("LEFTOVER {} at {:?}:\n{}", c.kind, c.phase, c.detail);
    }
    assert_eq!(results.len(), KINDS.len() * PHASES.len());
    assert!(leftovers.is_empty(), "{} cell(s) left something behind", leftovers.len());
}
