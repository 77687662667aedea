//! `chaos demo run`: the README's main job. Starts the demo fleet, runs one
//! real experiment against the resilient variant and then the fragile one,
//! and prints both verdict tables and a summary.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::run::{execute, RunCommon};
use crate::cohort::Cohort;
use crate::demo::{Fleet, FleetSpec};
use crate::demo::{Region, Variant};
use crate::exit;
use crate::experiment;

/// The default demo experiment, embedded so `chaos demo run` works from
/// any directory.
const DEFAULT_EXPERIMENT: &str = include_str!("../../experiments/replica-kill.toml");

pub(crate) const DEMO_RUN_HELP: &str = "Examples:
  chaos demo run                                   # replica kill, resilient then fragile
  chaos demo run --experiment experiments/payments-latency.toml
  chaos demo run --variant fragile --json

Starts the demo fleet on loopback (per cohort: an API and payments replicas
in us-east and eu-west, as separate processes), runs the experiment through
the cohort proxy with synthetic user traffic, reverts every fault, and
prints the verdicts. Expected: accepted for the resilient API (timeouts,
retry in the other region, fallback) and rejected or aborted for the
fragile one. Exit 0 when the demo shows exactly that.";

/// Which variants to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Resilient, then fragile.
    Both,
    /// Only the resilient API.
    Resilient,
    /// Only the fragile API.
    Fragile,
}

/// Arguments of `chaos demo run`.
#[derive(Debug, Args)]
#[command(after_help = DEMO_RUN_HELP)]
pub struct DemoRunArgs {
    /// Experiment file (default: the embedded replica-kill experiment).
    #[arg(long, value_name = "FILE")]
    pub experiment: Option<PathBuf>,
    /// Which API variant(s) to run it against.
    #[arg(long, value_enum, default_value = "both")]
    pub variant: Which,
    /// Write each run's reports into DIR/RUN_ID/.
    #[arg(long, value_name = "DIR", default_value = "reports")]
    pub report_dir: PathBuf,
    /// Print each result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No live progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Fault journal directory.
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `chaos demo run`.
pub fn run(args: DemoRunArgs) -> u8 {
    // Handlers first: a Ctrl-C while the fleet starts must still stop it.
    if let Err(e) = crate::signals::install() {
        eprintln!("chaos: cannot install signal handlers: {e}");
        return exit::ENVIRONMENT;
    }
    let work = match tempfile::Builder::new().prefix("chaos-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("chaos: cannot create a work directory: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let (file, text) = match &args.experiment {
        Some(p) => match crate::input_file::read_text(
            p,
            crate::experiment::MAX_FILE_BYTES as u64,
        ) {
            Ok(t) => (p.clone(), t),
            Err(e) => {
                eprintln!("chaos: cannot read {}: {e}", p.display());
                return exit::INVALID;
            }
        },
        None => (
            PathBuf::from("experiments/replica-kill.toml"),
            DEFAULT_EXPERIMENT.to_string(),
        ),
    };
    let variants: &[Variant] = match args.variant {
        Which::Both => &[Variant::Resilient, Variant::Fragile],
        Which::Resilient => &[Variant::Resilient],
        Which::Fragile => &[Variant::Fragile],
    };
    let mut results = Vec::new();
    for &variant in variants {
        eprintln!(
            "\n=== demo: {} against the {} API ===",
            file.display(),
            variant.as_str()
        );
        let code = run_variant(&args, variant, &file, &text, work.path());
        results.push((variant, code));
        if code == exit::INTERRUPTED || code == exit::ENVIRONMENT || code == exit::INVALID
        {
            break;
        }
    }
    summarize(&results)
}

fn run_variant(
    args: &DemoRunArgs,
    variant: Variant,
    file: &Path,
    text: &str,
    work: &Path,
) -> u8 {
    let ports = (free_port(), free_port(), free_port());
    let (Ok(edge), Ok(use1), Ok(euw1)) = ports else {
        eprintln!("chaos: no free loopback port");
        return exit::ENVIRONMENT;
    };
    let sidecar = |p: u16| format!("127.0.0.1:{p}");
    std::env::set_var("CHAOS_DEMO_LISTEN", sidecar(edge));
    std::env::set_var("CHAOS_DEMO_SIDECAR_US_EAST", sidecar(use1));
    std::env::set_var("CHAOS_DEMO_SIDECAR_EU_WEST", sidecar(euw1));
    // A first look at the file tells whether the API must reach payments
    // through the experiment's sidecars.
    let uses_sidecars = experiment::load_bytes(file, text.as_bytes())
        .experiment
        .is_some_and(|e| !e.traffic.sidecars.is_empty());
    let mut spec = FleetSpec::new(variant, work.join(variant.as_str()));
    if uses_sidecars {
        for pool in Cohort::ALL {
            spec.payments_urls_override
                .insert((pool, Region::UsEast), format!("http://{}", sidecar(use1)));
            spec.payments_urls_override
                .insert((pool, Region::EuWest), format!("http://{}", sidecar(euw1)));
        }
    }
    let mut fleet = match Fleet::start(spec) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chaos: demo fleet failed to start: {e}");
            return exit::ENVIRONMENT;
        }
    };
    for (k, v) in fleet.env_vars() {
        std::env::set_var(k, v);
    }
    for p in fleet.processes() {
        eprintln!("chaos: demo {:<44} pid {:>7}  {}", p.name, p.pid, p.url());
    }
    let loaded = experiment::load_bytes(file, text.as_bytes());
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    let code = match loaded.experiment {
        Some(exp) => {
            let common = RunCommon {
                file: file.to_path_buf(),
                report_dir: args.report_dir.clone(),
                json: args.json,
                journal_dir: args.journal_dir.clone(),
                seed: None,
                quiet: args.quiet,
                metrics_listen: None,
                inventory: None,
            };
            execute(&exp, &common)
        }
        None => exit::INVALID,
    };
    fleet.shutdown();
    code
}

fn word(code: u8) -> &'static str {
    match code {
        exit::OK => "ACCEPTED",
        exit::REJECTED => "REJECTED",
        exit::ABORTED => "ABORTED",
        exit::INCONCLUSIVE => "INCONCLUSIVE",
        exit::INTERRUPTED => "INTERRUPTED",
        exit::ENVIRONMENT => "ENVIRONMENT ERROR",
        _ => "INVALID",
    }
}

fn summarize(results: &[(Variant, u8)]) -> u8 {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n=== demo summary ===");
    for (v, code) in results {
        let _ = writeln!(out, "  {:<10} {} (exit {code})", v.as_str(), word(*code));
    }
    let of = |v: Variant| results.iter().find(|(x, _)| *x == v).map(|(_, c)| *c);
    let resilient_ok = of(Variant::Resilient).is_none_or(|c| c == exit::OK);
    let fragile_caught =
        of(Variant::Fragile).is_none_or(|c| c == exit::REJECTED || c == exit::ABORTED);
    if let Some(bad) = results
        .iter()
        .map(|(_, c)| *c)
        .find(|c| matches!(*c, exit::INTERRUPTED | exit::ENVIRONMENT | exit::INVALID))
    {
        return bad;
    }
    if resilient_ok && fragile_caught {
        let _ = writeln!(
            out,
            "  → the experiment tells them apart: the resilient API holds its steady state, \
             the fragile one does not."
        );
        exit::OK
    } else {
        let _ = writeln!(out, "  → unexpected: see the verdict tables above");
        exit::REJECTED
    }
}
