//! `chaos halt` and `chaos resume`: the machine-wide emergency stop (see
//! [`crate::halt`] for the mechanism).

use clap::Args;
use std::time::{Duration, Instant};

use crate::exit;
use crate::halt::{self, LiveRunner};
use crate::journal;

pub const HALT_AFTER_HELP: &str = "Examples:
  chaos halt --reason \"INC-4711: payments degraded, stop all chaos\"
  chaos resume

Writes the halt marker into the state directory ($CHAOS_STATE_DIR, else
/var/lib/chaos as root, else $XDG_STATE_HOME/chaos). Every `chaos run`,
`gate`, `gameday`, `inject` and the `continuous` daemon on this machine
reverts its faults and stops within 2 s: runs end as aborted (exit 3) with
the reason \"halted: REASON\", `chaos inject` exits 3, the daemon keeps
serving its API and shows chaos_halted 1. Until `chaos resume`, no
experiment, inject, kill or daemon strike starts (exit 5, naming the
reason). Registered runners still alive after --grace get SIGTERM. The
halt survives a reboot: a person lifts it. `chaos recover` still works
while halted.
Exit codes: 0 halted and every runner stopped, 5 the marker could not be
written or a runner was still alive 2 s after the halt.";

pub const RESUME_AFTER_HELP: &str = "Examples:
  chaos resume

Removes the halt marker written by `chaos halt` (or the daemon's
POST /halt): experiments may start again. Exit codes: 0 resumed or not
halted, 5 the marker could not be removed.";

/// `chaos halt` arguments.
#[derive(Debug, Args)]
pub struct HaltArgs {
    /// Why; shown by every refused or aborted run.
    #[arg(long, default_value = "emergency stop")]
    pub reason: String,
    /// How long runners get to stop on their own before SIGTERM.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub grace: Duration,
}

/// `chaos resume` arguments.
#[derive(Debug, Args)]
pub struct ResumeArgs {}

/// The registered runners other than this process.
fn others(state: &std::path::Path) -> Vec<LiveRunner> {
    let me = std::process::id();
    halt::live_runners(state).into_iter().filter(|r| r.pid != me).collect()
}

fn wait_until_gone(state: &std::path::Path, until: Instant) -> Vec<LiveRunner> {
    loop {
        let live = others(state);
        if live.is_empty() || Instant::now() >= until {
            return live;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `chaos halt`; returns the exit code.
pub fn run_halt(args: HaltArgs) -> u8 {
    let started = Instant::now();
    let state = journal::state_dir();
    let info = match halt::halt(&state, &args.reason, &halt::who("chaos halt")) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    println!("{info}");
    let running = others(&state);
    if running.is_empty() {
        println!("no registered chaos runner is running; nothing new will start");
        return exit::OK;
    }
    println!("{} runner(s) reverting and stopping", running.len());
    let stuck = wait_until_gone(&state, started + args.grace);
    for r in &stuck {
        let pid = nix::unistd::Pid::from_raw(r.pid as i32);
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            Ok(()) => println!("sent SIGTERM to pid {} ({})", r.pid, r.what),
            Err(e) => eprintln!("warning: SIGTERM to pid {} ({}): {e}", r.pid, r.what),
        }
    }
    let left = wait_until_gone(&state, started + Duration::from_secs(2).max(args.grace));
    if left.is_empty() {
        println!(
            "all {} runner(s) stopped in {:.2}s",
            running.len(),
            started.elapsed().as_secs_f64()
        );
        return exit::OK;
    }
    for r in &left {
        eprintln!("error: pid {} ({}) is still running", r.pid, r.what);
    }
    eprintln!(
        "hint: it may still be reverting; if it never exits, `kill -9` it and run \
         `chaos recover`"
    );
    exit::ENVIRONMENT
}

/// Runs `chaos resume`; returns the exit code.
pub fn run_resume(_args: ResumeArgs) -> u8 {
    match halt::resume(&journal::state_dir()) {
        Ok(Some(was)) => {
            println!("resumed; was {was}");
            exit::OK
        }
        Ok(None) => {
            println!("not halted; nothing to resume");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::ENVIRONMENT
        }
    }
}
