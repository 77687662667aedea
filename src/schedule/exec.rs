//! The seam between scheduling and running: [`Executor`] runs one
//! experiment file and says how it ended. The real implementation calls the
//! runner; tests use a scripted fake, so game days and the daemon are tested
//! without injecting anything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::clock::BoxFuture;
use super::targets::TargetSet;
use crate::outcome::{RunOutcome, Verdict};

/// A cooperative stop request shared by the daemon, game days and runs.
/// The real executor also honours the process-wide SIGINT/SIGTERM flag.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A stop flag that is not set.
    pub fn new() -> Self {
        Stop::default()
    }

    /// Requests a stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once a stop was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Resolves once a stop was requested (polls; for `tokio::select!`).
    pub async fn wait(&self) {
        while !self.is_set() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One run to perform.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The experiment file.
    pub experiment: PathBuf,
    /// Where this run's own reports go (created by the executor).
    pub report_dir: PathBuf,
    /// Who asked: a schedule or game-day step name (for logs).
    pub label: String,
}

/// One hypothesis verdict, as recorded in history.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct VerdictRecord {
    /// Hypothesis name.
    pub hypothesis: String,
    /// Its verdict.
    pub verdict: Verdict,
}

/// What the scheduler needs to know about a finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Experiment name (from the file).
    pub experiment: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Per-hypothesis verdicts.
    pub verdicts: Vec<VerdictRecord>,
    /// Where its reports were written, if anywhere.
    pub report_dir: Option<PathBuf>,
    /// Why it aborted or failed, when it did.
    pub reason: Option<String>,
}

/// Runs experiments. `Report` is the runner's full report, kept so game
/// days can render combined reports from it.
pub trait Executor: Send + Sync + 'static {
    /// The full report of one run.
    type Report: Send + 'static;

    /// Runs `req` to the end (the run reverts its faults on every path,
    /// including when `stop` is set). `Err` means it could not start:
    /// invalid file or unfit environment; nothing was injected.
    fn run<'a>(
        &'a self,
        req: &'a RunRequest,
        stop: Stop,
    ) -> BoxFuture<'a, Result<Self::Report, ExecError>>;

    /// The scheduler's view of a report.
    fn summarize(&self, report: &Self::Report) -> RunSummary;

    /// What the experiment at `path` touches (for overlap prevention).
    fn targets(&self, path: &Path) -> Result<TargetSet, ExecError>;

    /// Extra combined-report files for a game day (name, contents), e.g.
    /// JUnit with one suite per run and an HTML timeline.
    fn combined_files(&self, _reports: &[Self::Report]) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A report's JSON, embedded in `gameday.json`.
    fn report_json(&self, _report: &Self::Report) -> Option<serde_json::Value> {
        None
    }
}

/// A run that could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// The experiment file does not validate.
    #[error("{path}: invalid experiment: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The first diagnostics.
        detail: String,
    },
    /// Preflight or environment failure.
    #[error("{path}: {detail}")]
    Environment {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl ExecError {
    /// The outcome recorded for a run that could not start.
    pub fn outcome(&self) -> RunOutcome {
        RunOutcome::EnvironmentError
    }

    /// Exit code: 2 invalid, 5 environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Invalid { .. } => crate::exit::INVALID,
            ExecError::Environment { .. } => crate::exit::ENVIRONMENT,
        }
    }
}

/// Orders outcomes by how bad they are, so a game day exits with its worst.
pub fn severity(o: RunOutcome) -> u8 {
    match o {
        RunOutcome::Accepted => 0,
        RunOutcome::Inconclusive => 1,
        RunOutcome::Rejected => 2,
        RunOutcome::Aborted => 3,
        RunOutcome::EnvironmentError => 4,
        RunOutcome::Interrupted => 5,
    }
}

/// A scripted executor for tests: outcomes by file name, an optional
/// duration per run (on the tokio clock), and a log of what ran.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Scripted outcomes and a record of calls.
    #[derive(Default)]
    pub struct FakeExecutor {
        /// File stem → outcomes for successive runs (last one repeats).
        pub outcomes: Mutex<HashMap<String, Vec<RunOutcome>>>,
        /// File stem → targets.
        pub targets: HashMap<String, TargetSet>,
        /// How long each run takes.
        pub duration: Duration,
        /// Labels of every run, in start order.
        pub ran: Mutex<Vec<String>>,
        /// File stems that fail to start.
        pub invalid: Vec<String>,
    }

    fn stem(p: &Path) -> String {
        p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    impl Executor for FakeExecutor {
        type Report = RunSummary;

        fn run<'a>(
            &'a self,
            req: &'a RunRequest,
            stop: Stop,
        ) -> BoxFuture<'a, Result<RunSummary, ExecError>> {
            Box::pin(async move {
                let name = stem(&req.experiment);
                self.ran.lock().unwrap().push(req.label.clone());
                if self.invalid.contains(&name) {
                    return Err(ExecError::Invalid {
                        path: req.experiment.clone(),
                        detail: "scripted".into(),
                    });
                }
                let mut outcome = {
                    let mut map = self.outcomes.lock().unwrap();
                    let list = map.entry(name.clone()).or_default();
                    match list.len() {
                        0 => RunOutcome::Accepted,
                        1 => list[0],
                        _ => list.remove(0),
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(self.duration) => {}
                    _ = stop.wait() => outcome = RunOutcome::Interrupted,
                }
                Ok(RunSummary {
                    experiment: name,
                    outcome,
                    verdicts: vec![VerdictRecord {
                        hypothesis: "latency".into(),
                        verdict: match outcome {
                            RunOutcome::Accepted => Verdict::Accepted,
                            RunOutcome::Rejected => Verdict::Rejected,
                            _ => Verdict::Inconclusive,
                        },
                    }],
                    report_dir: Some(req.report_dir.clone()),
                    reason: None,
                })
            })
        }

        fn summarize(&self, report: &RunSummary) -> RunSummary {
            report.clone()
        }

        fn targets(&self, path: &Path) -> Result<TargetSet, ExecError> {
            Ok(self.targets.get(&stem(path)).cloned().unwrap_or_default())
        }

        fn report_json(&self, report: &RunSummary) -> Option<serde_json::Value> {
            serde_json::to_value(report).ok()
        }
    }
}
