//! Live progress on stderr: one redrawn line on a terminal, plain lines
//! every few seconds otherwise (CI logs), nothing when quiet. Results never
//! go here; they go to stdout as a table or JSON.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::units::format_duration;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Redraw one status line in place.
    Terminal,
    /// Print a status line every few seconds.
    Plain,
    /// Print nothing.
    Quiet,
}

impl ProgressMode {
    /// Terminal when stderr is a TTY, plain otherwise.
    pub fn detect() -> ProgressMode {
        if std::io::stderr().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Plain
        }
    }
}

/// One cohort's live numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct CohortLive {
    /// Requests so far in the observation window.
    pub requests: u64,
    /// Errors so far in the observation window.
    pub errors: u64,
    /// Recent median latency (ms).
    pub p50_ms: f64,
}

/// Writes progress for one run.
pub struct Progress {
    mode: ProgressMode,
    last_plain: Option<Instant>,
    drew_line: bool,
}

impl Progress {
    /// A progress writer in `mode`.
    pub fn new(mode: ProgressMode) -> Self {
        Progress { mode, last_plain: None, drew_line: false }
    }

    /// Announces a phase or an event on its own line.
    pub fn event(&mut self, text: &str) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.drew_line {
            let _ = write!(err, "\r\x1b[2K");
            self.drew_line = false;
        }
        let _ = writeln!(err, "chaos: {text}");
    }

    /// Updates the status line.
    pub fn status(
        &mut self,
        phase: &str,
        elapsed: Duration,
        total: Duration,
        control: CohortLive,
        experiment: CohortLive,
        note: &str,
    ) {
        let line = format!(
            "[{phase}] {:.0}s/{} | control {} req {:.2}% err p50 {:.1}ms | experiment {} req \
             {:.2}% err p50 {:.1}ms{}{}",
            elapsed.as_secs_f64().floor(),
            format_duration(total),
            control.requests,
            pct(control),
            control.p50_ms,
            experiment.requests,
            pct(experiment),
            experiment.p50_ms,
            if note.is_empty() { "" } else { " | " },
            note
        );
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Terminal => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                self.drew_line = true;
            }
            ProgressMode::Plain => {
                let due =
                    self.last_plain.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
                if due {
                    self.last_plain = Some(Instant::now());
                    let _ = writeln!(std::io::stderr().lock(), "chaos: {line}");
                }
            }
        }
    }

    /// Ends the status line (before results are printed).
    pub fn finish(&mut self) {
        if self.drew_line {
            let _ = writeln!(std::io::stderr().lock());
            self.drew_line = false;
        }
    }
}

fn pct(c: CohortLive) -> f64 {
    if c.requests == 0 {
        0.0
    } else {
        100.0 * c.errors as f64 / c.requests as f64
    }
}
