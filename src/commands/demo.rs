//! `chaos demo …`: the demo subcommand group. `fleet` starts the demo
//! services in the foreground; the runner-driven `run` joins this enum.

use clap::{Args, Subcommand};

use super::demo_fleet;

/// `chaos demo` arguments.
#[derive(Debug, Args)]
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
}

/// Runs a `chaos demo` subcommand and returns its exit code.
pub fn run(args: DemoArgs) -> u8 {
    match args.command {
        DemoCommand::Fleet(a) => demo_fleet::run_fleet(a),
    }
}
