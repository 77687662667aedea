//! `chaos validate`: check experiment files and print every problem.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::exit;
use crate::experiment::{self, Severity};

const AFTER_HELP: &str = "Examples:
  chaos validate experiments/*.toml
  chaos validate --json experiments/checkout-latency.toml | jq '.[].message'

Every problem is reported at once as FILE:LINE:COL: error: MESSAGE with a hint.
Exit status: 0 when every file is valid, 2 when any has an error (or a
warning, with --deny-warnings).";

/// Arguments of `chaos validate`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ValidateArgs {
    /// Experiment files to check.
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

/// Runs `chaos validate`.
pub fn run(args: ValidateArgs) -> u8 {
    let mut all = Vec::new();
    let mut failed = false;
    for file in &args.files {
        let loaded = experiment::load(file);
        failed |= loaded.has_errors() || (args.deny_warnings && loaded.has_warnings());
        all.extend(loaded.diagnostics);
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
