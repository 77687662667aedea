//! Command-line definitions (clap derive) and dispatch: one glue function
//! per subcommand in `commands/`, which maps results onto exit codes.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use crate::commands;
use crate::exit;

/// One line: `chaos -h` and the NAME line of the man page.
const SHORT_ABOUT: &str = "Run chaos experiments that prove a service survives failure.";

const ABOUT: &str = "Run chaos experiments that prove a service survives failure.

chaos splits live HTTP traffic into a small control cohort and an equally
small experiment cohort, injects faults only into the experiment cohort,
compares both with proper statistics and always reverts what it injected.";

const AFTER_HELP: &str = "Exit codes: 0 accepted, 1 rejected, 2 invalid input, 3 aborted,
4 inconclusive, 5 environment error, 130 interrupted (faults reverted).

Start with:  chaos validate experiments/*.toml";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about = SHORT_ABOUT, long_about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log verbosity for diagnostics on stderr (e.g. "debug", "chaos=trace").
    #[arg(long, global = true, env = "CHAOS_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand; each variant's arguments live beside its glue code.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check experiment files and report every problem with file:line:col.
    Validate(commands::validate::ValidateArgs),
    /// Run an experiment: preflight, baseline, inject, observe, revert, verdict.
    Run(commands::run::RunArgs),
    /// CI gate: judge a canary pool against a baseline pool on live traffic.
    Gate(commands::run::GateArgs),
    /// Compare experiment and control samples offline: one test or one hypothesis.
    Analyze(commands::analyze::AnalyzeArgs),
    /// Run the cohort proxy: split traffic, fault the experiment cohort.
    #[command(after_help = commands::proxy::AFTER_HELP)]
    Proxy(commands::proxy::ProxyArgs),
    /// Signal a share of the processes matching a target (journalled).
    #[command(after_help = commands::kill::AFTER_HELP)]
    Kill(commands::kill::KillArgs),
    /// Hold one infrastructure fault for a duration or until Ctrl-C, then revert.
    #[command(after_help = commands::inject::AFTER_HELP)]
    Inject(commands::inject::InjectArgs),
    /// Revert every fault a killed chaos runner left behind.
    #[command(after_help = commands::recover::AFTER_HELP)]
    Recover(commands::recover::RecoverArgs),
    /// Emergency stop: every chaos runner on this machine reverts and stops.
    #[command(after_help = commands::halt::HALT_AFTER_HELP)]
    Halt(commands::halt::HaltArgs),
    /// Lift `chaos halt`: experiments may start again.
    #[command(after_help = commands::halt::RESUME_AFTER_HELP)]
    Resume(commands::halt::ResumeArgs),
    /// Re-render stored result.json files (terminal table, JUnit, HTML).
    Report(commands::report::ReportArgs),
    /// The demo: a fleet on loopback and a real experiment against it.
    Demo(commands::demo::DemoArgs),
    /// Internal: one demo process (spawned by `chaos demo fleet`).
    #[command(hide = true)]
    DemoService(commands::demo_fleet::ServiceArgs),
    /// Try a PromQL hypothesis (with $cohort) or guardrail query against Prometheus.
    Promql(commands::promql::PromqlArgs),
    /// List and show past runs recorded by `chaos continuous`.
    History(commands::history::HistoryArgs),
    /// Run a game day: experiments, checkpoints and pauses in order.
    Gameday(commands::gameday::GamedayArgs),
    /// The continuous-experiment daemon: cron schedules, Chaos Monkey, history.
    Continuous(commands::continuous::ContinuousArgs),
    /// Serve the fault engine to a remote controller (over SSH), with a lease.
    #[command(after_help = commands::agent::AFTER_HELP)]
    Agent(commands::agent::AgentArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = commands::completions::AFTER_HELP)]
    Completions(commands::completions::CompletionsArgs),
    /// Print the manual page, or write one page per subcommand into a directory.
    #[command(after_help = commands::man::AFTER_HELP)]
    Man(commands::man::ManArgs),
}

/// Parses the command line, runs the subcommand and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    exit::code(exit::OK)
                }
                _ => exit::code(exit::INVALID),
            };
        }
    };
    init_logging(&cli.log);
    let code = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Gate(args) => commands::run::gate(args),
        Command::Analyze(args) => commands::analyze::run(&args),
        Command::Proxy(args) => commands::proxy::run(args),
        Command::Kill(args) => commands::kill::run(args),
        Command::Inject(args) => commands::inject::run(args),
        Command::Recover(args) => commands::recover::run(args),
        Command::Halt(args) => commands::halt::run_halt(args),
        Command::Resume(args) => commands::halt::run_resume(args),
        Command::Report(args) => commands::report::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::DemoService(args) => commands::demo_fleet::run_service(args),
        Command::Promql(args) => commands::promql::run(args),
        Command::History(args) => commands::history::run(args),
        Command::Gameday(args) => commands::gameday::run(args),
        Command::Continuous(args) => commands::continuous::run(args),
        Command::Agent(args) => commands::agent::run(args),
        Command::Completions(args) => commands::completions::run(&args),
        Command::Man(args) => commands::man::run(&args),
    };
    exit::code(code)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
