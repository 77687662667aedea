//! How the recorder's per-key sums reach the verdicts and the abort
//! monitors: the fault window's share of each cohort's key buckets (a
//! difference of two cumulative copies), turned into the statistics
//! engine's per-key input (`stats::KeyData`) and into the design effects
//! the sequential monitors scale their variances by.

use crate::cohort::Cohort;
use crate::metrics::{CohortSnapshot, KeyBuckets, Recorder};
use crate::stats::{ClusteredMean, KeyData};

use super::window::{Shape, Span};

/// Both cohorts' key buckets at one moment (or over one window).
#[derive(Debug, Clone)]
pub struct KeyWindow {
    control: KeyBuckets,
    experiment: KeyBuckets,
}

impl KeyWindow {
    /// Cumulative sums so far.
    pub fn now(recorder: &Recorder) -> Self {
        KeyWindow {
            control: recorder.key_buckets(Cohort::Control),
            experiment: recorder.key_buckets(Cohort::Experiment),
        }
    }

    /// What was recorded after `earlier`.
    pub fn since(recorder: &Recorder, earlier: &KeyWindow) -> Self {
        let now = Self::now(recorder);
        KeyWindow {
            control: now.control.since(&earlier.control),
            experiment: now.experiment.since(&earlier.experiment),
        }
    }

    /// Design effects (experiment, control) of the error share and of mean
    /// ln(latency), for the abort monitors. 1 where there is too little
    /// data to say.
    pub fn design_effects(&self) -> MonitorEffects {
        let d = |sums: Vec<crate::stats::KeySums>| {
            ClusteredMean::from_keys(&sums).map(|m| m.design_effect()).unwrap_or(1.0)
        };
        MonitorEffects {
            rate: (d(self.experiment.error_sums()), d(self.control.error_sums())),
            log_latency: (
                d(self.experiment.log_latency_sums()),
                d(self.control.log_latency_sums()),
            ),
        }
    }
}

/// Design effects (experiment, control) for the sequential monitors. The
/// latency monitor reads the reservoir while these come from every
/// request: when the reservoir subsamples, the full-data design effect
/// overstates the subsample's, which only makes the monitor slower to
/// abort, never quicker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorEffects {
    pub rate: (f64, f64),
    pub log_latency: (f64, f64),
}

/// Per-key data for one hypothesis: bucket sums of errors over the fault
/// window for error rates, the key bucket of each judged sample for
/// latencies (aligned with `window::ok_latencies`), none for throughput.
pub fn key_data(
    shape: &Shape,
    control: &CohortSnapshot,
    experiment: &CohortSnapshot,
    span: Span,
    window: &KeyWindow,
) -> Option<KeyData> {
    let labels = |s: &CohortSnapshot| -> Vec<u64> {
        s.samples
            .iter()
            .filter(|x| !x.error && x.at_ms >= span.from_ms && x.at_ms < span.to_ms)
            .map(|x| u64::from(x.key))
            .collect()
    };
    match shape {
        Shape::Errors => Some(KeyData::Sums {
            experiment: window.experiment.error_sums(),
            control: window.control.error_sums(),
        }),
        Shape::Latency => Some(KeyData::Labels {
            experiment: labels(experiment),
            control: labels(control),
        }),
        Shape::Throughput => None,
    }
}
