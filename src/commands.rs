//! Glue between the CLI and the library: one module per subcommand. Each
//! `run` returns an exit code from [`crate::exit`]; `anyhow` is allowed here
//! (and only here) to attach file and target context to errors.

pub mod analyze;
pub mod continuous;
pub mod demo;
pub mod demo_fleet;
pub mod demo_run;
pub mod gameday;
pub mod history;
pub mod inject;
pub mod kill;
pub mod promql;
pub mod proxy;
pub mod recover;
pub mod report;
pub mod run;
pub mod validate;
