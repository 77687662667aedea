//! Glue between the CLI and the library: one module per subcommand. Each
//! `run` returns an exit code from [`crate::exit`]; `anyhow` is allowed here
//! (and only here) to attach file and target context to errors.

pub mod agent;
pub mod analyze;
pub mod completions;
pub mod continuous;
pub mod demo;
pub mod demo_fleet;
pub mod demo_run;
pub mod fleet;
pub mod gameday;
pub mod halt;
pub mod history;
pub mod inject;
pub mod kill;
pub mod man;
pub mod promql;
pub mod proxy;
pub mod recover;
pub mod report;
pub mod run;
pub mod validate;

/// The runtime every experiment-running command (`run`, `gate`, `demo run`,
/// `gameday`, `continuous`) drives the runner on: two workers, enough for
/// the proxy, the load generator and the abort watch on a small host.
/// On failure it says so under `command`'s name and returns the exit code.
pub(crate) fn runner_runtime(command: &str) -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{command}: cannot start the async runtime: {e}");
            crate::exit::ENVIRONMENT
        })
}
