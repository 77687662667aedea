//! The continuous-experiment daemon loop: sleep until the planner says
//! something is due, start what may start (each run in its own task, so
//! disjoint experiments can overlap in time), record every run in history
//! and metrics, and on stop let running experiments revert before
//! returning. All timing goes through a [`Clock`], so the loop runs on a
//! manual clock in tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinSet;

use super::api::{RunLabels, Shared, SkipLabels};
use super::clock::Clock;
use super::config::{DaemonConfig, EntryKind, EntrySpec};
use super::exec::{Executor, RunRequest, Stop};
use super::history::{History, HistoryError, HistoryLock, RunEnd};
use super::monkey;
use super::planner::{Decision, Finished, Planner};
use super::targets;

/// Where the daemon writes its one-line event log (stdout in the CLI).
pub type EventSink = Arc<Mutex<Box<dyn Write + Send>>>;

/// What a stopped daemon did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonSummary {
    /// Runs (and strikes) started.
    pub started: u64,
    /// Fires skipped.
    pub skipped: u64,
}

/// A configured daemon, ready to run.
pub struct Daemon<E: Executor> {
    cfg: DaemonConfig,
    exec: Arc<E>,
    clock: Arc<dyn Clock>,
    history: Arc<Mutex<History>>,
    shared: Arc<Shared>,
    rng: Arc<Mutex<ChaCha8Rng>>,
    events: EventSink,
    _lock: HistoryLock,
}

impl<E: Executor> Daemon<E> {
    /// Opens the history (marking runs a crashed predecessor left behind as
    /// abandoned), seeds metrics from it, and plans the first fires.
    pub fn new(
        cfg: DaemonConfig,
        exec: E,
        clock: Arc<dyn Clock>,
        events: EventSink,
    ) -> Result<Self, HistoryError> {
        let lock = HistoryLock::acquire(&cfg.history)?;
        let history = History::open(&cfg.history)?;
        let now = clock.now();
        let abandoned = history.mark_abandoned(&now.to_string())?;
        let seed = cfg.seed.unwrap_or_else(rand::random);
        let planner = Planner::new(cfg.entries.clone(), now, seed);
        let shared = Arc::new(Shared {
            planner: Mutex::new(planner),
            metrics: Default::default(),
            replan: Default::default(),
            token: cfg.token.clone(),
            started_at: now.to_string(),
            state_dir: crate::journal::state_dir(),
        });
        // Counters continue across restarts: the history is the truth.
        for (schedule, outcome, n) in history.counts()? {
            shared.metrics.runs.get_or_create(&RunLabels { schedule, outcome }).inc_by(n);
        }
        let d = Daemon {
            cfg,
            exec: Arc::new(exec),
            clock,
            history: Arc::new(Mutex::new(history)),
            shared,
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x6d6f6e6b))),
            events,
            _lock: lock,
        };
        if abandoned > 0 {
            d.event(&format!("marked {abandoned} run(s) left running by a previous daemon as abandoned"));
        }
        Ok(d)
    }

    /// The state shared with the API server.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn event(&self, msg: &str) {
        emit(&self.events, self.clock.as_ref(), msg);
    }

    /// Runs until `stop` is set, then waits for running experiments to
    /// revert and finish (they see the same stop) and returns.
    pub async fn run(self, stop: Stop) -> DaemonSummary {
        let mut tasks = JoinSet::new();
        let mut summary = DaemonSummary::default();
        for s in self.shared.planner().status() {
            let when = s.next_fire.unwrap_or_else(|| "never".into());
            self.event(&format!(
                "{} {}: cron {:?}, next fire {when}",
                s.kind, s.name, s.cron
            ));
        }
        loop {
            while tasks.try_join_next().is_some() {}
            if stop.is_set() {
                break;
            }
            let wake = self.shared.planner().next_wake();
            let sleep = async {
                match wake {
                    Some(t) => self.clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = stop.wait() => break,
                _ = self.shared.replan.notified() => continue,
            }
            let now = self.clock.now();
            let halt = crate::halt::check(&self.shared.state_dir).map(|h| h.to_string());
            self.shared.planner().set_halted(halt);
            let exec = self.exec.clone();
            let decisions =
                self.shared.planner().due(
                    now,
                    &mut |spec: &EntrySpec| match &spec.kind {
                        EntryKind::Experiment(path) => {
                            exec.targets(path).map_err(|e| e.to_string())
                        }
                        EntryKind::Monkey(m) => Ok(targets::of_selectors(&m.targets)),
                    },
                );
            for d in decisions {
                match d {
                    Decision::Start { name } => {
                        summary.started += 1;
                        let Some(spec) = self.shared.planner().spec(&name).cloned()
                        else {
                            continue;
                        };
                        tasks.spawn(self.run_one(spec, stop.clone()));
                    }
                    Decision::Skip { name, reason } => {
                        summary.skipped += 1;
                        self.shared
                            .metrics
                            .skips
                            .get_or_create(&SkipLabels {
                                schedule: name.clone(),
                                reason: reason.label().into(),
                            })
                            .inc();
                        self.event(&format!("skip {name}: {reason}"));
                    }
                    Decision::Invalid { name, error } => {
                        let started = now.to_string();
                        let end = RunEnd {
                            finished_at: started.clone(),
                            outcome: Finished::CouldNotStart.as_str(),
                            verdicts: serde_json::json!([]),
                            report_dir: None,
                            detail: Some(&error),
                        };
                        let label = experiment_label(self.shared.planner().spec(&name));
                        record(&self.history, &name, &label, &started, &end);
                        self.finish_metrics(&name, Finished::CouldNotStart);
                        self.event(&format!("{name}: could not start: {error}"));
                    }
                }
            }
        }
        let running = self.shared.planner().running();
        if !running.is_empty() {
            self.event(&format!(
                "stopping: waiting for {} to revert and finish",
                running.join(", ")
            ));
        }
        while tasks.join_next().await.is_some() {}
        self.event(&format!(
            "stopped after {} run(s) and {} skipped fire(s)",
            summary.started, summary.skipped
        ));
        summary
    }

    fn finish_metrics(&self, name: &str, how: Finished) {
        finish(&self.shared, self.clock.as_ref(), name, how);
    }

    fn run_one(
        &self,
        spec: EntrySpec,
        stop: Stop,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let exec = self.exec.clone();
        let clock = self.clock.clone();
        let history = self.history.clone();
        let shared = self.shared.clone();
        let rng = self.rng.clone();
        let events = self.events.clone();
        let report_root = self.cfg.report_dir.clone();
        async move {
            let started = clock.now().to_string();
            let label = experiment_label(Some(&spec));
            let id = begin(&history, &spec.name, &label, &started);
            // Without a history row the run still happens; its reports go
            // to a directory named after the start time instead.
            let run_tag =
                id.map(|i| i.to_string()).unwrap_or_else(|| started.replace(':', ""));
            shared.metrics.running.inc();
            emit(
                &events,
                clock.as_ref(),
                &format!("start {} (run {run_tag}): {label}", spec.name),
            );
            let (how, verdicts, report_dir, detail) = match &spec.kind {
                EntryKind::Experiment(path) => {
                    let req = RunRequest {
                        experiment: path.clone(),
                        report_dir: report_root.join(format!("{}-{run_tag}", spec.name)),
                        label: spec.name.clone(),
                    };
                    match exec.run(&req, stop).await {
                        Ok(report) => {
                            let s = exec.summarize(&report);
                            let v = serde_json::to_value(&s.verdicts)
                                .unwrap_or(serde_json::Value::Null);
                            (Finished::Run(s.outcome), v, s.report_dir, s.reason)
                        }
                        Err(e) => (
                            Finished::CouldNotStart,
                            serde_json::json!([]),
                            None,
                            Some(e.to_string()),
                        ),
                    }
                }
                // Experiments are refused by the runner itself; a strike
                // has no runner, so the halt is checked here.
                EntryKind::Monkey(_)
                    if crate::halt::check(&shared.state_dir).is_some() =>
                {
                    let why = crate::halt::check(&shared.state_dir)
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                    (Finished::StrikeFailed, serde_json::json!([]), None, Some(why))
                }
                EntryKind::Monkey(m) => {
                    let res = {
                        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                        monkey::strike(m, &mut rng)
                    };
                    match res {
                        Ok(s) => {
                            let detail = format!(
                                "{} to {} of {} candidate(s)",
                                s.signal,
                                s.victims.len(),
                                s.candidates
                            );
                            let v = serde_json::to_value(&s.victims)
                                .unwrap_or(serde_json::Value::Null);
                            (Finished::Struck(s.victims.len()), v, None, Some(detail))
                        }
                        Err(e) => (
                            Finished::StrikeFailed,
                            serde_json::json!([]),
                            None,
                            Some(e.to_string()),
                        ),
                    }
                }
            };
            let end = RunEnd {
                finished_at: clock.now().to_string(),
                outcome: how.as_str(),
                verdicts,
                report_dir: report_dir.as_deref(),
                detail: detail.as_deref(),
            };
            if let Some(id) = id {
                if let Err(e) =
                    history.lock().unwrap_or_else(|p| p.into_inner()).finish(id, &end)
                {
                    tracing::error!(%e, "cannot record a finished run");
                }
            }
            shared.metrics.running.dec();
            finish(&shared, clock.as_ref(), &spec.name, how);
            let extra = detail.map(|d| format!(" ({d})")).unwrap_or_default();
            let msg =
                format!("finish {} (run {run_tag}): {}{extra}", spec.name, how.as_str());
            emit(&events, clock.as_ref(), &msg);
        }
    }
}

fn experiment_label(spec: Option<&EntrySpec>) -> String {
    match spec.map(|s| &s.kind) {
        Some(EntryKind::Experiment(p)) => p.display().to_string(),
        Some(EntryKind::Monkey(_)) => "monkey".into(),
        None => String::new(),
    }
}

fn finish(shared: &Shared, clock: &dyn Clock, name: &str, how: Finished) {
    shared
        .metrics
        .runs
        .get_or_create(&RunLabels { schedule: name.into(), outcome: how.as_str().into() })
        .inc();
    let mut p = shared.planner();
    p.finished(name, how, clock.now());
    shared.metrics.paused.set(p.paused_count() as i64);
    drop(p);
    shared.replan.notify_one();
}

fn begin(
    history: &Mutex<History>,
    name: &str,
    label: &str,
    started: &str,
) -> Option<i64> {
    match history.lock().unwrap_or_else(|p| p.into_inner()).begin(name, label, started) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(%e, "cannot record a run start");
            None
        }
    }
}

fn record(
    history: &Mutex<History>,
    name: &str,
    label: &str,
    started: &str,
    end: &RunEnd,
) {
    if let Some(id) = begin(history, name, label, started) {
        if let Err(e) = history.lock().unwrap_or_else(|p| p.into_inner()).finish(id, end)
        {
            tracing::error!(%e, "cannot record a run");
        }
    }
}

fn emit(events: &EventSink, clock: &dyn Clock, msg: &str) {
    let mut w = events.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(w, "{} {msg}", clock.now());
    let _ = w.flush();
}

#[cfg(test)]
mod tests;
