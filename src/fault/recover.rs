//! `chaos recover`: replays the journals of runners that died without
//! reverting. A journal whose file lock is still held belongs to a live
//! runner and is left alone; so is a record whose target a live runner
//! holds now (its machine-wide target lock is busy): recover takes that
//! lock itself while reverting, so it never undoes a fault a live runner
//! applied since. Every revert is idempotent, so running recover twice
//! (or after a partial revert) is safe.
//!
//! Nothing stops the sweep early: a journal that cannot be read and a
//! line that does not verify are reported (with the raw text), never acted
//! upon, and the remaining journals are still recovered.

use std::path::{Path, PathBuf};

use super::plan::{revert_action, revert_commands};
use super::FaultError;
use crate::journal::{self, Damaged, JournalError, Orphan, TargetLock};

/// What `recover` did (or, in a dry run, would do).
#[derive(Debug, Default)]
pub struct RecoverReport {
    /// Journals examined.
    pub journals: Vec<PathBuf>,
    /// Journals skipped because their runner is alive.
    pub live: Vec<PathBuf>,
    /// Records reverted (or that would be), with the commands.
    pub reverted: Vec<String>,
    /// Leftover netem probe namespaces of dead processes, deleted.
    pub probes: Vec<String>,
    /// Records whose revert failed: (record, error). They stay pending.
    pub failed: Vec<(String, String)>,
    /// Records left alone because a live runner holds their target now:
    /// (record, why). They stay pending for a later recover.
    pub held: Vec<(String, String)>,
    /// `*.journal` paths that could not be read at all: (path, error).
    pub unreadable: Vec<(PathBuf, String)>,
    /// Lines that are not verified records: never acted upon.
    pub damaged: Vec<(PathBuf, Damaged)>,
}

impl RecoverReport {
    /// True when something is left that needs a person or another run:
    /// a failed revert, a held target, an unreadable journal or a damaged
    /// record.
    pub fn needs_attention(&self) -> bool {
        !(self.failed.is_empty()
            && self.held.is_empty()
            && self.unreadable.is_empty()
            && self.damaged.is_empty())
    }
}

/// Reverts every unreverted record of every dead runner in `dir`, with
/// target locks in the machine-wide state directory.
pub fn recover(dir: &Path, dry_run: bool) -> Result<RecoverReport, FaultError> {
    recover_in(dir, &journal::state_dir(), dry_run)
}

/// [`recover`] with an explicit state directory (target locks).
pub fn recover_in(
    dir: &Path,
    state: &Path,
    dry_run: bool,
) -> Result<RecoverReport, FaultError> {
    let mut report = RecoverReport::default();
    for path in journal::journal_files(dir)? {
        report.journals.push(path.clone());
        if let Err(e) = recover_journal(&path, state, dry_run, &mut report) {
            report.unreadable.push((path, e.to_string()));
        }
    }
    if !dry_run {
        report.probes = remove_dead_probes();
    }
    Ok(report)
}

/// Recovers one journal; an error means this journal could not be read
/// or written (the others go on).
fn recover_journal(
    path: &Path,
    state: &Path,
    dry_run: bool,
    report: &mut RecoverReport,
) -> Result<(), JournalError> {
    let Some(mut orphan) = Orphan::claim(path)? else {
        report.live.push(path.to_path_buf());
        return Ok(());
    };
    let contents = journal::read_journal(path)?;
    report.damaged.extend(contents.damaged.into_iter().map(|d| (path.to_path_buf(), d)));
    for p in journal::pending(&contents.entries) {
        let label = format!("{}#{}: {}", path.display(), p.id, p.fault);
        // Held while reverting: no runner can take the target meanwhile.
        let _lock = match p.lock.as_deref().map(|key| TargetLock::acquire(state, key)) {
            Some(Err(JournalError::TargetLocked { key, holder })) => {
                report.held.push((
                    label,
                    format!("target {key} is held by a live chaos runner (pid {holder})"),
                ));
                continue;
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(lock)) => Some(lock),
            None => None,
        };
        if dry_run {
            let cmds = revert_commands(&p.revert);
            report.reverted.push(if cmds.is_empty() {
                format!("{label} (nothing to undo)")
            } else {
                format!("{label}: {}", cmds.join("; "))
            });
            continue;
        }
        match revert_action(&p.revert) {
            Ok(()) => {
                orphan.mark_reverted(p.id)?;
                report.reverted.push(label);
            }
            Err(e) => report.failed.push((label, e.to_string())),
        }
    }
    Ok(())
}

/// Deletes `chaosprobe<pid>` namespaces whose creator died mid-probe.
fn remove_dead_probes() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| {
            name.strip_prefix("chaosprobe")
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|name| {
            super::cmd::Cmd::new(None, "ip", &["netns", "del", name]).run().is_ok()
        })
        .collect()
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, RevertAction};

    #[test]
    fn recover_reverts_a_dead_runners_records_once_and_skips_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = Journal::open_in(dir.path(), dir.path(), "dead").unwrap();
        // Targets that no longer exist count as reverted (idempotence).
        dead.record_apply(
            "table in a deleted netns",
            None,
            RevertAction::DeleteNftTable {
                netns: Some("chaos-gone-netns-xyz".into()),
                family: "inet".into(),
                table: "chaos_dead_0".into(),
            },
        )
        .unwrap();
        dead.record_apply(
            "pause of an exited pid",
            None,
            RevertAction::Continue {
                pid: u32::MAX - 1,
                starttime: 1,
                stopped_before: false,
            },
        )
        .unwrap();
        drop(dead);
        let mut live = Journal::open_in(dir.path(), dir.path(), "live").unwrap();
        live.record_apply(
            "live",
            None,
            RevertAction::Continue { pid: 1, starttime: 0, stopped_before: false },
        )
        .unwrap();

        let dry = recover_in(dir.path(), dir.path(), true).unwrap();
        assert_eq!(dry.reverted.len(), 2);
        let first = recover_in(dir.path(), dir.path(), false).unwrap();
        assert_eq!(first.reverted.len(), 2, "{first:?}");
        assert_eq!(first.live.len(), 1);
        assert!(first.failed.is_empty());
        let second = recover_in(dir.path(), dir.path(), false).unwrap();
        assert!(second.reverted.is_empty(), "{second:?}");
    }
}
