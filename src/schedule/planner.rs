//! The scheduling decisions, as a pure state machine over instants: when
//! each entry fires next (cron + seeded jitter), whether a fire may start
//! (window, back-off, pause, overlap with what is running) and what a
//! finished run changes (failure count, back-off, pause). The daemon loop
//! only sleeps until [`Planner::next_wake`] and executes the decisions.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::clock::add;
use super::config::EntrySpec;
use super::targets::TargetSet;
use crate::outcome::RunOutcome;

/// How a fired entry ended, as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// An experiment ran to an outcome.
    Run(RunOutcome),
    /// The experiment could not start (invalid file, environment).
    CouldNotStart,
    /// A monkey strike signalled this many processes.
    Struck(usize),
    /// A monkey strike failed (e.g. permission denied).
    StrikeFailed,
}

impl Finished {
    /// Counts towards pausing the entry.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Finished::Run(
                RunOutcome::Rejected | RunOutcome::Aborted | RunOutcome::EnvironmentError
            ) | Finished::CouldNotStart
                | Finished::StrikeFailed
        )
    }

    /// Resets the failure count.
    pub fn is_success(self) -> bool {
        matches!(self, Finished::Run(RunOutcome::Accepted) | Finished::Struck(_))
    }

    /// Triggers back-off: the system under test may be hurt, so let it
    /// recover before the next experiment.
    pub fn needs_backoff(self) -> bool {
        matches!(self, Finished::Run(RunOutcome::Rejected | RunOutcome::Aborted))
    }

    /// The outcome word stored in history and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Run(o) => o.as_str(),
            Finished::CouldNotStart => "could-not-start",
            Finished::Struck(0) => "no-targets",
            Finished::Struck(_) => "struck",
            Finished::StrikeFailed => "strike-failed",
        }
    }
}

/// Why a fire did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum SkipReason {
    /// Outside the entry's allowed window.
    OutsideWindow,
    /// `chaos halt` is in force on this machine.
    Halted {
        /// The halt, as `halted: REASON (by WHO at WHEN)`.
        halt: String,
    },
    /// Still in back-off after a rejection or abort.
    BackingOff {
        /// When back-off ends (RFC 3339).
        until: String,
    },
    /// The previous run of the same entry has not finished.
    StillRunning,
    /// Another running entry touches a target of this one.
    Overlap {
        /// The running entry.
        with: String,
        /// The shared target key.
        target: String,
    },
}

impl SkipReason {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::OutsideWindow => "outside-window",
            SkipReason::Halted { .. } => "halted",
            SkipReason::BackingOff { .. } => "backing-off",
            SkipReason::StillRunning => "still-running",
            SkipReason::Overlap { .. } => "overlap",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::OutsideWindow => f.write_str("outside its allowed window"),
            SkipReason::Halted { halt } => f.write_str(halt),
            SkipReason::BackingOff { until } => write!(f, "backing off until {until}"),
            SkipReason::StillRunning => f.write_str("its previous run is still running"),
            SkipReason::Overlap { with, target } => {
                write!(f, "{with} is running on the same target {target}")
            }
        }
    }
}

/// What to do about one due entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start it now; its targets are marked busy until [`Planner::finished`].
    Start {
        /// Entry name.
        name: String,
    },
    /// Do not start it this time.
    Skip {
        /// Entry name.
        name: String,
        /// Why.
        reason: SkipReason,
    },
    /// Its targets could not be determined (invalid experiment): recorded
    /// as a run that could not start, counted as a failure.
    Invalid {
        /// Entry name.
        name: String,
        /// The error.
        error: String,
    },
}

/// Why an entry is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Paused {
    /// N consecutive failures.
    Failures,
    /// `POST /schedules/NAME/pause`.
    Operator,
}

/// The status of one entry (served by `GET /status`).
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    /// Name.
    pub name: String,
    /// `experiment` or `monkey`.
    pub kind: &'static str,
    /// The cron expression.
    pub cron: String,
    /// The window, if any.
    pub window: Option<String>,
    /// Next fire time (RFC 3339), unless paused.
    pub next_fire: Option<String>,
    /// Why it is paused, if it is.
    pub paused: Option<Paused>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// End of back-off, if backing off.
    pub backoff_until: Option<String>,
    /// Outcome of the last finished run.
    pub last_outcome: Option<String>,
    /// When the last run finished.
    pub last_finished_at: Option<String>,
    /// True while a run is in progress.
    pub running: bool,
    /// Fires started so far.
    pub runs_started: u64,
}

#[derive(Debug)]
struct State {
    spec: EntrySpec,
    /// The cron instant the next fire belongs to (before jitter).
    next_base: Option<Timestamp>,
    /// When it actually fires (base + jitter).
    next_fire: Option<Timestamp>,
    failures: u32,
    paused: Option<Paused>,
    backoff_until: Option<Timestamp>,
    last_outcome: Option<&'static str>,
    last_finished_at: Option<Timestamp>,
    started: u64,
}

/// Every entry's schedule and what is running.
#[derive(Debug)]
pub struct Planner {
    entries: Vec<State>,
    rng: ChaCha8Rng,
    /// Running entry → its targets.
    running: BTreeMap<String, TargetSet>,
    /// The emergency stop in force (`chaos halt`), as text: every fire is
    /// skipped, not failed, so no schedule is paused or backed off by it.
    halted: Option<String>,
}

impl Planner {
    /// Plans every entry's first fire after `now`. The seed makes jitter
    /// reproducible (tests, incident reviews).
    pub fn new(specs: Vec<EntrySpec>, now: Timestamp, seed: u64) -> Self {
        let mut p = Planner {
            entries: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            running: BTreeMap::new(),
            halted: None,
        };
        for spec in specs {
            let mut st = State {
                spec,
                next_base: None,
                next_fire: None,
                failures: 0,
                paused: None,
                backoff_until: None,
                last_outcome: None,
                last_finished_at: None,
                started: 0,
            };
            Self::plan_from(&mut p.rng, &mut st, now);
            p.entries.push(st);
        }
        p
    }

    fn plan_from(rng: &mut ChaCha8Rng, st: &mut State, after: Timestamp) {
        let (cron, tz) = (&st.spec.cron, &st.spec.tz);
        let mut base = cron.next_after(after, tz);
        // Jump over closed windows, so the next fire shown in the status is
        // one that can run and the log is not filled with night-time skips.
        // A fire can still land outside when jitter pushes it past the end.
        if let Some(w) = &st.spec.window {
            for _ in 0..64 {
                let Some(b) = base.filter(|b| !w.contains(*b)) else { break };
                let Some(open) = w.next_open(b) else { break };
                let just_before = Timestamp::from_millisecond(open.as_millisecond() - 1);
                base = just_before.ok().and_then(|t| cron.next_after(t, tz));
            }
        }
        st.next_base = base;
        st.next_fire = st.next_base.map(|b| add(b, jitter(rng, st.spec.jitter)));
    }

    /// The spec of `name`.
    pub fn spec(&self, name: &str) -> Option<&EntrySpec> {
        self.entries.iter().find(|e| e.spec.name == name).map(|e| &e.spec)
    }

    /// The earliest instant at which some entry is due (None: nothing will
    /// ever fire, e.g. every entry paused).
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.entries
            .iter()
            .filter(|e| e.paused.is_none())
            .filter_map(|e| e.next_fire)
            .min()
    }

    /// Decides about every entry due at `now`, in config order, and plans
    /// their next fires. `targets_of` says what an entry touches.
    pub fn due(
        &mut self,
        now: Timestamp,
        targets_of: &mut dyn FnMut(&EntrySpec) -> Result<TargetSet, String>,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for i in 0..self.entries.len() {
            let st = &mut self.entries[i];
            let Some(fire) = st.next_fire else { continue };
            if st.paused.is_some() || fire > now {
                continue;
            }
            // Next fire: the cron instant after this one, or after now when
            // the daemon fell behind (missed fires are coalesced into one).
            let base = st.next_base.unwrap_or(now);
            let next_after = if st.spec.cron.next_after(base, &st.spec.tz) < Some(now) {
                now
            } else {
                base
            };
            Self::plan_from(&mut self.rng, st, next_after);
            let name = st.spec.name.clone();
            if let Some(w) = &st.spec.window {
                if !w.contains(now) {
                    out.push(Decision::Skip { name, reason: SkipReason::OutsideWindow });
                    continue;
                }
            }
            if let Some(halt) = &self.halted {
                out.push(Decision::Skip {
                    name,
                    reason: SkipReason::Halted { halt: halt.clone() },
                });
                continue;
            }
            if let Some(until) = st.backoff_until.filter(|u| *u > now) {
                out.push(Decision::Skip {
                    name,
                    reason: SkipReason::BackingOff { until: until.to_string() },
                });
                continue;
            }
            if self.running.contains_key(&name) {
                out.push(Decision::Skip { name, reason: SkipReason::StillRunning });
                continue;
            }
            let targets = match targets_of(&st.spec) {
                Ok(t) => t,
                Err(error) => {
                    out.push(Decision::Invalid { name, error });
                    continue;
                }
            };
            let clash = self.running.iter().find_map(|(other, ts)| {
                ts.overlap(&targets).map(|t| (other.clone(), t.to_string()))
            });
            if let Some((with, target)) = clash {
                out.push(Decision::Skip {
                    name,
                    reason: SkipReason::Overlap { with, target },
                });
                continue;
            }
            st.started += 1;
            self.running.insert(name.clone(), targets);
            out.push(Decision::Start { name });
        }
        out
    }

    /// Sets or clears the emergency stop the next [`Planner::due`] honours.
    pub fn set_halted(&mut self, halt: Option<String>) {
        self.halted = halt;
    }

    /// Records how a started (or invalid) entry ended at `now`.
    pub fn finished(&mut self, name: &str, how: Finished, now: Timestamp) {
        self.running.remove(name);
        let Some(st) = self.entries.iter_mut().find(|e| e.spec.name == name) else {
            return;
        };
        st.last_outcome = Some(how.as_str());
        st.last_finished_at = Some(now);
        if how.is_success() {
            st.failures = 0;
        } else if how.is_failure() {
            st.failures += 1;
            if st.failures >= st.spec.max_consecutive_failures && st.paused.is_none() {
                st.paused = Some(Paused::Failures);
            }
        }
        if how.needs_backoff() {
            st.backoff_until = Some(add(now, st.spec.backoff));
        }
    }

    /// Pauses `name` on an operator's request; false when unknown.
    pub fn pause(&mut self, name: &str) -> bool {
        match self.entries.iter_mut().find(|e| e.spec.name == name) {
            Some(st) => {
                st.paused = Some(Paused::Operator);
                true
            }
            None => false,
        }
    }

    /// Resumes `name`: clears the pause, the failure count and back-off,
    /// and plans the next fire after `now`. False when unknown.
    pub fn resume(&mut self, name: &str, now: Timestamp) -> bool {
        let Some(st) = self.entries.iter_mut().find(|e| e.spec.name == name) else {
            return false;
        };
        st.paused = None;
        st.failures = 0;
        st.backoff_until = None;
        Self::plan_from(&mut self.rng, st, now);
        true
    }

    /// Names of the entries running now.
    pub fn running(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Number of paused entries.
    pub fn paused_count(&self) -> usize {
        self.entries.iter().filter(|e| e.paused.is_some()).count()
    }

    /// Every entry's status.
    pub fn status(&self) -> Vec<EntryStatus> {
        self.entries
            .iter()
            .map(|e| EntryStatus {
                name: e.spec.name.clone(),
                kind: e.spec.kind_name(),
                cron: e.spec.cron.to_string(),
                window: e.spec.window.as_ref().map(|w| w.to_string()),
                next_fire: e
                    .next_fire
                    .filter(|_| e.paused.is_none())
                    .map(|t| t.to_string()),
                paused: e.paused.clone(),
                consecutive_failures: e.failures,
                backoff_until: e.backoff_until.map(|t| t.to_string()),
                last_outcome: e.last_outcome.map(str::to_string),
                last_finished_at: e.last_finished_at.map(|t| t.to_string()),
                running: self.running.contains_key(&e.spec.name),
                runs_started: e.started,
            })
            .collect()
    }
}

/// A uniform delay in `[0, max]`, millisecond resolution.
fn jitter(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.gen_range(0..=ms))
}

#[cfg(test)]
mod tests;
