//! Prometheus exposition of the recorder's counters through
//! prometheus-client. Values live in plain atomics indexed by the typed
//! label enums (no map lookup or lock per request); a [`Collector`] turns
//! them into labelled families at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::histogram::AtomicHistogram;
use super::labels::{
    CohortLabel, DurationLabels, FaultKindLabel, FaultLabels, RequestLabels, StatusClass,
    FAULTS_INJECTED_TOTAL, REQUESTS_TOTAL, REQUEST_DURATION_SECONDS,
};

/// The raw values behind every exported metric.
#[derive(Debug, Default)]
pub struct PromState {
    requests: [[AtomicU64; 6]; 3],
    durations: [AtomicHistogram; 3],
    faults: [AtomicU64; FaultKindLabel::ALL.len()],
}

impl PromState {
    /// Counts one request.
    pub fn record(&self, cohort: CohortLabel, class: StatusClass, latency: Duration) {
        self.requests[cohort.index()][class.index()].fetch_add(1, Ordering::Relaxed);
        self.durations[cohort.index()].observe(latency);
    }

    /// Counts one fault.
    pub fn record_fault(&self, kind: FaultKindLabel) {
        self.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Faults of one kind so far.
    pub fn faults_injected(&self, kind: FaultKindLabel) -> u64 {
        self.faults[kind.index()].load(Ordering::Relaxed)
    }
}

/// Counter names are registered without `_total`; the encoder appends it.
fn counter_base(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// Scrape-time view of a shared [`PromState`].
#[derive(Debug)]
pub struct Collector(pub std::sync::Arc<PromState>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        {
            let mut family = encoder.encode_descriptor(
                counter_base(REQUESTS_TOTAL),
                "Requests through the chaos proxy by cohort and status class.",
                None,
                MetricType::Counter,
            )?;
            for cohort in CohortLabel::ALL {
                for class in StatusClass::ALL {
                    // Zeros are exported too: rate() needs the series to
                    // exist before the first error arrives.
                    let v =
                        s.requests[cohort.index()][class.index()].load(Ordering::Relaxed);
                    let labels = RequestLabels { cohort, status_class: class };
                    ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                REQUEST_DURATION_SECONDS,
                "Time from request arrival to response head, by cohort.",
                None,
                MetricType::Histogram,
            )?;
            for cohort in CohortLabel::ALL {
                let (sum, count, buckets) = s.durations[cohort.index()].read();
                let labels = DurationLabels { cohort };
                family
                    .encode_family(&labels)?
                    .encode_histogram::<()>(sum, count, &buckets, None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                counter_base(FAULTS_INJECTED_TOTAL),
                "HTTP faults injected into the experiment cohort, by kind.",
                None,
                MetricType::Counter,
            )?;
            for kind in FaultKindLabel::ALL {
                let v = s.faults[kind.index()].load(Ordering::Relaxed);
                ConstCounter::new(v)
                    .encode(family.encode_family(&FaultLabels { kind })?)?;
            }
        }
        Ok(())
    }
}
