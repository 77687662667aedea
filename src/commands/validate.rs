//! `chaos validate`: check experiment files and print every problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::exit;
use crate::experiment::{self, Severity};
use crate::schedule::{config, scenario};

const AFTER_HELP: &str = "Examples:
  chaos validate experiments/*.toml scenarios/*.toml
  chaos validate --json experiments/checkout-latency.toml | jq '.[].message'

A file with a [gameday] table is checked as a game-day scenario (its
experiments too), one with [daemon], [[schedule]] or [[monkey]] as a
`chaos continuous` config; anything else as an experiment.
Every problem is reported at once as FILE:LINE:COL: error: MESSAGE with a hint.
Exit status: 0 when every file is valid, 2 when any has an error (or a
warning, with --deny-warnings).";

/// Arguments of `chaos validate`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ValidateArgs {
    /// Experiment, game-day scenario or daemon config files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the problems as a JSON array (file, line, column, severity,
    /// path, message, hint) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Treat warnings as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// What a file is, by its top-level tables.
#[derive(Debug, PartialEq)]
enum FileKind {
    Experiment,
    Scenario,
    DaemonConfig,
}

/// Looks at the top-level tables only; anything unreadable, too large or
/// not TOML goes to the experiment loader, whose diagnostics explain it.
fn kind_of(path: &Path) -> FileKind {
    let Some(doc) = crate::input_file::read_text(path, experiment::MAX_FILE_BYTES as u64)
        .ok()
        .and_then(|src| src.parse::<toml_edit::DocumentMut>().ok())
    else {
        return FileKind::Experiment;
    };
    let has = |key: &str| doc.as_table().contains_key(key);
    if has("gameday") {
        FileKind::Scenario
    } else if has("daemon") || has("schedule") || has("monkey") {
        FileKind::DaemonConfig
    } else {
        FileKind::Experiment
    }
}

/// Runs `chaos validate`.
pub fn run(args: ValidateArgs) -> u8 {
    let mut all = Vec::new();
    let mut failed = false;
    for file in &args.files {
        let diagnostics = match kind_of(file) {
            FileKind::Experiment => experiment::load(file).diagnostics,
            FileKind::Scenario => scenario::load(file).diagnostics,
            FileKind::DaemonConfig => config::load(file).diagnostics,
        };
        let errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
        let warnings = diagnostics.iter().any(|d| d.severity == Severity::Warning);
        failed |= errors || (args.deny_warnings && warnings);
        all.extend(diagnostics);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let text = serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into());
        let _ = writeln!(out, "{text}");
    } else {
        for d in &all {
            let _ = writeln!(out, "{d}");
        }
        let errors = all.iter().filter(|d| d.severity == Severity::Error).count();
        let warnings = all.len() - errors;
        let _ = writeln!(
            out,
            "{} file(s) checked: {errors} error(s), {warnings} warning(s){}",
            args.files.len(),
            if failed { "" } else { " — ok" }
        );
    }
    if failed {
        exit::INVALID
    } else {
        exit::OK
    }
}
