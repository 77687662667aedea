//! Running a game day: steps in order with a live timeline (one line when a
//! step starts, one when it ends), checkpoints confirmed by a human (or
//! `--yes`), `stop_on_abort`, and a combined report: `gameday.json`, plus
//! whatever combined files the executor renders (JUnit, HTML) and each
//! run's own reports in `NN-name/`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::exec::{severity, ExecError, Executor, RunRequest, Stop};
use super::scenario::{Scenario, Step};
use crate::outcome::RunOutcome;

/// Asks a human to confirm a checkpoint.
pub trait Confirm {
    /// True to continue, false to stop the game day.
    fn confirm(&mut self, message: &str) -> bool;
}

/// `--yes`: every checkpoint is confirmed (and says so in the timeline).
pub struct AutoYes;

impl Confirm for AutoYes {
    fn confirm(&mut self, _message: &str) -> bool {
        true
    }
}

/// Prompts `y/N` on a terminal.
pub struct Prompt<R: BufRead, W: Write> {
    /// Where answers come from.
    pub input: R,
    /// Where the question goes.
    pub output: W,
}

impl<R: BufRead, W: Write> Confirm for Prompt<R, W> {
    fn confirm(&mut self, message: &str) -> bool {
        let _ = write!(self.output, "  checkpoint: {message}\n  continue? [y/N] ");
        let _ = self.output.flush();
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(n) if n > 0 => {
                matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
            }
            _ => false,
        }
    }
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum StepStatus {
    /// An experiment ran.
    Ran {
        /// Its outcome.
        outcome: RunOutcome,
    },
    /// An experiment could not start.
    CouldNotStart {
        /// Why.
        error: String,
    },
    /// A checkpoint was confirmed.
    Confirmed,
    /// A checkpoint was declined: the game day stops.
    Declined,
    /// A pause elapsed.
    Waited,
    /// Not run because the game day stopped earlier.
    Skipped,
    /// A pause cut short by an interrupt.
    Interrupted,
}

/// One timeline entry.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// 1-based position.
    pub index: usize,
    /// Step kind.
    pub kind: &'static str,
    /// Name / message / duration.
    pub label: String,
    /// How it ended.
    #[serde(flatten)]
    pub status: StepStatus,
    /// RFC 3339, None when skipped.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// The run's report directory (experiment steps).
    pub report_dir: Option<PathBuf>,
    /// The run's full report as JSON, when the executor provides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// The whole game day (written as `gameday.json`).
#[derive(Debug, Clone, Serialize)]
pub struct GamedayReport {
    /// Scenario name.
    pub name: String,
    /// Scenario description.
    pub description: String,
    /// The scenario file.
    pub scenario: PathBuf,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// The worst outcome (what the exit code says).
    pub outcome: RunOutcome,
    /// Exit code.
    pub exit_code: u8,
    /// Why it stopped early, if it did.
    pub stopped: Option<String>,
    /// Every step, skipped ones included.
    pub steps: Vec<StepRecord>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Runs `scenario` and returns its report and the runs' full reports.
/// `report_dir` receives each run's reports in `NN-kind/`.
pub async fn run<E: Executor>(
    scenario: &Scenario,
    exec: &E,
    confirm: &mut dyn Confirm,
    timeline: &mut dyn Write,
    report_dir: &Path,
    stop: &Stop,
) -> (GamedayReport, Vec<E::Report>) {
    let started_at = now();
    let total = scenario.steps.len();
    let mut steps = Vec::new();
    let mut reports = Vec::new();
    let mut worst = RunOutcome::Accepted;
    let mut exit_code = crate::exit::OK;
    let mut stopped: Option<String> = None;
    let _ = writeln!(timeline, "game day: {} ({total} steps)", scenario.name);
    for (i, step) in scenario.steps.iter().enumerate() {
        let index = i + 1;
        let mut rec = StepRecord {
            index,
            kind: step.kind(),
            label: step.label(),
            status: StepStatus::Skipped,
            started_at: None,
            finished_at: None,
            report_dir: None,
            report: None,
        };
        if stopped.is_none() && stop.is_set() {
            stopped = Some("interrupted".into());
            worst = RunOutcome::Interrupted;
        }
        if stopped.is_some() {
            let _ =
                writeln!(timeline, "[{index}/{total}] skip {}: {}", rec.kind, rec.label);
            steps.push(rec);
            continue;
        }
        rec.started_at = Some(now());
        let _ = writeln!(timeline, "[{index}/{total}] start {}: {}", rec.kind, rec.label);
        let _ = timeline.flush();
        let mut note = String::new();
        match step {
            Step::Experiment { file, .. } => {
                let dir = report_dir.join(format!("{index:02}-{}", slug(&rec.label)));
                let req = RunRequest {
                    experiment: file.clone(),
                    report_dir: dir,
                    label: format!("step {index}"),
                };
                match exec.run(&req, stop.clone()).await {
                    Ok(report) => {
                        let s = exec.summarize(&report);
                        rec.status = StepStatus::Ran { outcome: s.outcome };
                        rec.report_dir = s.report_dir.clone();
                        rec.report = exec.report_json(&report);
                        let verdicts: Vec<String> = s
                            .verdicts
                            .iter()
                            .map(|v| format!("{}: {}", v.hypothesis, v.verdict))
                            .collect();
                        note = format!(" — {}", s.outcome);
                        if !verdicts.is_empty() {
                            note.push_str(&format!(" ({})", verdicts.join(", ")));
                        }
                        if severity(s.outcome) > severity(worst) {
                            worst = s.outcome;
                        }
                        let outcome_code = s.outcome.exit_code();
                        if severity(s.outcome) >= severity(worst) {
                            exit_code = outcome_code;
                        }
                        reports.push(report);
                        match s.outcome {
                            RunOutcome::Interrupted => {
                                stopped = Some("interrupted".into())
                            }
                            RunOutcome::Aborted | RunOutcome::EnvironmentError
                                if scenario.stop_on_abort =>
                            {
                                stopped = Some(format!(
                                    "step {index} {} and stop_on_abort is set",
                                    s.outcome
                                ))
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        note = format!(" — could not start: {e}");
                        rec.status = StepStatus::CouldNotStart { error: e.to_string() };
                        if severity(RunOutcome::EnvironmentError) > severity(worst) {
                            worst = RunOutcome::EnvironmentError;
                            exit_code = could_not_start_code(&e);
                        }
                        if scenario.stop_on_abort {
                            stopped = Some(format!(
                                "step {index} could not start and stop_on_abort is set"
                            ));
                        }
                    }
                }
            }
            Step::Checkpoint { message } => {
                if confirm.confirm(message) {
                    rec.status = StepStatus::Confirmed;
                } else {
                    rec.status = StepStatus::Declined;
                    stopped = Some(format!("checkpoint {index} was declined"));
                    if severity(RunOutcome::Aborted) > severity(worst) {
                        worst = RunOutcome::Aborted;
                        exit_code = crate::exit::ABORTED;
                    }
                }
            }
            Step::Pause { duration } => {
                rec.status = if sleep_unless_stopped(*duration, stop).await {
                    StepStatus::Waited
                } else {
                    stopped = Some("interrupted".into());
                    worst = RunOutcome::Interrupted;
                    StepStatus::Interrupted
                };
            }
        }
        rec.finished_at = Some(now());
        let word = match &rec.status {
            StepStatus::Ran { .. } | StepStatus::CouldNotStart { .. } => "finish",
            StepStatus::Confirmed => "confirmed",
            StepStatus::Declined => "declined",
            StepStatus::Waited => "finish",
            StepStatus::Interrupted => "interrupted",
            StepStatus::Skipped => "skip",
        };
        let _ = writeln!(
            timeline,
            "[{index}/{total}] {word} {}: {}{note}",
            rec.kind, rec.label
        );
        if let Some(why) = &stopped {
            let _ = writeln!(timeline, "game day stopped: {why}");
        }
        let _ = timeline.flush();
        steps.push(rec);
    }
    if worst == RunOutcome::Interrupted {
        exit_code = crate::exit::INTERRUPTED;
    }
    let _ = writeln!(timeline, "game day finished: {worst} (exit {exit_code})");
    let report = GamedayReport {
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        scenario: scenario.file.clone(),
        started_at,
        finished_at: now(),
        outcome: worst,
        exit_code,
        stopped,
        steps,
    };
    (report, reports)
}

fn could_not_start_code(e: &ExecError) -> u8 {
    e.exit_code()
}

/// Sleeps `d` unless `stop` is set first; true when the full time passed.
async fn sleep_unless_stopped(d: Duration, stop: &Stop) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait() => false,
    }
}

/// A directory-name-safe version of a step label.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "step".into()
    } else {
        trimmed.to_string()
    }
}

/// Writes `gameday.json` and the executor's combined files into `dir`;
/// returns the paths written.
pub fn write_reports<E: Executor>(
    dir: &Path,
    report: &GamedayReport,
    runs: &[E::Report],
    exec: &E,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    let p = dir.join("gameday.json");
    std::fs::write(&p, json + "\n")?;
    written.push(p);
    for (name, contents) in exec.combined_files(runs) {
        let p = dir.join(&name);
        std::fs::write(&p, contents)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::exec::fake::FakeExecutor;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn scenario(stop_on_abort: bool, steps: Vec<Step>) -> Scenario {
        Scenario {
            file: "g.toml".into(),
            name: "g".into(),
            description: String::new(),
            stop_on_abort,
            steps,
        }
    }

    fn exp(name: &str) -> Step {
        Step::Experiment { file: format!("{name}.toml").into(), name: name.into() }
    }

    struct Answers(Vec<bool>);
    impl Confirm for Answers {
        fn confirm(&mut self, _: &str) -> bool {
            self.0.remove(0)
        }
    }

    fn scripted(outcomes: &[(&str, RunOutcome)]) -> FakeExecutor {
        FakeExecutor {
            outcomes: Mutex::new(
                outcomes
                    .iter()
                    .map(|(n, o)| (n.to_string(), vec![*o]))
                    .collect::<HashMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    async fn go(
        s: &Scenario,
        exec: &FakeExecutor,
        confirm: &mut dyn Confirm,
    ) -> (GamedayReport, String) {
        let mut out = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = run(s, exec, confirm, &mut out, dir.path(), &Stop::new()).await;
        (r, String::from_utf8(out).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn runs_every_step_in_order_with_a_live_timeline_and_the_worst_exit_code() {
        let s = scenario(
            true,
            vec![
                exp("aa"),
                Step::Checkpoint { message: "dashboards green?".into() },
                exp("kill"),
                Step::Pause { duration: Duration::from_secs(30) },
                exp("region"),
            ],
        );
        let exec = scripted(&[
            ("kill", RunOutcome::Rejected),
            ("region", RunOutcome::Inconclusive),
        ]);
        let (r, timeline) = go(&s, &exec, &mut AutoYes).await;
        assert_eq!(*exec.ran.lock().unwrap(), ["step 1", "step 3", "step 5"]);
        assert_eq!(r.outcome, RunOutcome::Rejected);
        assert_eq!(r.exit_code, 1);
        assert_eq!(r.stopped, None);
        let lines: Vec<&str> = timeline.lines().collect();
        assert_eq!(lines[0], "game day: g (5 steps)");
        assert_eq!(lines[1], "[1/5] start experiment: aa");
        assert_eq!(
            lines[2],
            "[1/5] finish experiment: aa — accepted (latency: accepted)"
        );
        assert_eq!(lines[4], "[2/5] confirmed checkpoint: dashboards green?");
        assert_eq!(
            lines[6],
            "[3/5] finish experiment: kill — rejected (latency: rejected)"
        );
        assert_eq!(lines[8], "[4/5] finish pause: 30s");
        assert_eq!(*lines.last().unwrap(), "game day finished: rejected (exit 1)");
        assert_eq!(r.steps[2].status, StepStatus::Ran { outcome: RunOutcome::Rejected });
        assert!(r.steps[0].report.is_some(), "each run's report is embedded");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_on_abort_skips_the_rest_and_continue_mode_does_not() {
        let steps = vec![exp("a"), exp("b"), exp("c")];
        let exec = scripted(&[("b", RunOutcome::Aborted)]);
        let (r, timeline) = go(&scenario(true, steps.clone()), &exec, &mut AutoYes).await;
        assert_eq!(r.outcome, RunOutcome::Aborted);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.steps[2].status, StepStatus::Skipped);
        assert!(timeline
            .contains("game day stopped: step 2 aborted and stop_on_abort is set"));
        assert!(timeline.contains("[3/3] skip experiment: c"));

        let exec = scripted(&[("b", RunOutcome::Aborted)]);
        let (r, _) = go(&scenario(false, steps), &exec, &mut AutoYes).await;
        assert_eq!(r.steps[2].status, StepStatus::Ran { outcome: RunOutcome::Accepted });
        assert_eq!(r.exit_code, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_checkpoint_stops_the_game_day_as_aborted() {
        let s = scenario(
            false,
            vec![exp("a"), Step::Checkpoint { message: "go?".into() }, exp("b")],
        );
        let exec = scripted(&[]);
        let (r, _) = go(&s, &exec, &mut Answers(vec![false])).await;
        assert_eq!(r.steps[1].status, StepStatus::Declined);
        assert_eq!(r.steps[2].status, StepStatus::Skipped);
        assert_eq!(r.exit_code, 3);
        assert_eq!(*exec.ran.lock().unwrap(), ["step 1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unstartable_experiment_counts_as_an_environment_error() {
        let s = scenario(true, vec![exp("bad"), exp("b")]);
        let exec = FakeExecutor { invalid: vec!["bad".into()], ..Default::default() };
        let (r, _) = go(&s, &exec, &mut AutoYes).await;
        assert!(matches!(r.steps[0].status, StepStatus::CouldNotStart { .. }));
        assert_eq!(r.steps[1].status, StepStatus::Skipped);
        assert_eq!(r.exit_code, crate::exit::INVALID);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_stops_after_the_current_step_and_exits_130() {
        let s = scenario(
            false,
            vec![exp("a"), Step::Pause { duration: Duration::from_secs(60) }, exp("b")],
        );
        let exec =
            FakeExecutor { duration: Duration::from_secs(5), ..Default::default() };
        let stop = Stop::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            s2.set();
        });
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let (r, _) = run(&s, &exec, &mut AutoYes, &mut out, dir.path(), &stop).await;
        assert_eq!(r.steps[1].status, StepStatus::Interrupted);
        assert_eq!(r.steps[2].status, StepStatus::Skipped);
        assert_eq!(r.exit_code, 130);
    }

    #[test]
    fn step_directories_get_short_readable_names() {
        assert_eq!(slug("A/A: cohorts are equivalent"), "a-a-cohorts-are-equivalent");
        assert_eq!(slug("!!!"), "step");
        assert!(slug(&"x".repeat(100)).len() <= 40);
    }

    #[test]
    fn prompts_accept_only_an_explicit_yes() {
        for (input, expected) in
            [("y\n", true), ("YES\n", true), ("\n", false), ("", false), ("n\n", false)]
        {
            let mut out = Vec::new();
            let mut p = Prompt { input: input.as_bytes(), output: &mut out };
            assert_eq!(p.confirm("ready?"), expected, "{input:?}");
            assert!(String::from_utf8(out).unwrap().contains("ready?"));
        }
    }

    #[tokio::test]
    async fn writes_gameday_json_into_the_report_directory() {
        let s = scenario(true, vec![exp("a")]);
        let exec = scripted(&[]);
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let (r, runs) =
            run(&s, &exec, &mut AutoYes, &mut out, dir.path(), &Stop::new()).await;
        let written = write_reports(&dir.path().join("out"), &r, &runs, &exec).unwrap();
        assert_eq!(written.len(), 1);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written[0]).unwrap()).unwrap();
        assert_eq!(v["outcome"], "accepted");
        assert_eq!(v["steps"][0]["status"], "ran");
        assert_eq!(v["steps"][0]["outcome"], "accepted");
        assert!(v["steps"][0]["report_dir"].as_str().unwrap().ends_with("01-a"));
    }
}
