//! `chaos demo …`: the demo subcommand group. `fleet` starts the demo
//! services in the foreground; the runner-driven `run` joins this enum.

use clap::{Args, Subcommand};

use super::demo_fleet;

/// Help epilogue of `chaos demo`.
const DEMO_AFTER_HELP: &str = "\
Example:
  chaos demo fleet --variant resilient --dir /tmp/demo    # Ctrl-C stops it
  chaos demo load --target http://127.0.0.1:PORT/checkout --rate 200 --duration 10s";

/// `chaos demo` arguments.
#[derive(Debug, Args)]
#[command(after_help = DEMO_AFTER_HELP)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: DemoCommand,
}

/// Every `chaos demo` subcommand.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Start the demo fleet (API + payments in two regions, per pool) in the
    /// foreground until Ctrl-C.
    #[command(after_help = demo_fleet::FLEET_AFTER_HELP)]
    Fleet(demo_fleet::FleetArgs),
    /// Send open-loop load (fixed rate, random user ids) to a URL and print
    /// the counts as JSON.
    #[command(after_help = demo_fleet::LOAD_AFTER_HELP)]
    Load(demo_fleet::LoadArgs),
    /// Run a demo experiment end to end against the resilient and the
    /// fragile API and print both verdict tables.
    Run(super::demo_run::DemoRunArgs),
}

/// Runs a `chaos demo` subcommand and returns its exit code.
pub fn run(args: DemoArgs) -> u8 {
    match args.command {
        DemoCommand::Fleet(a) => demo_fleet::run_fleet(a),
        DemoCommand::Run(a) => super::demo_run::run(a),
        DemoCommand::Load(a) => demo_fleet::run_load(a),
    }
}
