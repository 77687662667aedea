//! PromQL metric source: runs queries against a Prometheus server's HTTP
//! API to judge hypotheses per cohort (range queries over the observation
//! window, as Kayenta does) and to evaluate guardrails (instant queries).
//!
//! The client is a small hyper-util one rather than prometheus-http-query:
//! that crate (0.9) pulls reqwest 0.13 next to our reqwest 0.12 dev-dep and,
//! with default features, rustls + aws-lc-sys (a C build), about 130 crates
//! in all, for two GET endpoints. The cost of that choice: plain `http://`
//! only (Prometheus is normally reached on loopback or through a sidecar).

mod api;
mod guardrail;
mod http;

use std::time::{Duration, SystemTime};

use crate::experiment::PrometheusSource;

pub use api::QueryKind;
pub use guardrail::{GuardrailAbort, GuardrailTask, GuardrailWatch, MAX_BLIND_CHECKS};

/// Where and how to reach Prometheus. Mapped from the experiment's
/// `[prometheus]` table with `PromConfig::from(&source)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromConfig {
    /// Base URL, e.g. `http://127.0.0.1:9090` (a path prefix such as
    /// `http://host/prometheus` is kept).
    pub url: String,
    /// Bound on every request: connect, response and body together.
    pub timeout: Duration,
    /// Resolution of range queries: one sample per step and cohort.
    pub step: Duration,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Sent as `Authorization: Basic base64(user:password)`.
    pub basic_auth: Option<(String, String)>,
    /// CA bundle (PEM) an `https://` Prometheus must chain to; the system
    /// trust store when unset.
    pub ca_file: Option<std::path::PathBuf>,
}

impl From<&PrometheusSource> for PromConfig {
    fn from(s: &PrometheusSource) -> Self {
        PromConfig {
            url: s.url.clone(),
            timeout: s.timeout,
            step: s.step,
            bearer_token: s.bearer_token.clone(),
            basic_auth: s.basic_auth.clone(),
            ca_file: s.ca_file.clone(),
        }
    }
}

/// Everything that can go wrong talking to Prometheus, with what is needed
/// to act: the URL, the query, the HTTP status and Prometheus' own message.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The configured URL cannot be used.
    #[error("invalid Prometheus URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Connection refused, DNS failure, reset...
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// No complete answer within the configured timeout.
    #[error("Prometheus at {url} did not answer within {timeout:?} (query: {query})")]
    Timeout { url: String, query: String, timeout: Duration },
    /// A non-success HTTP status, with Prometheus' error when it sent one.
    #[error("Prometheus at {url} answered HTTP {status} for query {query:?}: {message}")]
    Status { url: String, query: String, status: u16, message: String },
    /// The body was not the JSON the API documents.
    #[error("unexpected answer from Prometheus at {url} for query {query:?}: {reason}")]
    BadResponse { url: String, query: String, reason: String },
    /// The query returned several series where one value per step is needed.
    #[error(
        "query {query:?} returned {count} series (e.g. {example}); a hypothesis or \
         guardrail needs exactly one: aggregate it, e.g. sum(...) or sum by () (...)"
    )]
    MultipleSeries { query: String, count: usize, example: String },
    /// A range query whose result was not a matrix (e.g. a string).
    #[error("query {query:?} returned a {kind:?} result where numbers were expected")]
    WrongResultType { query: String, kind: QueryKind },
}

/// Per-step values of one query, evaluated once per cohort over the same
/// grid (`start`, `start + step`, ... `end`). NaN, ±Inf and steps without
/// data are dropped, so the two vectors can differ in length; an empty one
/// means "no data", which the verdict engine treats as inconclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CohortSamples {
    /// Values with `$cohort` = `control`.
    pub control: Vec<f64>,
    /// Values with `$cohort` = `experiment`.
    pub experiment: Vec<f64>,
    /// Both cohorts have a value at exactly the same steps, so value i of
    /// each describes the same moment and the two can be judged as pairs.
    pub aligned: bool,
}

/// The placeholder a hypothesis query uses for the cohort label value.
pub const COHORT_PLACEHOLDER: &str = "$cohort";

/// Replaces every `$cohort` in `template` with `cohort`.
pub fn substitute_cohort(template: &str, cohort: crate::cohort::Cohort) -> String {
    template.replace(COHORT_PLACEHOLDER, cohort_value(cohort))
}

fn cohort_value(cohort: crate::cohort::Cohort) -> &'static str {
    match cohort {
        crate::cohort::Cohort::Control => "control",
        crate::cohort::Cohort::Experiment => "experiment",
    }
}

/// Evaluates `query_template` for both cohorts as range queries over
/// `[start, end]` at `cfg.step` and returns the per-step values.
///
/// Zero series → an empty vector (no data). More than one series → an
/// error naming the query, since the values would mix unrelated series.
pub async fn cohort_samples(
    cfg: &PromConfig,
    query_template: &str,
    start: SystemTime,
    end: SystemTime,
) -> Result<CohortSamples, PromError> {
    use crate::cohort::Cohort;
    let control = substitute_cohort(query_template, Cohort::Control);
    let experiment = substitute_cohort(query_template, Cohort::Experiment);
    let (control, experiment) = tokio::try_join!(
        range_points(cfg, &control, start, end),
        range_points(cfg, &experiment, start, end),
    )?;
    let aligned = !control.is_empty()
        && control.len() == experiment.len()
        && control.iter().zip(&experiment).all(|(c, e)| c.0 == e.0);
    Ok(CohortSamples {
        control: control.into_iter().map(|p| p.1).collect(),
        experiment: experiment.into_iter().map(|p| p.1).collect(),
        aligned,
    })
}

/// Per-step values of one query over `[start, end]` (finite values only).
pub async fn range_values(
    cfg: &PromConfig,
    query: &str,
    start: SystemTime,
    end: SystemTime,
) -> Result<Vec<f64>, PromError> {
    Ok(range_points(cfg, query, start, end).await?.into_iter().map(|p| p.1).collect())
}

/// Per-step (timestamp, value) points of one query over `[start, end]`
/// (finite values only).
async fn range_points(
    cfg: &PromConfig,
    query: &str,
    start: SystemTime,
    end: SystemTime,
) -> Result<Vec<(f64, f64)>, PromError> {
    let params = [
        ("query", query.to_string()),
        ("start", unix_seconds(start)),
        ("end", unix_seconds(end)),
        ("step", format!("{:.3}", cfg.step.as_secs_f64().max(0.001))),
    ];
    let body = http::get(cfg, "/api/v1/query_range", &params, query).await?;
    let fail = |reason: String| PromError::BadResponse {
        url: cfg.url.clone(),
        query: query.to_string(),
        reason,
    };
    let data = api::parse_success(&body).map_err(fail)?;
    let series = match data {
        api::Data::Matrix(series) => series,
        other => {
            return Err(PromError::WrongResultType {
                query: query.to_string(),
                kind: other.kind(),
            })
        }
    };
    match series.len() {
        0 => Ok(Vec::new()),
        1 => Ok(series[0].finite_points()),
        n => Err(PromError::MultipleSeries {
            query: query.to_string(),
            count: n,
            example: series[0].labels(),
        }),
    }
}

/// Evaluates `query` now. `None` when there is no data (empty vector or
/// NaN); an error when the result has several series.
pub async fn instant(cfg: &PromConfig, query: &str) -> Result<Option<f64>, PromError> {
    let body =
        http::get(cfg, "/api/v1/query", &[("query", query.to_string())], query).await?;
    let fail = |reason: String| PromError::BadResponse {
        url: cfg.url.clone(),
        query: query.to_string(),
        reason,
    };
    match api::parse_success(&body).map_err(fail)? {
        api::Data::Scalar(v) => Ok(Some(v).filter(|v| !v.is_nan())),
        api::Data::Vector(series) => match series.len() {
            0 => Ok(None),
            1 => Ok(series[0].value().filter(|v| !v.is_nan())),
            n => Err(PromError::MultipleSeries {
                query: query.to_string(),
                count: n,
                example: series[0].labels(),
            }),
        },
        other => Err(PromError::WrongResultType {
            query: query.to_string(),
            kind: other.kind(),
        }),
    }
}

/// Checks a guardrail: `Some(value)` when the instant value of `query` is
/// strictly above `above` (the run must abort), `None` otherwise. No data
/// is not a breach: a guardrail guards against something measured.
pub async fn guardrail_breached(
    cfg: &PromConfig,
    query: &str,
    above: f64,
) -> Result<Option<f64>, PromError> {
    Ok(instant(cfg, query).await?.filter(|v| *v > above))
}

/// Preflight: Prometheus answers `/-/ready` (or, behind proxies that do not
/// forward it, `/api/v1/status/buildinfo`) within `cfg.timeout`.
pub async fn check_reachable(cfg: &PromConfig) -> Result<(), PromError> {
    match http::get(cfg, "/-/ready", &[], "(readiness check)").await {
        Ok(_) => Ok(()),
        Err(PromError::Status { status: 404, .. }) => {
            http::get(cfg, "/api/v1/status/buildinfo", &[], "(build info)")
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Seconds since the epoch with millisecond precision, as the API takes
/// them. Times before 1970 are clamped to 0 (never produced by a clock).
fn unix_seconds(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::Cohort;

    #[test]
    fn substitutes_every_cohort_placeholder() {
        let q = r#"sum(rate(x{cohort="$cohort"}[30s])) / sum(rate(y{cohort="$cohort"}[30s]))"#;
        let c = substitute_cohort(q, Cohort::Experiment);
        assert!(!c.contains("$cohort"));
        assert_eq!(c.matches(r#"cohort="experiment""#).count(), 2);
    }

    #[test]
    fn formats_times_as_unix_seconds_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(unix_seconds(t), "1700000000.250");
    }

    #[test]
    fn maps_the_experiment_prometheus_table() {
        let s = PrometheusSource {
            url: "http://127.0.0.1:9090".into(),
            step: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            bearer_token: Some("t".into()),
            basic_auth: None,
            ca_file: None,
        };
        let c = PromConfig::from(&s);
        assert_eq!(c.step, Duration::from_secs(5));
        assert_eq!(c.bearer_token.as_deref(), Some("t"));
    }
}
