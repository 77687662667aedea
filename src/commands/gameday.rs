//! `chaos gameday`: run a scenario of experiments, checkpoints and pauses
//! with a live timeline and a combined report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use crate::exit;
use crate::experiment::Severity;
use crate::runner::progress::ProgressMode;
use crate::schedule::exec::Stop;
use crate::schedule::gameday::{self, AutoYes, Confirm, Prompt};
use crate::schedule::runner_exec::RunnerExecutor;
use crate::schedule::scenario;

const AFTER_HELP: &str = "Examples:
  chaos gameday scenarios/checkout-gameday.toml
  chaos gameday --yes --report-dir out/q4 scenarios/checkout-gameday.toml
  chaos gameday --yes --json scenarios/checkout-gameday.toml | jq .outcome

Steps run in order; the timeline shows one line when a step starts and one
when it finishes (with verdicts). Checkpoints ask y/N on the terminal; with
--yes they are confirmed automatically, and without a terminal and without
--yes the game day refuses to start (exit 2). With stop_on_abort = true the
first aborted experiment ends the game day.

Reports in --report-dir: gameday.json (every step), junit.xml (one suite per
run), gameday.html, and each run's own reports in NN-name/.
Exit code: the worst outcome (0 accepted, 1 rejected, 3 aborted or declined,
4 inconclusive, 5 environment, 130 interrupted).";

/// Arguments of `chaos gameday`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct GamedayArgs {
    /// The scenario file.
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// Confirm every checkpoint automatically.
    #[arg(long, short)]
    pub yes: bool,
    /// Where the combined and per-run reports go (default:
    /// reports/gameday-TIMESTAMP).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Print gameday.json on stdout (the timeline goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Fault journal directory (default as for `chaos run`).
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Seed for every run.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs `chaos gameday`.
pub fn run(args: GamedayArgs) -> u8 {
    let loaded = scenario::load(&args.scenario);
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    let Some(sc) = loaded.scenario else { return exit::INVALID };
    if loaded.diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return exit::INVALID;
    }
    let stdin = std::io::stdin();
    if sc.has_checkpoints() && !args.yes && !stdin.is_terminal() {
        let n = sc.steps.iter().filter(|s| s.kind() == "checkpoint").count();
        eprintln!(
            "chaos gameday: {} has {n} checkpoint(s) that need a human, but stdin is not a \
             terminal; pass --yes to confirm them automatically. Nothing was run.",
            args.scenario.display()
        );
        return exit::INVALID;
    }
    let interrupt = match crate::signals::install() {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "chaos gameday: cannot install signal handlers ({e}); refusing to inject"
            );
            return exit::ENVIRONMENT;
        }
    };
    // Lets `chaos halt` SIGTERM the game day should it not stop on its own.
    let _registration = crate::halt::register_default("chaos gameday");
    let dir = args.report_dir.clone().unwrap_or_else(|| {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        PathBuf::from("reports").join(format!("gameday-{stamp}"))
    });
    let exec = RunnerExecutor {
        journal_dir: crate::journal::resolve_dir(args.journal_dir.as_deref()),
        seed: args.seed,
        progress: ProgressMode::detect(),
        interrupt: Some(interrupt),
    };
    let rt = match super::runner_runtime("chaos gameday") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let stop = Stop::new();
    let (report, runs) = rt.block_on(async {
        let s = stop.clone();
        tokio::spawn(async move {
            interrupt.wait().await;
            s.set();
        });
        let mut yes = AutoYes;
        let mut prompt = Prompt { input: stdin.lock(), output: std::io::stderr() };
        let confirm: &mut dyn Confirm = if args.yes { &mut yes } else { &mut prompt };
        let mut timeline: Box<dyn Write> = if args.json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        gameday::run(&sc, &exec, confirm, &mut *timeline, &dir, &stop).await
    });
    match gameday::write_reports(&dir, &report, &runs, &exec) {
        Ok(paths) => {
            let names: Vec<String> =
                paths.iter().map(|p| p.display().to_string()).collect();
            eprintln!("chaos gameday: reports: {}", names.join(", "));
        }
        Err(e) => {
            eprintln!("chaos gameday: cannot write reports to {}: {e}", dir.display())
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into());
        let _ = writeln!(std::io::stdout(), "{text}");
    }
    report.exit_code
}
