//! `chaos recover`: replays the journals of runners that died without
//! reverting. A journal whose file lock is still held belongs to a live
//! runner and is left alone; every revert is idempotent, so running
//! recover twice (or after a partial revert) is safe.

use std::path::{Path, PathBuf};

use super::plan::{revert_action, revert_commands};
use super::FaultError;
use crate::journal::{self, Orphan};

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
}

/// Reverts every unreverted record of every dead runner in `dir`.
pub fn recover(dir: &Path, dry_run: bool) -> Result<RecoverReport, FaultError> {
    let mut report = RecoverReport::default();
    for path in journal::journal_files(dir)? {
        report.journals.push(path.clone());
        let Some(mut orphan) = Orphan::claim(&path)? else {
            report.live.push(path);
            continue;
        };
        let entries = journal::read_entries(&path)?;
        for (id, what, _lock, action) in journal::pending(&entries) {
            let label = format!("{}#{id}: {what}", path.display());
            if dry_run {
                let cmds = revert_commands(&action);
                report.reverted.push(if cmds.is_empty() {
                    format!("{label} (nothing to undo)")
                } else {
                    format!("{label}: {}", cmds.join("; "))
                });
                continue;
            }
            match revert_action(&action) {
                Ok(()) => {
                    orphan.mark_reverted(id)?;
                    report.reverted.push(label);
                }
                Err(e) => report.failed.push((label, e.to_string())),
            }
        }
    }
    if !dry_run {
        report.probes = remove_dead_probes();
    }
    Ok(report)
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
mod tests {
    use super::*;
    use crate::journal::{Journal, RevertAction};

    #[test]
    fn recover_reverts_a_dead_runners_records_once_and_skips_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = Journal::open(dir.path(), "dead").unwrap();
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
            RevertAction::Continue { pid: u32::MAX - 1, starttime: 1 },
        )
        .unwrap();
        drop(dead);
        let mut live = Journal::open(dir.path(), "live").unwrap();
        live.record_apply("live", None, RevertAction::Continue { pid: 1, starttime: 0 })
            .unwrap();

        let dry = recover(dir.path(), true).unwrap();
        assert_eq!(dry.reverted.len(), 2);
        let first = recover(dir.path(), false).unwrap();
        assert_eq!(first.reverted.len(), 2, "{first:?}");
        assert_eq!(first.live.len(), 1);
        assert!(first.failed.is_empty());
        let second = recover(dir.path(), false).unwrap();
        assert!(second.reverted.is_empty(), "{second:?}");
    }
}
