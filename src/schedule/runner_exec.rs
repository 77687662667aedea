//! The real [`Executor`]: validates the file, runs it with the runner on a
//! blocking thread (the runner's future need not be `Send`), writes the
//! run's own reports, and renders combined game-day reports. SIGINT and
//! SIGTERM reach the runner through the process-wide
//! [`crate::signals::Interrupt`], which makes it revert and finish early.
//!
//! Faults with host targets (`@host:`/`@hosts:`) reach the hosts of the
//! experiment's own `[[host]]` tables, or of the executor's inventory
//! (`chaos gameday --inventory`, `[daemon] inventory`), which replaces
//! them as `chaos run --inventory` does.

use std::path::{Path, PathBuf};

use super::clock::BoxFuture;
use super::exec::{ExecError, Executor, RunRequest, RunSummary, Stop, VerdictRecord};
use super::targets::{self, TargetSet};
use crate::experiment::{self, Experiment, Severity};
use crate::outcome::RunOutcome;
use crate::report::{self, RunReport};
use crate::runner::{self, progress::ProgressMode, RunOptions};
use crate::signals::Interrupt;

/// A finished run and where its reports are.
#[derive(Debug, Clone)]
pub struct RunnerReport {
    /// The runner's report.
    pub report: RunReport,
    /// Where `result.json`, `junit.xml` and `report.html` were written.
    pub dir: PathBuf,
}

/// Runs experiments with [`crate::runner::run`].
#[derive(Debug, Clone)]
pub struct RunnerExecutor {
    /// Fault journal directory.
    pub journal_dir: PathBuf,
    /// Seed override for every run.
    pub seed: Option<u64>,
    /// Live progress of each run on stderr.
    pub progress: ProgressMode,
    /// The process' SIGINT/SIGTERM flag.
    pub interrupt: Option<Interrupt>,
    /// Inventory for host targets, read again for every run (so a fleet
    /// change reaches a long-running daemon); `None` = the experiments'
    /// own `[[host]]` tables.
    pub inventory: Option<PathBuf>,
}

impl RunnerExecutor {
    /// The experiment at `path` with the executor's inventory applied.
    fn load(&self, path: &Path) -> Result<Experiment, ExecError> {
        let mut exp = load(path)?;
        if let Some(inv) = &self.inventory {
            let hosts = crate::fleet::inventory::Inventory::load(inv).map_err(|e| {
                ExecError::Invalid {
                    path: path.to_path_buf(),
                    detail: format!("inventory: {e}"),
                }
            })?;
            exp.hosts = Some(hosts);
        }
        Ok(exp)
    }
}

fn load(path: &Path) -> Result<Experiment, ExecError> {
    let loaded = experiment::load(path);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .take(3)
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect();
    match loaded.experiment {
        Some(e) if errors.is_empty() => Ok(e),
        _ => Err(ExecError::Invalid {
            path: path.to_path_buf(),
            detail: errors.join("; "),
        }),
    }
}

impl Executor for RunnerExecutor {
    type Report = RunnerReport;

    fn run<'a>(
        &'a self,
        req: &'a RunRequest,
        _stop: Stop,
    ) -> BoxFuture<'a, Result<RunnerReport, ExecError>> {
        Box::pin(async move {
            let exp = self.load(&req.experiment)?;
            let opts = RunOptions {
                journal_dir: self.journal_dir.clone(),
                seed: self.seed,
                progress: self.progress,
                interrupt: self.interrupt,
                metrics_listen: None,
            };
            let handle = tokio::runtime::Handle::current();
            let result = tokio::task::spawn_blocking(move || {
                handle.block_on(runner::run(&exp, opts))
            })
            .await
            .map_err(|e| ExecError::Environment {
                path: req.experiment.clone(),
                detail: format!("the runner task failed: {e}"),
            })?;
            let report = result.map_err(|e| {
                let path = req.experiment.clone();
                let detail = e.to_string();
                if e.exit_code() == crate::exit::INVALID {
                    ExecError::Invalid { path, detail }
                } else {
                    ExecError::Environment { path, detail }
                }
            })?;
            if let Err(e) = report::write_all(&req.report_dir, &report) {
                tracing::error!(dir = %req.report_dir.display(), %e, "cannot write run reports");
            }
            Ok(RunnerReport { report, dir: req.report_dir.clone() })
        })
    }

    fn summarize(&self, r: &RunnerReport) -> RunSummary {
        // A fault left behind outranks the verdict (as in `chaos run`'s
        // exit code): the game day stops, the daemon counts a failure.
        let unreverted: Vec<String> = r
            .report
            .faults
            .iter()
            .filter_map(|f| f.revert_error.as_ref().map(|e| format!("{}: {e}", f.id)))
            .collect();
        let (outcome, reason) = if unreverted.is_empty() {
            (r.report.outcome, r.report.abort.as_ref().map(|a| a.reason.clone()))
        } else {
            (
                RunOutcome::EnvironmentError,
                Some(format!(
                    "not reverted (run `chaos recover`): {}",
                    unreverted.join("; ")
                )),
            )
        };
        RunSummary {
            experiment: r.report.experiment.name.clone(),
            outcome,
            verdicts: r
                .report
                .hypotheses
                .iter()
                .map(|h| VerdictRecord { hypothesis: h.name.clone(), verdict: h.verdict })
                .collect(),
            report_dir: Some(r.dir.clone()),
            reason,
        }
    }

    fn targets(&self, path: &Path) -> Result<TargetSet, ExecError> {
        self.load(path).map(|e| targets::of_experiment(&e))
    }

    fn combined_files(&self, reports: &[RunnerReport]) -> Vec<(String, String)> {
        let runs: Vec<RunReport> = reports.iter().map(|r| r.report.clone()).collect();
        vec![
            ("junit.xml".into(), report::junit::render_suites(&runs)),
            ("gameday.html".into(), report::html::render_gameday(&runs)),
        ]
    }

    fn report_json(&self, r: &RunnerReport) -> Option<serde_json::Value> {
        serde_json::to_value(&r.report).ok()
    }
}
