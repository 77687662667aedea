//! The platform's own measurements: the embedded per-cohort [`Recorder`]
//! (bounded reservoirs and per-second windows the verdict engine reads) and
//! its Prometheus exposition. Metric names live in [`labels`] (proxy) and
//! [`platform`] (runner, daemon) only.

pub mod exposition;
pub mod histogram;
pub mod keys;
pub mod labels;
pub mod platform;
pub mod recorder;

pub use keys::{KeyBuckets, KeySketch};
pub use recorder::{CohortSnapshot, Outcome, Recorder, Sample, Window};
