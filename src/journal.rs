//! The write-ahead journal of applied faults and the per-target locks.
//!
//! Every fault is appended here (and fsynced) *before* it is applied, with
//! everything needed to undo it from another process. A runner holds an
//! exclusive `flock` on its own journal file for as long as it lives, so
//! `chaos recover` can tell a live runner (lock busy) from a dead one (lock
//! free) without trusting pids, which the kernel reuses. The same trick
//! guards targets: one lock file per target key under `locks/`; the kernel
//! drops a dead holder's lock, so stale locks reclaim themselves.

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// How to undo one applied fault; serialised into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum RevertAction {
    /// Nothing can be undone (a kill); recorded for the audit trail.
    Nothing { note: String },
    /// Send SIGCONT to a process we stopped, if it is still the same one
    /// (`starttime` from /proc/PID/stat guards against pid reuse).
    Continue { pid: u32, starttime: u64 },
    /// Delete an nftables table the tool created.
    DeleteNftTable { netns: Option<String>, family: String, table: String },
    /// Delete a root qdisc the tool added, only if it is still ours.
    DeleteQdisc { netns: Option<String>, dev: String, handle: String, kind: String },
}

/// One line of a journal file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    /// First line: who wrote this journal.
    Run { run_id: String, pid: u32, started_unix: u64 },
    /// A fault about to be applied (written before acting).
    Apply { id: u64, fault: String, lock: Option<String>, revert: RevertAction },
    /// The fault with this id has been reverted (or needs no revert).
    Reverted { id: u64 },
}

/// Errors of the journal and its locks.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use journal directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot write journal {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read journal {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("journal {path} is locked by a running chaos process (pid {holder})")]
    RunLocked { path: PathBuf, holder: String },
    #[error(
        "target {key} is already under a fault by another chaos runner (pid {holder}); \
         wait for it to finish or run `chaos recover` if it crashed"
    )]
    TargetLocked { key: String, holder: String },
    #[error(
        "run id {0:?} is invalid: use letters, digits, '-' and '_' (1-64 characters)"
    )]
    RunId(String),
}

/// An open journal owned by one runner.
pub struct Journal {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    next_id: u64,
    locks: BTreeMap<String, File>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn valid_run_id(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 64
        && run_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Journal {
    /// Creates `<dir>/<run_id>.journal` and holds its lock until dropped.
    pub fn open(dir: &Path, run_id: &str) -> Result<Self, JournalError> {
        if !valid_run_id(run_id) {
            return Err(JournalError::RunId(run_id.to_string()));
        }
        let dir_err = |source| JournalError::Dir { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir.join("locks")).map_err(dir_err)?;
        let path = dir.join(format!("{run_id}.journal"));
        let write_err = |source| JournalError::Write { path: path.clone(), source };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(write_err)?;
        if file.try_lock_exclusive().is_err() {
            return Err(JournalError::RunLocked {
                path: path.clone(),
                holder: "unknown".to_string(),
            });
        }
        let existing = read_entries(&path)?;
        let next_id = existing
            .iter()
            .filter_map(|e| match e {
                Entry::Apply { id, .. } => Some(id + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let mut journal = Journal {
            path,
            dir: dir.to_path_buf(),
            file,
            next_id,
            locks: BTreeMap::new(),
        };
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        journal.append(&Entry::Run {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            started_unix,
        })?;
        Ok(journal)
    }

    /// `$CHAOS_STATE_DIR`, else `/var/lib/chaos` for root, else
    /// `$XDG_STATE_HOME/chaos` (default `~/.local/state/chaos`).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("CHAOS_STATE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/chaos");
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("chaos");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".local/state/chaos")
    }

    /// Path of this journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an `apply` record and fsyncs it; returns its id. Call this
    /// before touching anything.
    pub fn record_apply(
        &mut self,
        fault: &str,
        lock: Option<&str>,
        revert: RevertAction,
    ) -> Result<u64, JournalError> {
        let id = self.next_id;
        self.next_id += 1;
        self.append(&Entry::Apply {
            id,
            fault: fault.to_string(),
            lock: lock.map(str::to_string),
            revert,
        })?;
        Ok(id)
    }

    /// Marks a record reverted (fsynced) and releases its target lock.
    pub fn record_reverted(
        &mut self,
        id: u64,
        lock: Option<&str>,
    ) -> Result<(), JournalError> {
        self.append(&Entry::Reverted { id })?;
        if let Some(key) = lock {
            self.unlock_target(key);
        }
        Ok(())
    }

    /// Takes the exclusive lock for a target key (e.g. `proc-1234`,
    /// `net-chaos-a`). Re-locking a key this journal holds is a no-op.
    pub fn lock_target(&mut self, key: &str) -> Result<(), JournalError> {
        if self.locks.contains_key(key) {
            return Ok(());
        }
        let safe: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        let path = self.dir.join("locks").join(format!("{safe}.lock"));
        let err = |source| JournalError::Write { path: path.clone(), source };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err)?;
        if file.try_lock_exclusive().is_err() {
            let holder = std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            return Err(JournalError::TargetLocked { key: key.to_string(), holder });
        }
        // The lock is ours (a dead holder's flock is gone): record our pid
        // for the error message other runners will print.
        file.set_len(0).map_err(err)?;
        write!(file, "{}", std::process::id()).map_err(err)?;
        self.locks.insert(key.to_string(), file);
        Ok(())
    }

    /// Releases a target lock (no-op when not held).
    pub fn unlock_target(&mut self, key: &str) {
        if let Some(file) = self.locks.remove(key) {
            let _ = file.set_len(0);
            let _ = FileExt::unlock(&file);
        }
    }

    fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let err = |source| JournalError::Write { path: self.path.clone(), source };
        let mut line = serde_json::to_string(entry).expect("journal entries serialise");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Reads every entry of a journal file; a torn last line (crash during
/// write) is ignored, since its fault was never applied.
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let err = |source| JournalError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(err)?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(err)?;
        if let Ok(entry) = serde_json::from_str::<Entry>(&line) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Applied records of a journal that were never marked reverted.
pub fn pending(entries: &[Entry]) -> Vec<(u64, String, Option<String>, RevertAction)> {
    let done: BTreeSet<u64> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Reverted { id } => Some(*id),
            _ => None,
        })
        .collect();
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Apply { id, fault, lock, revert } if !done.contains(id) => {
                Some((*id, fault.clone(), lock.clone(), revert.clone()))
            }
            _ => None,
        })
        .collect()
}

/// A journal file of a dead runner, opened for recovery: holds the file
/// lock so a second `recover` cannot replay it concurrently.
pub struct Orphan {
    pub path: PathBuf,
    file: File,
}

impl Orphan {
    /// Opens `path` for recovery; `Ok(None)` when its runner is still alive.
    pub fn claim(path: &Path) -> Result<Option<Orphan>, JournalError> {
        let err = |source| JournalError::Write { path: path.to_path_buf(), source };
        let file = OpenOptions::new().append(true).read(true).open(path).map_err(err)?;
        if file.try_lock_exclusive().is_err() {
            return Ok(None);
        }
        Ok(Some(Orphan { path: path.to_path_buf(), file }))
    }

    /// Marks a record reverted (fsynced).
    pub fn mark_reverted(&mut self, id: u64) -> Result<(), JournalError> {
        let err = |source| JournalError::Write { path: self.path.clone(), source };
        let mut line = serde_json::to_string(&Entry::Reverted { id })
            .expect("journal entries serialise");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Every `*.journal` file in `dir` (none when the directory is missing).
pub fn journal_files(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JournalError::Dir { dir: dir.to_path_buf(), source }),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes (or, with `dry_run`, only lists) the *settled* journals in
/// `dir` last written more than `older_than` before `now`: their runner is
/// gone (the lock is free) and every applied fault is marked reverted. A
/// journal with anything pending, or whose runner is alive, is never
/// touched, whatever its age — it is the only record of what to undo.
pub fn prune(
    dir: &Path,
    older_than: std::time::Duration,
    now: std::time::SystemTime,
    dry_run: bool,
) -> Result<Vec<PathBuf>, JournalError> {
    let mut pruned = Vec::new();
    for path in journal_files(dir)? {
        // Held until the file is gone, so no `recover` replays it meanwhile.
        let Some(_claim) = Orphan::claim(&path)? else { continue };
        if !pending(&read_entries(&path)?).is_empty() {
            continue;
        }
        let read_err = |source| JournalError::Read { path: path.clone(), source };
        let modified =
            std::fs::metadata(&path).and_then(|m| m.modified()).map_err(read_err)?;
        let age = now.duration_since(modified).unwrap_or_default();
        if age < older_than {
            continue;
        }
        if !dry_run {
            std::fs::remove_file(&path)
                .map_err(|source| JournalError::Write { path: path.clone(), source })?;
        }
        pruned.push(path);
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_old_settled_journals_of_dead_runners() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let revert = || RevertAction::Nothing { note: "kill".into() };
        // Settled: applied and reverted, runner gone.
        let mut settled = Journal::open(dir.path(), "settled").unwrap();
        let id = settled.record_apply("kill pid 1", None, revert()).unwrap();
        settled.record_reverted(id, None).unwrap();
        let settled_path = settled.path().to_path_buf();
        drop(settled);
        // Pending: applied, never reverted, runner gone.
        let mut pending_j = Journal::open(dir.path(), "pending").unwrap();
        pending_j.record_apply("pause pid 2", None, revert()).unwrap();
        let pending_path = pending_j.path().to_path_buf();
        drop(pending_j);
        // Alive: settled but its runner still holds the lock.
        let alive = Journal::open(dir.path(), "alive").unwrap();

        let later = SystemTime::now() + Duration::from_secs(40 * 86_400);
        let day30 = Duration::from_secs(30 * 86_400);
        // Too young: nothing goes.
        assert!(prune(dir.path(), day30, SystemTime::now(), false).unwrap().is_empty());
        // Dry run lists without deleting.
        assert_eq!(
            prune(dir.path(), day30, later, true).unwrap(),
            vec![settled_path.clone()]
        );
        assert!(settled_path.exists());
        assert_eq!(
            prune(dir.path(), day30, later, false).unwrap(),
            vec![settled_path.clone()]
        );
        assert!(!settled_path.exists());
        assert!(pending_path.exists(), "a pending journal is never pruned");
        assert!(alive.path().exists(), "a live runner's journal is never pruned");
    }

    #[test]
    fn an_applied_record_stays_pending_until_marked_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "run-1").unwrap();
        let a = j
            .record_apply(
                "pause pid 7",
                None,
                RevertAction::Continue { pid: 7, starttime: 1 },
            )
            .unwrap();
        let b = j
            .record_apply("kill pid 8", None, RevertAction::Nothing { note: "k".into() })
            .unwrap();
        j.record_reverted(b, None).unwrap();
        let pend = pending(&read_entries(j.path()).unwrap());
        assert_eq!(pend.len(), 1);
        assert_eq!(pend[0].0, a);
    }

    #[test]
    fn a_live_journal_cannot_be_claimed_for_recovery_but_a_closed_one_can() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "run-2").unwrap();
        let path = j.path().to_path_buf();
        assert!(Orphan::claim(&path).unwrap().is_none());
        drop(j);
        assert!(Orphan::claim(&path).unwrap().is_some());
    }

    #[test]
    fn a_target_lock_is_exclusive_between_journals_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Journal::open(dir.path(), "a").unwrap();
        let mut b = Journal::open(dir.path(), "b").unwrap();
        a.lock_target("net-x").unwrap();
        let err = b.lock_target("net-x").unwrap_err();
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
        drop(a);
        b.lock_target("net-x").unwrap();
    }

    #[test]
    fn refuses_a_run_id_that_could_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::open(dir.path(), "../x").is_err());
    }
}
