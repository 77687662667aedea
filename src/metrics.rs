//! The platform's own measurements: the embedded per-cohort [`Recorder`]
//! (bounded reservoirs and per-second windows the verdict engine reads) and
//! its Prometheus exposition. Metric names live in [`labels`] only.

pub mod exposition;
pub mod histogram;
pub mod labels;
pub mod recorder;

pub use recorder::{CohortSnapshot, Outcome, Recorder, Sample, Window};
