//! The write-ahead journal of applied faults.
//!
//! Every fault is appended here (and fsynced) *before* it is applied, with
//! everything needed to undo it from another process; each line carries a
//! checksum ([`record`]). A runner holds an exclusive `flock` on its own
//! journal file for as long as it lives, so `chaos recover` can tell a live
//! runner (lock busy) from a dead one (lock free) without trusting pids,
//! which the kernel reuses. Targets are guarded machine-wide by
//! [`lock::TargetLock`]s in the state directory.
//!
//! Directories: [`default_dir`] (journals) and [`state_dir`] (locks, the
//! halt marker, the runner registry) are resolved here and only here, so
//! every command agrees on them.

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub mod lock;
pub mod record;

pub use lock::TargetLock;
pub use record::Damaged;

/// Journals bigger than this are refused rather than read into memory (a
/// real one holds a few lines per fault).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

fn is_false(b: &bool) -> bool {
    !*b
}

/// How to undo one applied fault; serialised into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum RevertAction {
    /// Nothing can be undone (a kill); recorded for the audit trail.
    Nothing { note: String },
    /// Send SIGCONT to a process we stopped, if it is still the same one
    /// (`starttime` from /proc/PID/stat guards against pid reuse). With
    /// `stopped_before`, the process was already stopped when the pause
    /// was applied: revert leaves it stopped, as it was found.
    Continue {
        pid: u32,
        starttime: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        stopped_before: bool,
    },
    /// Delete an nftables table the tool created.
    DeleteNftTable { netns: Option<String>, family: String, table: String },
    /// Delete a root qdisc the tool added, only if it is still ours.
    DeleteQdisc { netns: Option<String>, dev: String, handle: String, kind: String },
    /// Release the `/run/netns` name a container's network namespace was
    /// given for a fault inside it (`fault::container`).
    ReleaseNetns { name: String, container: String },
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
    #[error("{path} is not a journal: {why}")]
    NotAJournal { path: PathBuf, why: String },
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
    #[error("{0}; no fault starts until `chaos resume`")]
    Halted(crate::halt::HaltInfo),
}

/// The journal directory every command uses when not given one:
/// `$CHAOS_JOURNAL_DIR`, else `$CHAOS_STATE_DIR` (the older name, still
/// honoured), else [`state_dir`]'s default.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAOS_JOURNAL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    state_dir()
}

/// `--journal-dir` if given, else [`default_dir`]: the one resolution all
/// commands share.
pub fn resolve_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(default_dir)
}

/// The machine-wide state directory (target locks, the halt marker, the
/// registry of live runners): `$CHAOS_STATE_DIR`, else `/var/lib/chaos`
/// for root, else `$XDG_STATE_HOME/chaos` (default `~/.local/state/chaos`).
/// Unlike the journal directory it is the same for every runner, whatever
/// `--journal-dir` each was given.
pub fn state_dir() -> PathBuf {
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

/// An open journal owned by one runner.
pub struct Journal {
    path: PathBuf,
    state: PathBuf,
    file: File,
    next_id: u64,
    /// Held target locks, with how many applied records use each: two
    /// faults of one run on one target share the lock, and it is released
    /// only when the last of them is reverted.
    locks: BTreeMap<String, (TargetLock, usize)>,
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
    /// Creates `<dir>/<run_id>.journal` and holds its lock until dropped;
    /// target locks go to the machine-wide [`state_dir`]. Refused while
    /// chaos is halted.
    pub fn open(dir: &Path, run_id: &str) -> Result<Self, JournalError> {
        Journal::open_in(dir, &state_dir(), run_id)
    }

    /// [`Journal::open`] with an explicit state directory.
    pub fn open_in(dir: &Path, state: &Path, run_id: &str) -> Result<Self, JournalError> {
        if !valid_run_id(run_id) {
            return Err(JournalError::RunId(run_id.to_string()));
        }
        if let Some(halt) = crate::halt::check(state) {
            return Err(JournalError::Halted(halt));
        }
        let dir_err = |source| JournalError::Dir { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(format!("{run_id}.journal"));
        let write_err = |source| JournalError::Write { path: path.clone(), source };
        let mut file = OpenOptions::new()
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
        let existing = read_journal(&path)?;
        terminate_torn_line(&mut file, &path)?;
        let next_id = existing
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Apply { id, .. } => Some(id + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let mut journal = Journal {
            path,
            state: state.to_path_buf(),
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

    /// `$CHAOS_JOURNAL_DIR`, else `$CHAOS_STATE_DIR`, else the default
    /// state directory; see [`default_dir`].
    pub fn default_dir() -> PathBuf {
        default_dir()
    }

    /// Path of this journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory this journal locks targets in.
    pub fn state(&self) -> &Path {
        &self.state
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

    /// Takes the machine-wide exclusive lock for a target key (e.g.
    /// `proc-1234`, `net-chaos-a`). Locking a key this journal holds again
    /// counts one more user; each [`Journal::unlock_target`] (or
    /// `record_reverted`) releases one.
    pub fn lock_target(&mut self, key: &str) -> Result<(), JournalError> {
        if let Some((_, users)) = self.locks.get_mut(key) {
            *users += 1;
            return Ok(());
        }
        let lock = TargetLock::acquire(&self.state, key)?;
        self.locks.insert(key.to_string(), (lock, 1));
        Ok(())
    }

    /// Releases one use of a target lock; the lock itself goes with the
    /// last (no-op when not held).
    pub fn unlock_target(&mut self, key: &str) {
        if let Some((_, users)) = self.locks.get_mut(key) {
            *users -= 1;
            if *users == 0 {
                self.locks.remove(key);
            }
        }
    }

    fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let err = |source| JournalError::Write { path: self.path.clone(), source };
        let line = record::encode(entry);
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Ends a torn last line (a write cut short by a crash) with a newline, so
/// the next record starts on a line of its own instead of being glued to
/// the fragment and lost with it.
fn terminate_torn_line(file: &mut File, path: &Path) -> Result<(), JournalError> {
    let err = |source| JournalError::Write { path: path.to_path_buf(), source };
    let len = file.metadata().map_err(err)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
    file.read_exact(&mut last).map_err(err)?;
    if last[0] != b'\n' {
        // Append mode: the write lands at the end whatever the position.
        file.write_all(b"\n").map_err(err)?;
        file.sync_data().map_err(err)?;
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (after symlinks) of a
/// sane size: a directory, a FIFO or a dangling link named `*.journal` is
/// an error for that file only.
fn open_regular(path: &Path, write: bool) -> Result<File, JournalError> {
    let meta = std::fs::metadata(path)
        .map_err(|source| JournalError::Read { path: path.to_path_buf(), source })?;
    if !meta.is_file() {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_JOURNAL_BYTES {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            why: format!("{} bytes, more than any journal holds", meta.len()),
        });
    }
    OpenOptions::new()
        .read(true)
        .append(write)
        .open(path)
        .map_err(|source| JournalError::Read { path: path.to_path_buf(), source })
}

/// Reads and verifies a whole journal file. Damaged lines are returned,
/// never dropped silently; an error means the file as a whole could not
/// be read.
pub fn read_journal(path: &Path) -> Result<record::Contents, JournalError> {
    let file = open_regular(path, false)?;
    let mut bytes = Vec::new();
    file.take(MAX_JOURNAL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| JournalError::Read { path: path.to_path_buf(), source })?;
    Ok(record::decode(&bytes))
}

/// Reads every verified entry of a journal file (damaged lines skipped;
/// use [`read_journal`] to see them).
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    Ok(read_journal(path)?.entries)
}

/// One applied record that was never marked reverted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: u64,
    pub fault: String,
    pub lock: Option<String>,
    pub revert: RevertAction,
}

/// Applied records of a journal that were never marked reverted.
pub fn pending(entries: &[Entry]) -> Vec<Pending> {
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
                Some(Pending {
                    id: *id,
                    fault: fault.clone(),
                    lock: lock.clone(),
                    revert: revert.clone(),
                })
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
    terminated: bool,
}

impl Orphan {
    /// Opens `path` for recovery; `Ok(None)` when its runner is still
    /// alive. Anything but a regular file is an error for this path only.
    pub fn claim(path: &Path) -> Result<Option<Orphan>, JournalError> {
        let file = open_regular(path, true)?;
        // A live runner holds its lock for its whole life; a lock that
        // goes within 100 ms was a child of *this* process that had
        // inherited our descriptor (and so the flock) between its fork
        // and exec — not a runner. Ask a few times before calling it live.
        for attempt in 0..5 {
            if file.try_lock_exclusive().is_ok() {
                return Ok(Some(Orphan {
                    path: path.to_path_buf(),
                    file,
                    terminated: false,
                }));
            }
            if attempt < 4 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Ok(None)
    }

    /// Marks a record reverted (fsynced), after ending a torn last line.
    pub fn mark_reverted(&mut self, id: u64) -> Result<(), JournalError> {
        if !self.terminated {
            terminate_torn_line(&mut self.file, &self.path)?;
            self.terminated = true;
        }
        let err = |source| JournalError::Write { path: self.path.clone(), source };
        let line = record::encode(&Entry::Reverted { id });
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Every `*.journal` entry in `dir` (none when the directory is missing);
/// whether each is a readable file is for the caller to find out.
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
/// gone (the lock is free), every applied fault is marked reverted and no
/// line is damaged. A journal with anything pending, damaged or
/// unreadable, or whose runner is alive, is never touched, whatever its
/// age — it is the only record of what to undo.
pub fn prune(
    dir: &Path,
    older_than: std::time::Duration,
    now: std::time::SystemTime,
    dry_run: bool,
) -> Result<Vec<PathBuf>, JournalError> {
    let mut pruned = Vec::new();
    for path in journal_files(dir)? {
        // Held until the file is gone, so no `recover` replays it meanwhile.
        let Ok(Some(_claim)) = Orphan::claim(&path) else { continue };
        let Ok(contents) = read_journal(&path) else { continue };
        if !contents.damaged.is_empty() || !pending(&contents.entries).is_empty() {
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

    /// A journal whose target locks live in the same temporary directory,
    /// away from the machine-wide state of other tests.
    fn open(dir: &Path, run_id: &str) -> Result<Journal, JournalError> {
        Journal::open_in(dir, dir, run_id)
    }

    #[test]
    fn prune_removes_only_old_settled_journals_of_dead_runners() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let revert = || RevertAction::Nothing { note: "kill".into() };
        // Settled: applied and reverted, runner gone.
        let mut settled = open(dir.path(), "settled").unwrap();
        let id = settled.record_apply("kill pid 1", None, revert()).unwrap();
        settled.record_reverted(id, None).unwrap();
        let settled_path = settled.path().to_path_buf();
        drop(settled);
        // Pending: applied, never reverted, runner gone.
        let mut pending_j = open(dir.path(), "pending").unwrap();
        pending_j.record_apply("pause pid 2", None, revert()).unwrap();
        let pending_path = pending_j.path().to_path_buf();
        drop(pending_j);
        // Alive: settled but its runner still holds the lock.
        let alive = open(dir.path(), "alive").unwrap();

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
        let mut j = open(dir.path(), "run-1").unwrap();
        let a = j
            .record_apply(
                "pause pid 7",
                None,
                RevertAction::Continue { pid: 7, starttime: 1, stopped_before: false },
            )
            .unwrap();
        let b = j
            .record_apply("kill pid 8", None, RevertAction::Nothing { note: "k".into() })
            .unwrap();
        j.record_reverted(b, None).unwrap();
        let pend = pending(&read_entries(j.path()).unwrap());
        assert_eq!(pend.len(), 1);
        assert_eq!(pend[0].id, a);
    }

    #[test]
    fn a_live_journal_cannot_be_claimed_for_recovery_but_a_closed_one_can() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), "run-2").unwrap();
        let path = j.path().to_path_buf();
        assert!(Orphan::claim(&path).unwrap().is_none());
        drop(j);
        assert!(Orphan::claim(&path).unwrap().is_some());
    }

    #[test]
    fn a_target_lock_is_exclusive_between_journals_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), "a").unwrap();
        let mut b = open(dir.path(), "b").unwrap();
        a.lock_target("net-x").unwrap();
        let err = b.lock_target("net-x").unwrap_err();
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
        drop(a);
        b.lock_target("net-x").unwrap();
    }

    #[test]
    fn a_target_lock_holds_across_journal_directories_of_one_state_dir() {
        let state = tempfile::tempdir().unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Journal::open_in(d1.path(), state.path(), "a").unwrap();
        let mut b = Journal::open_in(d2.path(), state.path(), "b").unwrap();
        a.lock_target("net-y").unwrap();
        assert!(matches!(b.lock_target("net-y"), Err(JournalError::TargetLocked { .. })));
    }

    #[test]
    fn torn_last_line_is_terminated_before_the_first_recover_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = open(dir.path(), "torn").unwrap();
        let id = j
            .record_apply("kill", None, RevertAction::Nothing { note: "k".into() })
            .unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        // A crash in the middle of writing the next record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"type\":\"apply\",\"id\":1,\"fau").unwrap();
        drop(f);
        let mut orphan = Orphan::claim(&path).unwrap().unwrap();
        orphan.mark_reverted(id).unwrap();
        drop(orphan);
        let contents = read_journal(&path).unwrap();
        assert!(pending(&contents.entries).is_empty(), "{:?}", contents.entries);
        assert_eq!(contents.damaged.len(), 1, "only the fragment is damaged");
    }

    #[test]
    fn a_lock_shared_by_two_faults_of_one_run_is_held_until_both_are_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), "a").unwrap();
        let mut b = open(dir.path(), "b").unwrap();
        a.lock_target("proc-9").unwrap();
        a.lock_target("proc-9").unwrap();
        a.unlock_target("proc-9");
        assert!(b.lock_target("proc-9").is_err(), "one user is left");
        a.unlock_target("proc-9");
        b.lock_target("proc-9").unwrap();
    }

    #[test]
    fn refuses_a_run_id_that_could_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(dir.path(), "../x").is_err());
    }
}
