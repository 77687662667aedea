//! `chaos`: chaos-engineering experiments with control and experiment
//! cohorts, statistical verdicts and guaranteed revert.
//!
//! Data flows one way: `experiment` (validated, read-only model) → `runner`
//! (lifecycle) which wires `traffic`, `fault`, `metrics`, `stats`, `report`.

pub mod cli;
pub mod cohort;
pub mod commands;
pub mod exit;
pub mod experiment;
pub mod outcome;
/// Until `src/metrics.rs` exists on this branch (it comes with the proxy),
/// the platform metrics live at their final path under this name.
#[path = "metrics/platform.rs"]
pub mod platform_metrics;
pub mod promql;
pub mod target;
pub mod units;
