//! The platform's own metrics (experiments run, verdicts, active faults,
//! aborts, run durations, daemon runs) with typed labels, and a tiny
//! loopback `/metrics` server the runner (`chaos run --metrics-listen`),
//! the proxy and the daemon can all reuse. Names are `pub const` here and
//! dashboards are checked against them (tests/e2e/dashboards.rs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write;

use crate::experiment::FaultKind;
use crate::outcome::{RunOutcome, Verdict};

/// Finished experiment runs, by outcome.
pub const EXPERIMENTS_TOTAL: &str = "chaos_experiments_total";
/// Hypothesis verdicts of finished runs, by verdict.
pub const HYPOTHESIS_VERDICTS_TOTAL: &str = "chaos_hypothesis_verdicts_total";
/// Faults currently applied, by fault kind (a gauge).
pub const ACTIVE_FAULTS: &str = "chaos_active_faults";
/// Runs stopped by a safety condition (abort threshold or guardrail).
pub const ABORTS_TOTAL: &str = "chaos_aborts_total";
/// Wall time of a whole run, preflight to report.
pub const EXPERIMENT_DURATION_SECONDS: &str = "chaos_experiment_duration_seconds";
/// Runs started by the continuous daemon, by schedule and outcome.
pub const DAEMON_RUNS_TOTAL: &str = "chaos_daemon_runs_total";
/// Scheduled fires that did not start, by schedule and reason (daemon).
pub const DAEMON_SKIPS_TOTAL: &str = "chaos_daemon_skips_total";
/// Schedules paused after consecutive failures or by an operator (daemon).
pub const DAEMON_SCHEDULES_PAUSED: &str = "chaos_daemon_schedules_paused";
/// Experiments or monkey strikes running now (daemon).
pub const DAEMON_RUNS_IN_PROGRESS: &str = "chaos_daemon_runs_in_progress";

/// 1 while an emergency stop (`chaos halt`) is in force (daemon).
pub const HALTED: &str = "chaos_halted";

/// Every metric family this module exports. The dashboard test checks
/// dashboards against this list together with [`super::labels::ALL`].
pub const ALL_METRIC_NAMES: &[&str] = &[
    EXPERIMENTS_TOTAL,
    HYPOTHESIS_VERDICTS_TOTAL,
    ACTIVE_FAULTS,
    ABORTS_TOTAL,
    EXPERIMENT_DURATION_SECONDS,
    DAEMON_RUNS_TOTAL,
];

/// Metric families only the continuous daemon exports (its own registry in
/// `schedule::api`); dashboards are checked against these too.
pub const DAEMON_METRIC_NAMES: &[&str] =
    &[DAEMON_SKIPS_TOTAL, DAEMON_SCHEDULES_PAUSED, DAEMON_RUNS_IN_PROGRESS, HALTED];

/// Histogram buckets for run durations: experiments last seconds to hours.
const DURATION_BUCKETS: [f64; 11] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

impl EncodeLabelValue for RunOutcome {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Verdict {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

/// The `kind` label of [`ACTIVE_FAULTS`]: the `kind = "..."` name of a
/// `[[fault]]`, so it can only take the values the experiment model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultKindName(&'static str);

impl FaultKindName {
    /// The label of a fault.
    pub fn of(kind: &FaultKind) -> FaultKindName {
        FaultKindName(kind.name())
    }

    /// The label value as text.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl EncodeLabelValue for FaultKindName {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.0)
    }
}

/// Labels of [`EXPERIMENTS_TOTAL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: RunOutcome,
}

/// Labels of [`HYPOTHESIS_VERDICTS_TOTAL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: Verdict,
}

/// Labels of [`ACTIVE_FAULTS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActiveFaultLabels {
    pub kind: FaultKindName,
}

/// Labels of [`DAEMON_RUNS_TOTAL`]. `schedule` is the schedule's name from
/// the daemon configuration (a bounded, operator-chosen set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DaemonRunLabels {
    pub schedule: String,
    pub outcome: RunOutcome,
}

/// Handles to every platform metric. Cheap to clone (the values are shared),
/// so the runner can keep one and hand clones to watchers.
#[derive(Debug, Clone)]
pub struct PlatformMetrics {
    experiments: Family<OutcomeLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    active_faults: Family<ActiveFaultLabels, Gauge>,
    aborts: Counter,
    duration: Histogram,
    daemon_runs: Family<DaemonRunLabels, Counter>,
}

impl Default for PlatformMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// prometheus-client appends `_total` to counters itself.
fn counter_base(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl PlatformMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        PlatformMetrics {
            experiments: Family::default(),
            verdicts: Family::default(),
            active_faults: Family::default(),
            aborts: Counter::default(),
            duration: Histogram::new(DURATION_BUCKETS.into_iter()),
            daemon_runs: Family::default(),
        }
    }

    /// Adds every metric to `registry` (they stay shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            counter_base(EXPERIMENTS_TOTAL),
            "Finished experiment runs by outcome",
            self.experiments.clone(),
        );
        registry.register(
            counter_base(HYPOTHESIS_VERDICTS_TOTAL),
            "Hypothesis verdicts of finished runs",
            self.verdicts.clone(),
        );
        registry.register(
            ACTIVE_FAULTS,
            "Faults currently applied, by kind",
            self.active_faults.clone(),
        );
        registry.register(
            counter_base(ABORTS_TOTAL),
            "Runs stopped early by an abort threshold or guardrail (faults reverted)",
            self.aborts.clone(),
        );
        // Registered with its unit so the family is named `..._seconds`
        // and carries `# UNIT` in OpenMetrics.
        registry.register_with_unit(
            EXPERIMENT_DURATION_SECONDS.strip_suffix("_seconds").unwrap_or_default(),
            "Wall time of whole runs",
            prometheus_client::registry::Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            counter_base(DAEMON_RUNS_TOTAL),
            "Runs started by the continuous daemon, by schedule and outcome",
            self.daemon_runs.clone(),
        );
    }

    /// Records a finished run: its outcome, every hypothesis verdict and
    /// the run's wall time.
    pub fn run_finished(
        &self,
        outcome: RunOutcome,
        verdicts: &[Verdict],
        duration: Duration,
    ) {
        self.experiments.get_or_create(&OutcomeLabels { outcome }).inc();
        for &verdict in verdicts {
            self.verdicts.get_or_create(&VerdictLabels { verdict }).inc();
        }
        self.duration.observe(duration.as_secs_f64());
    }

    /// One fault of `kind` is now applied.
    pub fn fault_applied(&self, kind: &FaultKind) {
        self.active_faults
            .get_or_create(&ActiveFaultLabels { kind: FaultKindName::of(kind) })
            .inc();
    }

    /// One fault of `kind` was reverted. Reverts are idempotent and may be
    /// repeated (signal path, then normal path), so the gauge saturates at
    /// zero instead of going negative.
    pub fn fault_reverted(&self, kind: &FaultKind) {
        let gauge = self
            .active_faults
            .get_or_create(&ActiveFaultLabels { kind: FaultKindName::of(kind) });
        let _ = gauge.inner().fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v > 0).then_some(v - 1)
        });
    }

    /// Faults of `kind` currently applied.
    pub fn active_faults(&self, kind: &FaultKind) -> i64 {
        self.active_faults
            .get_or_create(&ActiveFaultLabels { kind: FaultKindName::of(kind) })
            .get()
    }

    /// A safety condition stopped the run.
    pub fn abort(&self) {
        self.aborts.inc();
    }

    /// The daemon finished one scheduled run.
    pub fn daemon_run(&self, schedule: &str, outcome: RunOutcome) {
        self.daemon_runs
            .get_or_create(&DaemonRunLabels { schedule: schedule.to_string(), outcome })
            .inc();
    }
}

/// Errors of the exposition server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    /// The listen address could not be bound.
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running `/metrics` server; stops when dropped or on [`shutdown`].
///
/// [`shutdown`]: MetricsServer::shutdown
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting scrapes.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// OpenMetrics text, which Prometheus ≥ 2.5 negotiates natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Anything that owns a registry to expose: a plain [`Registry`] (platform
/// metrics) or the proxy's [`Recorder`](super::Recorder), so one endpoint
/// can serve both without copying metrics between registries.
pub trait HasRegistry: Send + Sync + 'static {
    /// The registry to encode at scrape time.
    fn registry(&self) -> &Registry;
}

impl HasRegistry for Registry {
    fn registry(&self) -> &Registry {
        self
    }
}

impl HasRegistry for super::Recorder {
    fn registry(&self) -> &Registry {
        super::Recorder::registry(self)
    }
}

/// Serves `GET /metrics` from `registry` on `listen` (use a loopback
/// address unless the scraper is remote). Must be called inside a tokio
/// runtime; the server runs until the returned handle is dropped.
pub async fn serve_metrics(
    listen: SocketAddr,
    registry: Arc<Registry>,
) -> Result<MetricsServer, MetricsServerError> {
    serve_registries(listen, vec![registry]).await
}

/// Like [`serve_metrics`], exposing several registries as one document
/// (e.g. the platform metrics and the proxy recorder's per-cohort metrics).
pub async fn serve_registries(
    listen: SocketAddr,
    sources: Vec<Arc<dyn HasRegistry>>,
) -> Result<MetricsServer, MetricsServerError> {
    let sources: Arc<[Arc<dyn HasRegistry>]> = sources.into();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsServerError::Bind { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsServerError::Bind { addr: listen, source })?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%e, "accepting a /metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let sources = sources.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &sources)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%peer, %e, "/metrics connection ended with an error");
                }
            });
        }
    });
    Ok(MetricsServer { addr, task })
}

/// Every registry, then one `# EOF` (OpenMetrics allows exactly one).
fn encode_all(sources: &[Arc<dyn HasRegistry>]) -> Result<String, std::fmt::Error> {
    use prometheus_client::encoding::text;
    let mut body = String::new();
    for s in sources {
        text::encode_registry(&mut body, s.registry())?;
    }
    text::encode_eof(&mut body)?;
    Ok(body)
}

fn respond<B>(
    req: &Request<B>,
    sources: &[Arc<dyn HasRegistry>],
) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let body = match encode_all(sources) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(%e, "encoding metrics failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n");
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(m: &PlatformMetrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &registry).unwrap();
        s
    }

    #[test]
    fn every_name_follows_the_naming_convention() {
        for name in ALL_METRIC_NAMES {
            assert!(name.starts_with("chaos_"), "{name}");
            let gauge = *name == ACTIVE_FAULTS;
            assert!(
                gauge || name.ends_with("_total") || name.ends_with("_seconds"),
                "{name}"
            );
        }
    }

    #[test]
    fn exports_outcomes_verdicts_and_durations_under_their_constant_names() {
        let m = PlatformMetrics::new();
        m.run_finished(
            RunOutcome::Rejected,
            &[Verdict::Accepted, Verdict::Rejected, Verdict::Rejected],
            Duration::from_secs(42),
        );
        m.abort();
        m.daemon_run("nightly", RunOutcome::Accepted);
        let text = encoded(&m);
        assert!(
            text.contains(r#"chaos_experiments_total{outcome="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"chaos_hypothesis_verdicts_total{verdict="rejected"} 2"#),
            "{text}"
        );
        assert!(text.contains("chaos_aborts_total 1"), "{text}");
        assert!(text.contains("chaos_experiment_duration_seconds_sum 42.0"), "{text}");
        assert!(
            text.contains(
                r#"chaos_daemon_runs_total{schedule="nightly",outcome="accepted"} 1"#
            ),
            "{text}"
        );
        // OpenMetrics names counter families without their `_total`.
        for name in ALL_METRIC_NAMES {
            let family = counter_base(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn several_registries_make_one_document_with_a_single_eof() {
        let m = PlatformMetrics::new();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let recorder = crate::metrics::Recorder::new(tokio::time::Instant::now(), 10);
        recorder.record_fault(crate::metrics::labels::FaultKindLabel::Latency);
        let sources: Vec<Arc<dyn HasRegistry>> =
            vec![Arc::new(registry), Arc::new(recorder)];
        let text = encode_all(&sources).unwrap();
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE chaos_experiments counter"), "{text}");
        assert!(
            text.contains(r#"chaos_faults_injected_total{kind="latency"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn active_faults_never_go_negative_on_repeated_reverts() {
        let m = PlatformMetrics::new();
        let kind = FaultKind::ProcessPause;
        m.fault_applied(&kind);
        m.fault_applied(&kind);
        m.fault_reverted(&kind);
        assert_eq!(m.active_faults(&kind), 1);
        m.fault_reverted(&kind);
        m.fault_reverted(&kind);
        assert_eq!(m.active_faults(&kind), 0);
        assert!(encoded(&m).contains(r#"chaos_active_faults{kind="process-pause"} 0"#));
    }
}
