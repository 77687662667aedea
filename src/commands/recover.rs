//! `chaos recover`: revert whatever a killed runner left behind.

use clap::Args;
use std::path::PathBuf;

use crate::exit;
use crate::fault;
use crate::journal::Journal;

pub const AFTER_HELP: &str = "Examples:
  chaos recover
  chaos recover --journal-dir /var/lib/chaos --dry-run

Reads every journal in the directory; journals of runners still alive are
skipped, every fault a dead runner applied and did not revert is reverted
(SIGCONT for paused processes, nft tables and tc qdiscs deleted). Safe to
run any number of times. Exit codes: 0 nothing left, 5 a revert failed
(the record stays pending; fix the cause and run again).";

/// `chaos recover` arguments.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Journal directory [default: $CHAOS_STATE_DIR, /var/lib/chaos as
    /// root, else $XDG_STATE_HOME/chaos].
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
    /// Print what would be reverted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn try_run(args: RecoverArgs) -> anyhow::Result<u8> {
    let dir = args.journal_dir.unwrap_or_else(Journal::default_dir);
    let report = match fault::recover(&dir, args.dry_run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::ENVIRONMENT);
        }
    };
    let verb = if args.dry_run { "would revert" } else { "reverted" };
    for line in &report.reverted {
        println!("{verb}: {line}");
    }
    for ns in &report.probes {
        println!("deleted leftover netem probe namespace {ns}");
    }
    for path in &report.live {
        println!("skipped (runner alive): {}", path.display());
    }
    for (what, err) in &report.failed {
        eprintln!("error: could not revert {what}: {err}");
    }
    println!(
        "{} journal(s) in {}, {} record(s) {verb}, {} failed",
        report.journals.len(),
        dir.display(),
        report.reverted.len(),
        report.failed.len()
    );
    Ok(if report.failed.is_empty() { exit::OK } else { exit::ENVIRONMENT })
}

/// Runs `chaos recover`; returns the exit code.
pub fn run(args: RecoverArgs) -> u8 {
    match try_run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::ENVIRONMENT
        }
    }
}
