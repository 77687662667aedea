//! `chaos recover`: revert whatever a killed runner left behind.

use clap::Args;
use std::path::PathBuf;

use crate::exit;
use crate::fault;
use crate::journal;

pub const AFTER_HELP: &str = "Examples:
  chaos recover
  chaos recover --journal-dir /var/lib/chaos --dry-run
  chaos recover --prune-older-than 30d     (e.g. from a daily cron job)
  chaos recover --inventory fleet.toml --hosts hosts:region=us-east

Reads every journal in the directory; journals of runners still alive are
skipped, every fault a dead runner applied and did not revert is reverted
(SIGCONT for paused processes, nft tables and tc qdiscs deleted). A record
whose target a live runner holds now is left for later. A journal that
cannot be read, or a line that fails its checksum, is reported with its
raw text and never acted upon; the other journals are still recovered.
Safe to run any number of times. Exit codes: 0 nothing left, 5 something
needs attention (a revert failed, a target is held by a live runner, a
journal or record is damaged; pending records stay pending: fix the cause
and run again).

Journals are kept after a run as its audit trail. --prune-older-than AGE
deletes, after recovering, the settled ones (runner gone, every fault
reverted) last written more than AGE ago (\"30d\", \"12h\"); a journal
with anything still pending is never deleted.";

/// `chaos recover` arguments.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Journal directory [default: $CHAOS_JOURNAL_DIR, else
    /// $CHAOS_STATE_DIR, else /var/lib/chaos as root, else
    /// $XDG_STATE_HOME/chaos].
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
    /// Print what would be reverted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete settled journals older than AGE (e.g. 30d, 12h); with
    /// --dry-run, list them.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub prune_older_than: Option<std::time::Duration>,
    /// Recover on the hosts of this inventory instead (runs `chaos
    /// recover` on each over SSH, in parallel).
    #[arg(long, env = "CHAOS_INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// With --inventory: only these hosts (host:NAME, hosts:KEY=VALUE,
    /// or * for all, the default).
    #[arg(long, value_name = "SELECTOR", requires = "inventory")]
    pub hosts: Option<String>,
}

/// `"30d"` (days, up to ten years) or any duration `chaos` accepts.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().strip_suffix('d') {
        Some(days) => match days.parse::<u64>() {
            Ok(d) if (1..=3650).contains(&d) => {
                Ok(std::time::Duration::from_secs(d * 86_400))
            }
            _ => Err(format!(
                "expected a number of days from 1 to 3650, like \"30d\", found {text:?}"
            )),
        },
        None => crate::units::parse_duration(text),
    }
}

fn try_run(args: RecoverArgs) -> anyhow::Result<u8> {
    if let Some(inventory) = &args.inventory {
        return Ok(super::fleet::recover(inventory, args.hosts.as_deref(), args.dry_run));
    }
    let dir = journal::resolve_dir(args.journal_dir.as_deref());
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
    for (what, why) in &report.held {
        println!(
            "skipped (target held): {what}: {why}; run recover again once it is free"
        );
    }
    for (what, err) in &report.failed {
        eprintln!("error: could not revert {what}: {err}");
    }
    for (path, err) in &report.unreadable {
        eprintln!("error: journal {} could not be read: {err}", path.display());
    }
    for (path, d) in &report.damaged {
        eprintln!(
            "error: {}:{}: damaged record, not acted upon ({}):\n  {}",
            path.display(),
            d.line,
            d.why,
            d.raw
        );
    }
    if !report.damaged.is_empty() || !report.unreadable.is_empty() {
        eprintln!(
            "hint: a damaged record may be a fault that is still applied: check the \
             target by hand (`nft list tables`, `tc qdisc show`, `ps -o stat`), undo \
             it if needed, then move the journal out of the directory"
        );
    }
    println!(
        "{} journal(s) in {}, {} record(s) {verb}, {} failed, {} held by live runners, \
         {} damaged, {} unreadable",
        report.journals.len(),
        dir.display(),
        report.reverted.len(),
        report.failed.len(),
        report.held.len(),
        report.damaged.len(),
        report.unreadable.len()
    );
    if let Some(age) = args.prune_older_than {
        let pruned =
            match journal::prune(&dir, age, std::time::SystemTime::now(), args.dry_run) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: pruning journals: {e}");
                    return Ok(exit::ENVIRONMENT);
                }
            };
        let verb = if args.dry_run { "would prune" } else { "pruned" };
        for path in &pruned {
            println!("{verb}: {}", path.display());
        }
        println!("{} settled journal(s) {verb}", pruned.len());
    }
    Ok(if report.needs_attention() { exit::ENVIRONMENT } else { exit::OK })
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

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_take_days_or_any_duration() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_age("0d").is_err());
        assert!(parse_age("xd").is_err());
        assert!(parse_age("3651d").is_err());
        assert!(parse_age("5").is_err(), "a bare number has no unit");
    }
}
