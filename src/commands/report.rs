//! `chaos report`: re-renders stored `result.json` files as the terminal
//! verdict table and, with `--out`, as junit.xml and report.html again
//! (e.g. after upgrading chaos, or to combine several runs into one
//! game-day style report).

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use std::io::IsTerminal as _;
use std::path::PathBuf;

use crate::exit;
use crate::report::{self, RunReport};

const AFTER_HELP: &str = "Examples:
  chaos report reports/result.json
      print the verdict table of a stored run
  chaos report reports/result.json --out /tmp/again
      rewrite result.json, junit.xml and report.html into /tmp/again
  chaos report day/*/result.json --out day/combined
      one combined page: results.json (array), junit.xml (<testsuites>), report.html

Exit codes: 0 rendered, 2 a file is missing or not a chaos result.json,
5 the output directory cannot be written.";

/// Arguments of `chaos report`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ReportArgs {
    /// One or more result.json files written by `chaos run`.
    #[arg(required = true, value_name = "RESULT.json")]
    pub results: Vec<PathBuf>,
    /// Write junit.xml, report.html and the JSON into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Color the table: auto = only on a terminal and without NO_COLOR.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// When to use ANSI colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Resolves `auto` against stdout and `NO_COLOR` (https://no-color.org).
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                let no_color =
                    matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty());
                std::io::stdout().is_terminal() && !no_color
            }
        }
    }
}

/// Runs `chaos report`.
pub fn run(args: ReportArgs) -> u8 {
    let reports = match load(&args.results) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::INVALID;
        }
    };
    let color = args.color.enabled();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", report::terminal::verdict_table(r, color));
    }
    if let Some(dir) = &args.out {
        if let Err(e) = write(dir, &reports) {
            eprintln!("error: {e:#}");
            return exit::ENVIRONMENT;
        }
        println!("\nreports written to {}", dir.display());
    }
    exit::OK
}

/// A result.json holds at most a reservoir of samples per cohort: tens of
/// MiB at the largest settings.
const REPORT_MAX_BYTES: u64 = 256 * 1024 * 1024;

fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<RunReport>> {
    paths
        .iter()
        .map(|p| {
            // Bounded and regular files only: a FIFO or /dev/zero given
            // by mistake fails at once instead of hanging or filling RAM.
            let text = crate::input_file::read_text(p, REPORT_MAX_BYTES)
                .with_context(|| format!("reading {}", p.display()))?;
            let r = report::json::from_str(&text)
                .with_context(|| format!("{} is not a chaos result.json", p.display()))?;
            anyhow::ensure!(
                r.schema_version == report::SCHEMA_VERSION,
                "{} has schema_version {}; this chaos reads version {}",
                p.display(),
                r.schema_version,
                report::SCHEMA_VERSION
            );
            Ok(r)
        })
        .collect()
}

fn write(dir: &std::path::Path, reports: &[RunReport]) -> anyhow::Result<()> {
    if let [one] = reports {
        report::write_all(dir, one)
            .with_context(|| format!("writing reports into {}", dir.display()))?;
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("results.json", report::json::to_string_pretty_many(reports)? + "\n"),
        (report::JUNIT_XML, report::junit::render_suites(reports)),
        (report::REPORT_HTML, report::html::render_gameday(reports)),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
