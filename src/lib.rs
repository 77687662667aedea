//! `chaos`: chaos-engineering experiments with control and experiment
//! cohorts, statistical verdicts and guaranteed revert.
//!
//! Data flows one way: `experiment` (validated, read-only model) → `runner`
//! (lifecycle) which wires `traffic`, `fault`, `metrics`, `stats`, `report`.

pub mod agent;
pub mod cli;
pub mod cohort;
pub mod commands;
pub mod demo;
pub mod exit;
pub mod experiment;
pub mod fault;
pub mod fleet;
pub mod halt;
pub mod input_file;
pub mod journal;
pub mod k8s;
pub mod load;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod promql;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod signals;
pub mod stats;
pub mod target;
pub mod tls;
pub mod traffic;
pub mod units;
