//! The emergency stop: a marker file `halt` in the machine-wide state
//! directory ([`crate::journal::state_dir`]). While it exists every chaos
//! process on the machine reverts what it applied and stops, and nothing
//! new starts, until `chaos resume` removes it.
//!
//! The marker is the whole protocol, so anything can take part by polling
//! [`check`]: the runner looks every tick (250 ms), `chaos inject` in its
//! wait loop, the daemon before every strike and on every `/metrics`
//! scrape, and [`crate::journal::Journal::open`] refuses to open a journal
//! (so no fault can start). It lives under `/var/lib/chaos` by default, so
//! a halt survives a reboot: an emergency stop is lifted by a person.
//!
//! As a backstop for a runner too stuck to poll, processes that hold
//! faults register here ([`register`]: an `flock`ed file under `runners/`)
//! and `chaos halt` sends SIGTERM to those still alive after a grace.
//!
//! [`check`] is a stable, small API: other components (the fleet agent)
//! poll it the same way.

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often long waits look at the marker.
pub const POLL: Duration = Duration::from_millis(250);
/// The marker's file name in the state directory.
pub const MARKER: &str = "halt";
/// Markers bigger than this are not parsed (still a halt).
const MAX_MARKER_BYTES: u64 = 64 * 1024;

/// Who halted, why and when (the marker's content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltInfo {
    /// Free text from `chaos halt --reason`.
    pub reason: String,
    /// `user@host (what)`.
    pub by: String,
    /// RFC 3339 time the halt was set.
    pub at: String,
}

impl std::fmt::Display for HaltInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "halted: {} (by {} at {})", self.reason, self.by, self.at)
    }
}

/// Errors of setting or lifting a halt.
#[derive(Debug, thiserror::Error)]
pub enum HaltError {
    #[error("cannot write the halt marker {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot remove the halt marker {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cannot register in {path}: {source}")]
    Register { path: PathBuf, source: std::io::Error },
}

/// Path of the marker in `state`.
pub fn marker_path(state: &Path) -> PathBuf {
    state.join(MARKER)
}

/// The halt in force in `state`, if any. Fails safe: a marker that
/// exists but cannot be read or parsed still means halted.
pub fn check(state: &Path) -> Option<HaltInfo> {
    let path = marker_path(state);
    let unreadable = |why: String| HaltInfo {
        reason: format!("(halt marker {} unreadable: {why})", path.display()),
        by: "unknown".into(),
        at: "unknown".into(),
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(unreadable(e.to_string())),
    };
    let mut text = String::new();
    if let Err(e) = file.take(MAX_MARKER_BYTES).read_to_string(&mut text) {
        return Some(unreadable(e.to_string()));
    }
    Some(serde_json::from_str(&text).unwrap_or_else(|e| unreadable(e.to_string())))
}

/// `check` on the default state directory.
pub fn check_default() -> Option<HaltInfo> {
    check(&crate::journal::state_dir())
}

/// `user@host (what)` for the marker.
pub fn who(what: &str) -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host} ({what})")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// Sets the halt (replacing an earlier one): written to a temporary file
/// and renamed, so a reader sees the old marker, the new one or none,
/// never half of one.
pub fn halt(state: &Path, reason: &str, by: &str) -> Result<HaltInfo, HaltError> {
    let path = marker_path(state);
    let err = |source| HaltError::Write { path: path.clone(), source };
    std::fs::create_dir_all(state).map_err(err)?;
    let info =
        HaltInfo { reason: reason.to_string(), by: by.to_string(), at: now_rfc3339() };
    let mut tmp = tempfile::NamedTempFile::new_in(state).map_err(err)?;
    let json = serde_json::to_string(&info).expect("halt info serialises");
    tmp.write_all(json.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    if let Ok(dir) = File::open(state) {
        let _ = dir.sync_all();
    }
    Ok(info)
}

/// Lifts the halt; returns the one that was in force, if any.
pub fn resume(state: &Path) -> Result<Option<HaltInfo>, HaltError> {
    let before = check(state);
    let path = marker_path(state);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(before),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HaltError::Remove { path, source }),
    }
}

fn runners_dir(state: &Path) -> PathBuf {
    state.join("runners")
}

/// A live process's entry in the runner registry; removed on drop (and
/// by the kernel's release of its `flock` if the process dies).
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
    _file: File,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Registers this process (`what`, e.g. "chaos run") as one `chaos halt`
/// may SIGTERM if it does not stop on its own.
pub fn register(state: &Path, what: &str) -> Result<Registration, HaltError> {
    let dir = runners_dir(state);
    // Sweeps the entries SIGKILLed processes left behind.
    let _ = live_runners(state);
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!("{pid}-{nanos}.runner"));
    let tmp = dir.join(format!("{pid}-{nanos}.tmp"));
    let err = |source| HaltError::Register { path: path.clone(), source };
    std::fs::create_dir_all(&dir).map_err(err)?;
    // Locked before it gets its visible name, so `live_runners` never
    // mistakes it for the entry of a dead process.
    let mut file =
        OpenOptions::new().create_new(true).write(true).open(&tmp).map_err(err)?;
    file.lock_exclusive().map_err(err)?;
    writeln!(file, "{pid} {what}").map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(Registration { path, _file: file })
}

/// [`register`] in the default state directory; a failure (e.g. no write
/// access) is logged, not fatal: the process still polls the marker.
pub fn register_default(what: &str) -> Option<Registration> {
    register(&crate::journal::state_dir(), what)
        .map_err(|e| tracing::warn!(error = %e, "not registered for `chaos halt`"))
        .ok()
}

/// A registered process that is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRunner {
    pub pid: u32,
    pub what: String,
}

/// Every registered process still alive (its lock is held); entries of
/// dead ones are removed on the way.
pub fn live_runners(state: &Path) -> Vec<LiveRunner> {
    let Ok(entries) = std::fs::read_dir(runners_dir(state)) else { return Vec::new() };
    let mut out = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_none_or(|x| x != "runner") {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        if FileExt::try_lock_shared(&file).is_ok() {
            // Nobody holds it: its process is gone.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let mut text = String::new();
        if file.take(256).read_to_string(&mut text).is_err() {
            continue;
        }
        let mut words = text.trim().splitn(2, ' ');
        let Some(pid) = words.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        out.push(LiveRunner { pid, what: words.next().unwrap_or("").to_string() });
    }
    out.sort_by_key(|r| r.pid);
    out
}

/// Why a [`sleep`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The whole duration passed.
    Elapsed,
    /// SIGINT or SIGTERM arrived.
    Interrupted,
    /// A halt was set.
    Halted(HaltInfo),
}

/// Sleeps up to `d`, waking early on a signal or a halt in `state`
/// (looked at every [`POLL`]).
pub fn sleep(interrupt: &crate::signals::Interrupt, d: Duration, state: &Path) -> Wake {
    let deadline = std::time::Instant::now() + d;
    loop {
        if let Some(h) = check(state) {
            return Wake::Halted(h);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Wake::Elapsed;
        }
        if interrupt.sleep(left.min(POLL)) {
            return Wake::Interrupted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_is_seen_until_resumed_and_an_unreadable_marker_still_halts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()), None);
        let info = halt(dir.path(), "db failover", "tester").unwrap();
        assert_eq!(check(dir.path()), Some(info.clone()));
        assert!(info.to_string().starts_with("halted: db failover (by tester at "));
        assert_eq!(resume(dir.path()).unwrap(), Some(info));
        assert_eq!(check(dir.path()), None);
        assert_eq!(resume(dir.path()).unwrap(), None);
        std::fs::write(marker_path(dir.path()), b"\xff garbage").unwrap();
        assert!(check(dir.path()).is_some_and(|h| h.reason.contains("unreadable")));
    }

    #[test]
    fn a_registration_is_live_while_held_and_gone_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let r = register(dir.path(), "chaos test").unwrap();
        let live = live_runners(dir.path());
        assert_eq!(
            live,
            vec![LiveRunner { pid: std::process::id(), what: "chaos test".into() }]
        );
        drop(r);
        assert!(live_runners(dir.path()).is_empty());
    }

    #[test]
    fn a_halt_refuses_to_open_a_journal() {
        let dir = tempfile::tempdir().unwrap();
        halt(dir.path(), "freeze", "tester").unwrap();
        let err =
            crate::journal::Journal::open_in(dir.path(), dir.path(), "r").unwrap_err();
        assert!(err.to_string().contains("halted: freeze"), "{err}");
    }
}
