//! The self-healing checks, watched from the moment of the kill: each
//! kill (pod-kill, container-kill) starts one watcher thread per
//! `[[kubernetes.check]]`, which waits until the workload counts as
//! healed (the [`Gate`] rule: a dip below desired first, or the end of a
//! short grace) or until kill + `within`, and records when and by which
//! means it saw readiness. A later kill supersedes the earlier watchers
//! (the bound runs from the last kill): they are cancelled and their
//! results ignored. The checks are judged after the faults by joining
//! the latest watchers, so a run whose fault window outlasts the bound
//! judges what happened within the bound, not the state at the end.
//! With no kill at all the bound runs from the judging.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch as signal;

use super::client::Kube;
use super::inject::CheckResult;
use super::spec::ReadyCheck;
use super::watch::{until_healed, Gate, Healed, Via};

/// Watchers of the checks, shared by the kill faults and the judging.
pub struct Healing {
    kube: Option<Arc<Kube>>,
    checks: Vec<ReadyCheck>,
    rounds: Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    latest: Option<Round>,
    superseded: Vec<Round>,
}

/// The watchers started by one kill, one per check in order (`None`
/// when no thread could be started: the judging waits itself).
struct Round {
    kill: Instant,
    cancel: signal::Sender<bool>,
    watchers: Vec<Option<JoinHandle<Healed>>>,
}

impl Round {
    fn cancel(&self) {
        let _ = self.cancel.send(true);
    }
}

/// Where a check's bound runs from.
#[derive(Clone, Copy)]
enum Since {
    Kill(Instant),
    /// Nothing was killed: from the judging.
    Judging(Instant),
}

impl Healing {
    pub fn new(kube: Option<Arc<Kube>>, checks: Vec<ReadyCheck>) -> Healing {
        Healing { kube, checks, rounds: Mutex::default() }
    }

    /// The checks, for the dry run.
    pub fn checks(&self) -> &[ReadyCheck] {
        &self.checks
    }

    /// A kill just happened: starts watching every check from `at`, and
    /// cancels the watchers of an earlier kill.
    pub fn killed(&self, at: Instant) {
        let Some(kube) = &self.kube else { return };
        let (cancel, rx) = signal::channel(false);
        let watchers = self
            .checks
            .iter()
            .map(|c| {
                let (kube, target, rx) = (kube.clone(), c.target.clone(), rx.clone());
                let gate = Gate::after_kill(at, Gate::grace_for(c.within));
                let deadline = at + c.within;
                std::thread::Builder::new()
                    .name("heal-watch".into())
                    .spawn(move || until_healed(&kube, &target, gate, deadline, rx))
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot start a watcher; the check waits at the end");
                    })
                    .ok()
            })
            .collect();
        let round = Round { kill: at, cancel, watchers };
        let Ok(mut rounds) = self.rounds.lock() else { return };
        // Two faults may strike at once: the later kill wins.
        let stale = match &rounds.latest {
            Some(latest) if latest.kill > round.kill => Some(round),
            _ => rounds.latest.replace(round),
        };
        if let Some(old) = stale {
            old.cancel();
            rounds.superseded.push(old);
        }
    }

    /// Judges every check: joins the watchers of the last kill (or, with
    /// no kill, waits from now within each bound).
    pub fn judge(&self) -> Vec<CheckResult> {
        let Some(kube) = &self.kube else { return Vec::new() };
        let rounds =
            self.rounds.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        for old in rounds.superseded {
            // Cancelled when superseded; they end at once.
            for w in old.watchers.into_iter().flatten() {
                let _ = w.join();
            }
        }
        let Some(round) = rounds.latest else {
            let now = Instant::now();
            let (_keep, rx) = signal::channel(false);
            return self
                .checks
                .iter()
                .map(|c| {
                    let h = until_healed(
                        kube,
                        &c.target,
                        Gate::immediate(now),
                        now + c.within,
                        rx.clone(),
                    );
                    result(c, Since::Judging(now), &h)
                })
                .collect();
        };
        self.checks
            .iter()
            .zip(round.watchers)
            .map(|(c, w)| {
                let h = match w {
                    Some(h) => h.join().unwrap_or_else(|_| Healed {
                        result: Err("the watcher failed".into()),
                        via: Via::Watch,
                        at: Instant::now(),
                        dipped: false,
                    }),
                    None => until_healed(
                        kube,
                        &c.target,
                        Gate::after_kill(round.kill, Gate::grace_for(c.within)),
                        round.kill + c.within,
                        round.cancel.subscribe(),
                    ),
                };
                result(c, Since::Kill(round.kill), &h)
            })
            .collect()
    }
}

impl Default for Healing {
    /// No cluster, no checks: kills are not watched.
    fn default() -> Healing {
        Healing::new(None, Vec::new())
    }
}

impl Drop for Healing {
    fn drop(&mut self) {
        // Watchers nobody will judge stop now rather than at their bound.
        if let Ok(r) = self.rounds.lock() {
            r.latest.iter().chain(&r.superseded).for_each(Round::cancel);
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The check's line in the report.
fn result(c: &ReadyCheck, since: Since, h: &Healed) -> CheckResult {
    let bound = secs(c.within);
    match (&h.result, since) {
        (Ok((ready, desired)), Since::Kill(kill)) => {
            let after = h.at.saturating_duration_since(kill).as_secs_f64();
            let no_dip = if h.dipped {
                String::new()
            } else {
                format!(
                    "; no dip below desired seen, counted after the {} grace",
                    secs(Gate::grace_for(c.within))
                )
            };
            CheckResult {
                text: format!(
                    "check ready_replicas {}: {ready}/{desired} ready {after:.1}s after the kill (bound {bound}, seen by {}{no_dip})",
                    c.target, h.via
                ),
                passed: true,
            }
        }
        (Ok((ready, desired)), Since::Judging(from)) => CheckResult {
            text: format!(
                "check ready_replicas {}: {ready}/{desired} ready {:.1}s after the faults ended (nothing was killed; bound {bound}, seen by {})",
                c.target,
                h.at.saturating_duration_since(from).as_secs_f64(),
                h.via
            ),
            passed: true,
        },
        (Err(last), since) => {
            let last = if last.is_empty() { "nothing seen" } else { last.as_str() };
            let of = match since {
                Since::Kill(_) => " of the kill",
                Since::Judging(_) => " (nothing was killed)",
            };
            CheckResult {
                text: format!(
                    "check ready_replicas {}: not back within {bound}{of} (last: {last})",
                    c.target
                ),
                passed: false,
            }
        }
    }
}
