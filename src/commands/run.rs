//! `chaos run` and `chaos gate`: load, preflight, run, report, exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::exit;
use crate::experiment::{self, Experiment, Severity, UpstreamSpec};
use crate::report;
use crate::runner::{self, progress::ProgressMode, RunOptions};

const RUN_HELP: &str = "Examples:
  chaos run experiments/replica-kill.toml
  chaos run --dry-run experiments/region-outage.toml     # print the plan, change nothing
  chaos run --json --report-dir out/ experiments/aa-no-fault.toml
  chaos run --inventory fleet.toml experiments/fleet-payments.toml  # @hosts: targets

Lifecycle: preflight (targets, privileges, kernel features, upstream health)
→ baseline → inject → observe with the abort watch → revert → verdict → report.
Reports: result.json, junit.xml and report.html in --report-dir/RUN_ID/.
Exit: 0 accepted, 1 rejected, 2 invalid input, 3 aborted, 4 inconclusive,
5 environment, 130 interrupted (faults are reverted on every path).";

const GATE_HELP: &str = "Examples:
  chaos gate experiments/aa-no-fault.toml \\
      --canary http://10.0.0.7:8080 --baseline http://10.0.0.8:8080

A CI gate for canary builds: the experiment cohort is routed to the canary
pool and the control cohort to the baseline pool, on the same traffic split
and hypotheses. Faults in the file are ignored: the canary build is the
change under test. Same exit codes and reports as `chaos run`.";

/// Options shared by `run` and `gate`.
#[derive(Debug, Args)]
pub struct RunCommon {
    /// The experiment file.
    #[arg(value_name = "EXPERIMENT")]
    pub file: PathBuf,
    /// Write result.json, junit.xml and report.html into DIR/RUN_ID/.
    #[arg(long, value_name = "DIR", default_value = "reports")]
    pub report_dir: PathBuf,
    /// Print the final result as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Fault journal directory (default: $CHAOS_JOURNAL_DIR, else
    /// $CHAOS_STATE_DIR, else /var/lib/chaos as root, else
    /// $XDG_STATE_HOME/chaos).
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Seed for target selection and the bootstrap (default: the file's, else random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No live progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve the platform's and the proxy's metrics for Prometheus at
    /// http://ADDR/metrics during the run (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Inventory for faults with host targets (`@host:`/`@hosts:`), TOML
    /// or Ansible YAML; replaces the file's own [[host]] tables.
    #[arg(long, value_name = "FILE", env = "CHAOS_INVENTORY")]
    pub inventory: Option<PathBuf>,
}

/// Arguments of `chaos run`.
#[derive(Debug, Args)]
#[command(after_help = RUN_HELP)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: RunCommon,
    /// Resolve targets and print every step and command; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `chaos gate`.
#[derive(Debug, Args)]
#[command(after_help = GATE_HELP)]
pub struct GateArgs {
    #[command(flatten)]
    pub common: RunCommon,
    /// The canary pool (experiment cohort), e.g. http://127.0.0.1:9001.
    #[arg(long, required = true, value_name = "URL")]
    pub canary: Vec<String>,
    /// The baseline pool (control cohort).
    #[arg(long, required = true, value_name = "URL")]
    pub baseline: Vec<String>,
}

/// Loads and validates a file, printing diagnostics to stderr.
pub fn load_or_report(file: &Path) -> Result<Experiment, u8> {
    let loaded = experiment::load(file);
    let mut err = std::io::stderr().lock();
    for d in &loaded.diagnostics {
        let _ = writeln!(err, "{d}");
    }
    match loaded.experiment {
        Some(e) if !loaded.diagnostics.iter().any(|d| d.severity == Severity::Error) => {
            Ok(e)
        }
        _ => Err(exit::INVALID),
    }
}

/// Runs `chaos run`.
pub fn run(args: RunArgs) -> u8 {
    let mut exp = match load_or_report(&args.common.file) {
        Ok(e) => e,
        Err(code) => return code,
    };
    if let Some(path) = &args.common.inventory {
        match crate::fleet::inventory::Inventory::load(path) {
            Ok(inv) => exp.hosts = Some(inv),
            Err(e) => {
                eprintln!("{e}");
                return exit::INVALID;
            }
        }
    }
    if args.dry_run {
        let opts = options(&args.common, None);
        return match runner::dry_run(&exp, &opts) {
            Ok(lines) => {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("chaos: {e}");
                e.exit_code()
            }
        };
    }
    execute(&exp, &args.common)
}

/// Runs `chaos gate`.
pub fn gate(args: GateArgs) -> u8 {
    let mut exp = match load_or_report(&args.common.file) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let to_pool = |urls: &[String]| -> Vec<UpstreamSpec> {
        urls.iter().map(|u| UpstreamSpec { url: u.clone(), region: None }).collect()
    };
    exp.traffic.experiment_upstreams = to_pool(&args.canary);
    exp.traffic.control_upstreams = to_pool(&args.baseline);
    if !exp.faults.is_empty() {
        eprintln!(
            "chaos: gate ignores the {} fault(s) in {}: the canary is the change under test",
            exp.faults.len(),
            args.common.file.display()
        );
        exp.faults.clear();
    }
    execute(&exp, &args.common)
}

fn options(
    common: &RunCommon,
    interrupt: Option<crate::signals::Interrupt>,
) -> RunOptions {
    // Read-only (GET /metrics changes nothing), so the admin rule (remote
    // only with a token) does not apply; the explicit address is the
    // "told otherwise" of the safety model, and worth a warning.
    if let Some(a) = common.metrics_listen.filter(|a| !a.ip().is_loopback()) {
        eprintln!(
            "warning: --metrics-listen {a} is not loopback: the run's metrics are readable \
             by anyone who can reach it"
        );
    }
    RunOptions {
        journal_dir: crate::journal::resolve_dir(common.journal_dir.as_deref()),
        seed: common.seed,
        progress: if common.quiet { ProgressMode::Quiet } else { ProgressMode::detect() },
        interrupt,
        metrics_listen: common.metrics_listen,
    }
}

/// Runs a loaded experiment and prints/writes its results; returns the
/// exit code. Shared by `run`, `gate` and `demo run`.
pub fn execute(exp: &Experiment, common: &RunCommon) -> u8 {
    let interrupt = match crate::signals::install() {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("chaos: cannot install signal handlers ({e}); refusing to inject");
            return exit::ENVIRONMENT;
        }
    };
    let opts = options(common, interrupt);
    // Lets `chaos halt` SIGTERM this run should it not stop on its own.
    let _registration = crate::halt::register_default("chaos run");
    let rt = match super::runner_runtime("chaos") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match rt.block_on(runner::run(exp, opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            eprintln!("chaos: nothing was injected");
            return e.exit_code();
        }
    };
    let dir = common.report_dir.join(&report.run_id);
    match report::write_all(&dir, &report) {
        Ok(_) => eprintln!("chaos: reports in {}", dir.display()),
        Err(e) => eprintln!("chaos: could not write reports to {}: {e}", dir.display()),
    }
    let mut out = std::io::stdout().lock();
    if common.json {
        match report::json::to_string_pretty(&report) {
            Ok(text) => {
                let _ = writeln!(out, "{text}");
            }
            Err(e) => eprintln!("chaos: cannot serialize the result: {e}"),
        }
    } else {
        let color =
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let _ = write!(out, "{}", report::terminal::verdict_table(&report, color));
    }
    let unreverted = report.unreverted_faults();
    if unreverted > 0 {
        eprintln!(
            "chaos: {unreverted} fault(s) could not be reverted (see the report); run \
             `chaos recover` (with `--inventory` for hosts) — exit 5 whatever the verdict"
        );
    }
    report.exit_code()
}
