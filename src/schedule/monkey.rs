//! Chaos Monkey strikes: pick up to `max_targets` random processes among
//! the entry's selectors and signal them. Resolution scans `/proc` (name
//! selectors match the process name or its full command line), and never
//! selects pid 1 or the daemon itself, whatever the selector says.

use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::config::MonkeySpec;
use crate::target::TargetSelector;

/// A strike that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum MonkeyError {
    /// The signal name is not one nix knows.
    #[error("unknown signal {0}")]
    Signal(String),
    /// A pidfile could not be read or parsed.
    #[error("pidfile {path}: {detail}")]
    Pidfile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A name selector is not a valid regex.
    #[error("selector {selector}: {detail}")]
    Selector {
        /// The selector.
        selector: String,
        /// The regex error.
        detail: String,
    },
    /// Sending the signal failed (permission, or the process vanished).
    #[error("kill -{signal} {pid} ({name}) failed: {source}")]
    Kill {
        /// Signal name.
        signal: String,
        /// Target pid.
        pid: u32,
        /// Its process name.
        name: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// One signalled process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Victim {
    /// Process id.
    pub pid: u32,
    /// Process name (`/proc/PID/comm`).
    pub name: String,
}

/// What a strike did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Strike {
    /// Signal sent.
    pub signal: String,
    /// How many processes matched the selectors.
    pub candidates: usize,
    /// Who got the signal.
    pub victims: Vec<Victim>,
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').replace('\0', " "))
        .unwrap_or_default()
}

/// True for a process that is not a zombie or already stopped by someone.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .map(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
        .unwrap_or(false)
}

/// Every live pid matched by `sels`, sorted, without pid 1 and ourselves.
pub fn resolve(sels: &[TargetSelector]) -> Result<Vec<Victim>, MonkeyError> {
    let me = std::process::id();
    let mut pids = std::collections::BTreeSet::new();
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
        })
        .unwrap_or_default();
    for sel in sels {
        match sel {
            TargetSelector::Pid(p) => {
                pids.insert(*p);
            }
            TargetSelector::Pidfile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    MonkeyError::Pidfile { path: path.into(), detail: e.to_string() }
                })?;
                let pid =
                    text.trim().parse::<u32>().map_err(|_| MonkeyError::Pidfile {
                        path: path.into(),
                        detail: format!("{:?} is not a pid", text.trim()),
                    })?;
                pids.insert(pid);
            }
            TargetSelector::Name(re) => {
                let rx = regex::Regex::new(re).map_err(|e| MonkeyError::Selector {
                    selector: format!("name:{re}"),
                    detail: e.to_string(),
                })?;
                for &pid in &all {
                    let name = comm(pid).unwrap_or_default();
                    if rx.is_match(&name) || rx.is_match(&cmdline(pid)) {
                        pids.insert(pid);
                    }
                }
            }
            // Refused by config validation; nothing to resolve.
            _ => {}
        }
    }
    Ok(pids
        .into_iter()
        .filter(|p| *p != 1 && *p != me && alive(*p))
        .filter_map(|pid| comm(pid).map(|name| Victim { pid, name }))
        .collect())
}

/// Signals up to `spec.max_targets` random processes among the matches.
pub fn strike(spec: &MonkeySpec, rng: &mut ChaCha8Rng) -> Result<Strike, MonkeyError> {
    let signal = Signal::from_str(&spec.signal)
        .map_err(|_| MonkeyError::Signal(spec.signal.clone()))?;
    let candidates = resolve(&spec.targets)?;
    let n = candidates.len();
    let victims: Vec<Victim> = candidates
        .choose_multiple(rng, (spec.max_targets as usize).min(n))
        .cloned()
        .collect();
    for v in &victims {
        kill(Pid::from_raw(v.pid as i32), signal).map_err(|source| {
            MonkeyError::Kill {
                signal: spec.signal.clone(),
                pid: v.pid,
                name: v.name.clone(),
                source,
            }
        })?;
        tracing::warn!(pid = v.pid, name = %v.name, signal = %spec.signal, "Chaos Monkey struck");
    }
    Ok(Strike { signal: spec.signal.clone(), candidates: n, victims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::process::{Child, Command};

    struct Kids(Vec<Child>);
    impl Drop for Kids {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn strikes_at_most_max_targets_of_the_matching_processes() {
        // A unique command line so only our children match.
        let tag = format!("{}.{}", 300 + std::process::id() % 100, std::process::id());
        let mut kids = Kids(
            (0..3).map(|_| Command::new("sleep").arg(&tag).spawn().unwrap()).collect(),
        );
        let spec = MonkeySpec {
            targets: vec![TargetSelector::Name(format!(
                "^sleep {}$",
                regex::escape(&tag)
            ))],
            max_targets: 2,
            signal: "SIGKILL".into(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = strike(&spec, &mut rng).unwrap();
        assert_eq!(s.candidates, 3);
        assert_eq!(s.victims.len(), 2);
        let killed: Vec<u32> = kids
            .0
            .iter_mut()
            .filter_map(|c| {
                let pid = c.id();
                let status = c.wait_timeout_poll();
                status.then_some(pid)
            })
            .collect();
        let mut expected: Vec<u32> = s.victims.iter().map(|v| v.pid).collect();
        expected.sort();
        let mut killed = killed;
        killed.sort();
        assert_eq!(killed, expected);
        assert!(s.victims.iter().all(|v| v.name == "sleep"));
    }

    #[test]
    fn never_selects_init_or_itself() {
        let me = std::process::id();
        let sels = [TargetSelector::Pid(1), TargetSelector::Pid(me)];
        assert!(resolve(&sels).unwrap().is_empty());
        let spec = MonkeySpec {
            targets: sels.to_vec(),
            max_targets: 5,
            signal: "SIGKILL".into(),
        };
        let s = strike(&spec, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert!(s.victims.is_empty());
    }

    trait WaitPoll {
        fn wait_timeout_poll(&mut self) -> bool;
    }
    impl WaitPoll for Child {
        /// True when the child exits within two seconds.
        fn wait_timeout_poll(&mut self) -> bool {
            for _ in 0..100 {
                if let Ok(Some(_)) = self.try_wait() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            false
        }
    }
}
