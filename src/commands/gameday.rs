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
  chaos gameday --yes --inventory fleet.toml scenarios/fleet-gameday.toml

Steps run in order; the timeline shows one line when a step starts and one
when it finishes (with verdicts). Checkpoints ask y/N on the terminal; with
--yes they are confirmed automatically, and without a terminal and without
--yes the game day refuses to start (exit 2). With stop_on_abort = true the
first aborted experiment ends the game day. Faults with host targets
(`@host:`/`@hosts:`) reach the hosts of --inventory (TOML or Ansible YAML),
or of the experiment's own [[host]] tables; a step that names hosts without
either refuses the game day before it starts (exit 2).

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
    /// Inventory for faults with host targets (`@host:`/`@hosts:`), TOML
    /// `[[host]]` tables or Ansible YAML; replaces the experiments' own
    /// `[[host]]` tables, as for `chaos run --inventory`.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
}

/// Every experiment step whose faults name hosts must have an inventory
/// (its own `[[host]]` tables or `--inventory`), so a game day never
/// stops at step 4 for want of one. Returns the message for the first
/// step that has none.
fn missing_inventory(sc: &scenario::Scenario, inventory: bool) -> Option<String> {
    if inventory {
        return None;
    }
    sc.steps.iter().enumerate().find_map(|(i, step)| {
        let scenario::Step::Experiment { file, .. } = step else { return None };
        let exp = crate::experiment::load(file).experiment?;
        let fault = exp.faults.iter().find(|f| f.host_target.is_some())?;
        exp.hosts.is_none().then(|| {
            format!(
                "step {} ({}): fault {} targets hosts, but the experiment declares no \
                 [[host]] tables; pass --inventory FILE. Nothing was run.",
                i + 1,
                file.display(),
                fault.id
            )
        })
    })
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
    if let Some(path) = &args.inventory {
        if let Err(e) = crate::fleet::inventory::Inventory::load(path) {
            eprintln!("{e}");
            return exit::INVALID;
        }
    }
    if let Some(msg) = missing_inventory(&sc, args.inventory.is_some()) {
        eprintln!("chaos gameday: {msg}");
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
        inventory: args.inventory.clone(),
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
