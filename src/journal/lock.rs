//! Machine-wide target locks: one file per target key under
//! `<state dir>/locks/`, held with an exclusive `flock` for as long as a
//! fault is applied to that target. The state directory is shared by
//! every runner on the machine whatever its journal directory, so two
//! runners with different journals still cannot fault one target, and
//! `chaos recover` can see that a target is held by a live runner before
//! it reverts a dead runner's record on it. The kernel drops a dead
//! holder's lock, so stale locks reclaim themselves.

use fs2::FileExt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::JournalError;

/// The directory of the lock files.
pub fn locks_dir(state: &Path) -> PathBuf {
    state.join("locks")
}

fn lock_path(state: &Path, key: &str) -> PathBuf {
    let safe: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    locks_dir(state).join(format!("{safe}.lock"))
}

/// A held target lock; released on drop.
#[derive(Debug)]
pub struct TargetLock {
    file: File,
}

impl TargetLock {
    /// Takes the lock for `key` or fails with [`JournalError::TargetLocked`]
    /// naming the holder's pid.
    pub fn acquire(state: &Path, key: &str) -> Result<TargetLock, JournalError> {
        let dir = locks_dir(state);
        std::fs::create_dir_all(&dir)
            .map_err(|source| JournalError::Dir { dir: dir.clone(), source })?;
        let path = lock_path(state, key);
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
            let holder = if holder.is_empty() { "unknown".to_string() } else { holder };
            return Err(JournalError::TargetLocked { key: key.to_string(), holder });
        }
        // The lock is ours (a dead holder's flock is gone): record our pid
        // for the message other runners will print.
        file.set_len(0).map_err(err)?;
        write!(file, "{}", std::process::id()).map_err(err)?;
        Ok(TargetLock { file })
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}
