//! The run's clock: the baseline (traffic only), then the fault window,
//! where every tick starts and stops the faults due ([`Schedule::tick`]),
//! hands the HTTP faults to the proxies, and asks the [`AbortWatch`].
//! Both phases stop early on SIGINT/SIGTERM and on `chaos halt`. Neither
//! reverts anything: the caller reverts the schedule after either (and
//! the schedule's session does if this panics).

use std::time::Duration;

use super::progress::{CohortLive, Progress};
use super::rig::Rig;
use super::schedule::{Event, Schedule};
use super::watch::{halt_abort, AbortWatch};
use super::window::{self, Span};
use crate::cohort::Cohort;
use crate::experiment::Experiment;
use crate::metrics::Recorder;
use crate::otel::RunTrace;
use crate::outcome::RunOutcome;
use crate::report::AbortInfo;
use crate::signals::Interrupt;
use crate::units::format_duration;

/// How often the runner looks at the data (faults due, abort watch).
const TICK: Duration = Duration::from_millis(250);

/// The pieces of a run both phases report to.
pub struct Live<'a> {
    pub exp: &'a Experiment,
    pub rig: &'a Rig,
    pub progress: &'a mut Progress,
    pub trace: &'a mut RunTrace,
    pub interrupt: Option<Interrupt>,
}

/// How a phase ended, when not by running its course.
#[derive(Default)]
pub struct End {
    pub outcome: Option<RunOutcome>,
    pub abort: Option<AbortInfo>,
    /// A fault could not start.
    pub env_error: Option<String>,
    /// Run time of the last look (the end of the observation window).
    pub observed_until: Duration,
}

impl Live<'_> {
    fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(|i| i.is_set())
    }

    fn aborted(&mut self, end: &mut End, abort: AbortInfo, message: String) {
        self.progress.event(&message);
        end.abort = Some(abort);
        end.outcome = Some(RunOutcome::Aborted);
    }

    /// Traffic without faults for `[experiment] baseline`.
    pub async fn baseline(&mut self) -> End {
        let origin = self.rig.recorder.origin();
        let mut end = End::default();
        let baseline_end = origin.elapsed() + self.exp.meta.baseline;
        while origin.elapsed() < baseline_end {
            if self.interrupted() {
                end.outcome = Some(RunOutcome::Interrupted);
                break;
            }
            if let Some(a) = halt_abort(origin.elapsed()) {
                let message = format!("ABORT: {}", a.reason);
                self.aborted(&mut end, a, message);
                break;
            }
            let (c, e) = live(&self.rig.recorder, Span { from_ms: 0, to_ms: u64::MAX });
            self.progress.status(
                "baseline",
                origin.elapsed(),
                self.exp.meta.baseline,
                c,
                e,
                "",
            );
            tokio::time::sleep(TICK).await;
        }
        end
    }

    /// The fault window from `inject_at` (run time): faults start and stop
    /// on schedule until the window ends or something stops the run.
    pub async fn fault_window(
        &mut self,
        schedule: &mut Schedule,
        watch: &mut AbortWatch<'_>,
        inject_at: Duration,
    ) -> End {
        let origin = self.rig.recorder.origin();
        let window_end = inject_at + self.exp.meta.duration;
        let mut end = End { observed_until: inject_at, ..End::default() };
        self.progress.event(&format!(
            "injecting {} fault(s) over {}",
            schedule.faults().len(),
            format_duration(self.exp.meta.duration)
        ));
        loop {
            let now = origin.elapsed();
            end.observed_until = now;
            if self.interrupted() {
                end.outcome = Some(RunOutcome::Interrupted);
                break;
            }
            if now >= window_end {
                break;
            }
            if let Some(a) = halt_abort(now) {
                let message = format!("ABORT: {}", a.reason);
                self.aborted(&mut end, a, message);
                break;
            }
            let tick = schedule.tick(now - inject_at, now);
            self.report_events(schedule, &tick.events);
            if tick.http_changed {
                self.rig.push_http_faults(schedule);
            }
            if let Some(e) = tick.error {
                self.progress.event(&e);
                end.outcome = Some(RunOutcome::EnvironmentError);
                end.env_error = Some(e);
                break;
            }
            if let Some((a, message)) = watch.check(&self.rig.recorder, now) {
                self.aborted(&mut end, a, message);
                break;
            }
            let (c, e) = live(
                &self.rig.recorder,
                Span { from_ms: inject_at.as_millis() as u64, to_ms: u64::MAX },
            );
            self.progress.status(
                "observe",
                now - inject_at,
                self.exp.meta.duration,
                c,
                e,
                &watch.note(),
            );
            tokio::time::sleep(TICK).await;
        }
        end
    }

    /// The timeline, the trace and the platform metrics of each event.
    fn report_events(&mut self, schedule: &Schedule, events: &[Event]) {
        for &ev in events {
            match ev {
                Event::Applied(i) => {
                    let sf = &schedule.faults()[i];
                    self.rig.platform.fault_applied(&sf.spec.kind);
                    self.trace.fault_applied(
                        &sf.spec.id,
                        sf.spec.kind.name(),
                        &sf.description,
                    );
                    self.progress
                        .event(&format!("applied {}: {}", sf.spec.id, sf.description));
                }
                Event::Repeated(i) => {
                    let sf = &schedule.faults()[i];
                    self.trace.fault_repeated(&sf.spec.id);
                    self.progress
                        .event(&format!("repeated {}: {}", sf.spec.id, sf.description));
                }
                Event::Reverted(i) => {
                    let sf = &schedule.faults()[i];
                    self.rig.platform.fault_reverted(&sf.spec.kind);
                    self.trace.fault_reverted(&sf.spec.id, sf.revert_error.as_deref());
                    self.progress.event(&format!("reverted {}", sf.spec.id));
                }
            }
        }
    }
}

/// Live counts of both cohorts over `span`, for the status line.
fn live(recorder: &Recorder, span: Span) -> (CohortLive, CohortLive) {
    let one = |c: Cohort| {
        let s = recorder.snapshot(c);
        let counts = window::counts(&s, span);
        CohortLive {
            requests: counts.total,
            errors: counts.events,
            p50_ms: s
                .windows
                .iter()
                .rev()
                .find(|w| w.requests > 0)
                .map(|w| w.p50_ms)
                .unwrap_or(0.0),
        }
    };
    (one(Cohort::Control), one(Cohort::Experiment))
}
