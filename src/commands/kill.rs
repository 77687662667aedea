//! `chaos kill`: signal a selected share of the matching processes, once,
//! journalled like every other fault (a kill has nothing to revert).

use clap::Args;
use nix::sys::signal::Signal;
use std::time::Duration;

use super::inject::{parse_signal, plan, print_dry_run, TargetArgs};
use crate::exit;
use crate::fault::{self, InfraFault};
use crate::journal::Journal;
use crate::units;

pub const AFTER_HELP: &str = "Examples:
  chaos kill --target name:demo-api --signal KILL --count 1
  chaos kill --target name:worker --percent 50% --seed 7 --dry-run
  chaos kill --target pidfile:/run/api.pid --signal TERM --grace 5s
  chaos kill --target name:payments@hosts:role=payments --inventory fleet.toml

pid 1, chaos itself, its ancestors and kernel threads are never touched:
naming them with pid:/pidfile: is refused (exit 2); name: patterns skip them.
At most --max-targets (default 3) processes are signalled; more is refused
(exit 2).
Exit codes: 0 signalled, 2 invalid input or refused target, 5 environment
(no matching process, no permission).";

/// `chaos kill` arguments.
#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Signal to send (KILL, TERM, 9, SIGINT, ...).
    #[arg(long, default_value = "KILL", value_parser = parse_signal)]
    pub signal: Signal,
    /// Send SIGTERM first, then --signal if still alive after this grace.
    #[arg(long, value_parser = units::parse_duration)]
    pub grace: Option<Duration>,
}

fn try_run(args: KillArgs) -> anyhow::Result<u8> {
    let ctx = match args.target.context("kill") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit::INVALID);
        }
    };
    let fault = InfraFault::ProcessKill(fault::ProcessKill {
        target: args.target.target.selector.clone(),
        selection: args.target.selection(),
        signal: args.signal,
        grace: args.grace,
        interval: None,
    });
    if args.target.target.is_remote() {
        let t = &args.target;
        return super::fleet::inject(&t.target, &fault, &ctx, &t.fleet, t.dry_run, None);
    }
    let (_, mut injector) = match plan(&fault, &ctx) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if args.target.dry_run {
        print_dry_run(injector.as_ref());
        return Ok(exit::OK);
    }
    let dir = args.target.journal_dir();
    let mut journal = Journal::open(&dir, &ctx.run_id)
        .map_err(anyhow::Error::from)
        .map_err(|e| e.context(format!("opening the journal in {}", dir.display())))?;
    for line in injector.describe() {
        println!("{line}");
    }
    match injector.inject(&mut journal) {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(super::inject::code_for(&e))
        }
    }
}

/// Runs `chaos kill`; returns the exit code.
pub fn run(args: KillArgs) -> u8 {
    match try_run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::ENVIRONMENT
        }
    }
}
