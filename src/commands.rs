//! Glue between the CLI and the library: one module per subcommand. Each
//! `run` returns an exit code from [`crate::exit`]; `anyhow` is allowed here
//! (and only here) to attach file and target context to errors.
pub mod history;
pub mod validate;
