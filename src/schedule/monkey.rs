//! Chaos Monkey strikes: pick up to `max_targets` random processes among
//! the entry's selectors and signal them. Resolution uses the fault
//! engine's process rules (`crate::target::process`): name selectors match
//! the process name or command line, and pid 1, kernel threads, this
//! process, its ancestors and other chaos runners are never selected.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::config::MonkeySpec;
use super::targets::selector_key;
use crate::target::process;
use crate::target::{TargetError, TargetSelector};

/// A strike that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum MonkeyError {
    /// The signal name is not one nix knows.
    #[error("unknown signal {0}")]
    Signal(String),
    /// A selector could not be resolved (bad pidfile, refused pid, regex).
    #[error(transparent)]
    Target(#[from] TargetError),
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
    /// Process name (`comm`).
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

/// Every process matched by `sels`, sorted by pid. Explicit `pid:` and
/// `pidfile:` targets that are protected or gone are errors (the operator
/// named exactly that process); `name:` matches silently leave them out.
pub fn resolve(sels: &[TargetSelector]) -> Result<Vec<Victim>, MonkeyError> {
    let mut found = BTreeMap::new();
    for sel in sels {
        let infos = match sel {
            TargetSelector::Pid(p) => vec![process::by_pid(*p, &selector_key(sel))?],
            TargetSelector::Pidfile(path) => {
                let pid = process::pid_from_file(Path::new(path))?;
                vec![process::by_pid(pid, &selector_key(sel))?]
            }
            TargetSelector::Name(re) => process::by_name(re)?,
            // Refused by config validation; nothing to resolve.
            _ => Vec::new(),
        };
        for i in infos {
            found.insert(i.pid, i.comm);
        }
    }
    Ok(found.into_iter().map(|(pid, name)| Victim { pid, name }).collect())
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
        for pid in [1, me] {
            let err = resolve(&[TargetSelector::Pid(pid)]).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{err}");
        }
        // A child of our own guarantees a match even where the only other
        // processes are init and our ancestors (a CI sandbox's own pid
        // namespace), so the exclusions below are tested against a real list.
        let kid = Kids(vec![Command::new("sleep").arg("30").spawn().unwrap()]);
        let kid_pid = kid.0[0].id();
        let all = resolve(&[TargetSelector::Name(".".into())]).unwrap();
        assert!(all.iter().any(|v| v.pid == kid_pid), "own child missing: {all:?}");
        assert!(all.iter().all(|v| v.pid != 1 && v.pid != me));
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
