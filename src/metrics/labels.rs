//! Every metric name the platform exports, and the typed label sets they
//! carry. Dashboards are checked against these constants, so a metric is
//! only ever named here.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write;

/// Label values come from `as_str`, so the exported text and the header
/// values can never drift apart.
macro_rules! label_value_from_as_str {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                e.write_str(self.as_str())
            }
        }
    )*};
}
label_value_from_as_str!(CohortLabel, StatusClass, FaultKindLabel);

/// Requests seen by the proxy, by cohort and status class.
pub const REQUESTS_TOTAL: &str = "chaos_requests_total";
/// Request latency (arrival to response head) by cohort.
pub const REQUEST_DURATION_SECONDS: &str = "chaos_request_duration_seconds";
/// HTTP faults injected, by fault kind.
pub const FAULTS_INJECTED_TOTAL: &str = "chaos_faults_injected_total";

/// Every exported metric family name, for dashboard checks.
pub const ALL: [&str; 3] =
    [REQUESTS_TOTAL, REQUEST_DURATION_SECONDS, FAULTS_INJECTED_TOTAL];

/// The `cohort` label: the two measured cohorts plus untouched traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CohortLabel {
    Control,
    Experiment,
    Untouched,
}

impl CohortLabel {
    /// All values, in the order the recorder indexes them.
    pub const ALL: [CohortLabel; 3] =
        [CohortLabel::Control, CohortLabel::Experiment, CohortLabel::Untouched];

    /// The label for a request's cohort (`None` = untouched).
    pub fn of(cohort: Option<crate::cohort::Cohort>) -> CohortLabel {
        match cohort {
            Some(crate::cohort::Cohort::Control) => CohortLabel::Control,
            Some(crate::cohort::Cohort::Experiment) => CohortLabel::Experiment,
            None => CohortLabel::Untouched,
        }
    }

    /// Dense index for per-cohort arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value as text.
    pub fn as_str(self) -> &'static str {
        match self {
            CohortLabel::Control => "control",
            CohortLabel::Experiment => "experiment",
            CohortLabel::Untouched => "untouched",
        }
    }
}

/// The `status_class` label. `None` means no response was sent (the
/// connection was aborted or reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    NoResponse,
}

impl StatusClass {
    /// All values, in index order.
    pub const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::NoResponse,
    ];

    /// The class of a status code; `None` (no response) maps to `NoResponse`.
    pub fn of(status: Option<u16>) -> StatusClass {
        match status {
            Some(100..=199) => StatusClass::Informational,
            Some(200..=299) => StatusClass::Success,
            Some(300..=399) => StatusClass::Redirection,
            Some(400..=499) => StatusClass::ClientError,
            Some(_) => StatusClass::ServerError,
            None => StatusClass::NoResponse,
        }
    }

    /// Dense index for per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value as text.
    pub fn as_str(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx", "none"][self.index()]
    }
}

/// The kind of an injected HTTP fault (the `kind` label and the value of
/// the `x-chaos-fault` response header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKindLabel {
    Latency,
    Error,
    Abort,
    Reset,
    Truncate,
    FlipBytes,
    JsonWrongType,
    WrongContentType,
    MissingContentType,
    Oversized,
    /// A gRPC trailers-only abort (`grpc-status`).
    Grpc,
}

impl FaultKindLabel {
    /// All values, in index order.
    pub const ALL: [FaultKindLabel; 11] = [
        FaultKindLabel::Latency,
        FaultKindLabel::Error,
        FaultKindLabel::Abort,
        FaultKindLabel::Reset,
        FaultKindLabel::Truncate,
        FaultKindLabel::FlipBytes,
        FaultKindLabel::JsonWrongType,
        FaultKindLabel::WrongContentType,
        FaultKindLabel::MissingContentType,
        FaultKindLabel::Oversized,
        FaultKindLabel::Grpc,
    ];

    /// Dense index for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label / header value.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKindLabel::Latency => "latency",
            FaultKindLabel::Error => "error",
            FaultKindLabel::Abort => "abort",
            FaultKindLabel::Reset => "reset",
            FaultKindLabel::Truncate => "malformed-truncate",
            FaultKindLabel::FlipBytes => "malformed-flip-bytes",
            FaultKindLabel::JsonWrongType => "malformed-json-wrong-type",
            FaultKindLabel::WrongContentType => "malformed-wrong-content-type",
            FaultKindLabel::MissingContentType => "malformed-missing-content-type",
            FaultKindLabel::Oversized => "malformed-oversized",
            FaultKindLabel::Grpc => "grpc",
        }
    }
}

/// Labels of [`REQUESTS_TOTAL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub cohort: CohortLabel,
    pub status_class: StatusClass,
}

/// Labels of [`REQUEST_DURATION_SECONDS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    pub cohort: CohortLabel,
}

/// Labels of [`FAULTS_INJECTED_TOTAL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FaultLabels {
    pub kind: FaultKindLabel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_name_is_prefixed_and_suffixed_by_convention() {
        for name in ALL {
            assert!(name.starts_with("chaos_"), "{name}");
            assert!(name.ends_with("_total") || name.ends_with("_seconds"), "{name}");
        }
    }

    #[test]
    fn status_classes_cover_every_code_and_missing_responses() {
        assert_eq!(StatusClass::of(Some(204)), StatusClass::Success);
        assert_eq!(StatusClass::of(Some(502)), StatusClass::ServerError);
        assert_eq!(StatusClass::of(None), StatusClass::NoResponse);
        for (i, c) in StatusClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for (i, k) in FaultKindLabel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
