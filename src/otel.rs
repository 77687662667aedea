//! The OpenTelemetry trace of one run (`[otel] endpoint = "http://…"`): a
//! root span for the run and, as its children, one span per lifecycle phase
//! (preflight, baseline, observe, revert, verdict), one per fault from its
//! application to its revert, and one for an abort — with the experiment's
//! name, run id, verdicts and exit code as attributes, so the run sits next
//! to the service's own traces in Jaeger or Tempo.
//!
//! This module owns [`RunTrace`], the runner's only handle: each hook is a
//! cheap in-memory call (the span model is `opentelemetry_sdk`'s); finished
//! spans go through a channel to a task that POSTs them as OTLP/HTTP
//! protobuf ([`export`]). Tracing never fails or slows a run: every export
//! is bounded by [`EXPORT_TIMEOUT`], and [`RunTrace::finish`] waits at most
//! [`FLUSH_BUDGET`] for the last one. Without `[otel]` every hook is a
//! no-op.

pub mod export;

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use crate::experiment::OtelSink;
use crate::report::{AbortInfo, RunReport, TraceInfo};

/// Longest one POST to the collector may take (connect + answer).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest the end of a run waits for the last spans to be delivered.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(1);

/// The lifecycle phases, each one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Targets, privileges, upstream health, proxies started.
    Preflight,
    /// Fault-free observation.
    Baseline,
    /// Faults active, abort watch running.
    Observe,
    /// Every fault reverted.
    Revert,
    /// Statistics and the outcome.
    Verdict,
}

impl Phase {
    /// The span name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Baseline => "baseline",
            Phase::Observe => "observe",
            Phase::Revert => "revert",
            Phase::Verdict => "verdict",
        }
    }
}

/// Normalizes an `[otel] endpoint`: `http://HOST:PORT` gets the OTLP
/// traces path `/v1/traces` (as `OTEL_EXPORTER_OTLP_ENDPOINT` does); a URL
/// with a path is used as written (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
pub fn endpoint_url(s: &str) -> Result<String, String> {
    if s.starts_with("https://") {
        return Err("https is not supported; send to a local collector or agent over \
                    http"
            .into());
    }
    let Some(rest) = s.strip_prefix("http://") else {
        return Err("expected a URL starting with http://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err("expected http://HOST:PORT".into()),
    }
    let url = if path.is_empty() || path == "/" {
        format!("http://{authority}/v1/traces")
    } else {
        s.to_string()
    };
    url.parse::<http::Uri>().map_err(|e| format!("not a valid URL ({e})"))?;
    Ok(url)
}

/// The trace of one run, or nothing when tracing is off.
#[derive(Debug, Default)]
pub struct RunTrace {
    active: Option<Active>,
}

#[derive(Debug)]
struct Active {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    root: Context,
    phase: Option<(Phase, Span)>,
    faults: HashMap<String, Span>,
    endpoint: String,
    exporter: tokio::task::JoinHandle<export::Delivery>,
}

impl RunTrace {
    /// No tracing.
    pub fn off() -> RunTrace {
        RunTrace::default()
    }

    /// Opens the root span and the preflight phase; must be called on a
    /// tokio runtime (the exporter is a task on it).
    pub fn start(sink: Option<&OtelSink>, experiment: &str, run_id: &str) -> RunTrace {
        let Some(sink) = sink else { return RunTrace::off() };
        let Ok(uri) = sink.endpoint.parse::<http::Uri>() else {
            // Validation guarantees a URL; a trace is never worth failing for.
            tracing::warn!(endpoint = %sink.endpoint, "invalid OTLP endpoint, tracing off");
            return RunTrace::off();
        };
        let resource = Resource::builder_empty()
            .with_service_name(sink.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let (processor, rx) = export::ChannelProcessor::new();
        let exporter = tokio::spawn(export::deliver(rx, uri, (&resource).into()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let scope = InstrumentationScope::builder("chaos")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        let root_span = tracer
            .span_builder(format!("chaos run: {experiment}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("chaos.experiment.name", experiment.to_string()),
                KeyValue::new("chaos.run_id", run_id.to_string()),
            ])
            .start_with_context(&tracer, &Context::new());
        let root = Context::new().with_span(root_span);
        let mut trace = RunTrace {
            active: Some(Active {
                provider,
                tracer,
                root,
                phase: None,
                faults: HashMap::new(),
                endpoint: sink.endpoint.clone(),
                exporter,
            }),
        };
        trace.phase(Phase::Preflight);
        trace
    }

    /// The run's trace id (32 hex digits), when tracing.
    pub fn trace_id(&self) -> Option<String> {
        let a = self.active.as_ref()?;
        Some(a.root.span().span_context().trace_id().to_string())
    }

    /// Ends the current phase's span and opens `phase`'s.
    pub fn phase(&mut self, phase: Phase) {
        let Some(a) = self.active.as_mut() else { return };
        if let Some((_, mut span)) = a.phase.take() {
            span.end();
        }
        let span = a.child(phase.as_str(), Vec::new());
        a.phase = Some((phase, span));
    }

    /// A fault started: its span runs until [`RunTrace::fault_reverted`].
    pub fn fault_applied(&mut self, id: &str, kind: &str, description: &str) {
        let Some(a) = self.active.as_mut() else { return };
        if a.faults.contains_key(id) {
            return;
        }
        let span = a.child(
            &format!("fault {id}"),
            vec![
                KeyValue::new("chaos.fault.id", id.to_string()),
                KeyValue::new("chaos.fault.kind", kind.to_string()),
                KeyValue::new("chaos.fault.description", description.to_string()),
            ],
        );
        a.faults.insert(id.to_string(), span);
    }

    /// A fault struck again (a repeated kill): an event on its span.
    pub fn fault_repeated(&mut self, id: &str) {
        if let Some(span) = self.active.as_mut().and_then(|a| a.faults.get_mut(id)) {
            span.add_event("repeated", Vec::new());
        }
    }

    /// A fault was reverted (idempotent: later calls for it do nothing).
    pub fn fault_reverted(&mut self, id: &str, error: Option<&str>) {
        let Some(mut span) = self.active.as_mut().and_then(|a| a.faults.remove(id))
        else {
            return;
        };
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("chaos.fault.revert_error", e.to_string()));
            span.set_status(Status::error(format!("revert failed: {e}")));
        }
        span.end();
    }

    /// The run was stopped early: an `abort` span at this moment.
    pub fn aborted(&mut self, abort: Option<&AbortInfo>) {
        let (Some(a), Some(abort)) = (self.active.as_mut(), abort) else { return };
        let mut attrs = vec![
            KeyValue::new("chaos.abort.reason", abort.reason.clone()),
            KeyValue::new("chaos.abort.at_s", abort.at_s),
        ];
        if let Some(h) = &abort.hypothesis {
            attrs.push(KeyValue::new("chaos.abort.hypothesis", h.clone()));
        }
        if abort.p_value.is_finite() {
            attrs.push(KeyValue::new("chaos.abort.p_value", abort.p_value));
        }
        let mut span = a.child("abort", attrs);
        span.set_status(Status::error(abort.reason.clone()));
        span.end();
    }

    /// Ends every span with the run's result and waits (at most
    /// [`FLUSH_BUDGET`]) for the exporter; says where the trace went.
    pub async fn finish(
        mut self,
        result: Result<&RunReport, (u8, &str)>,
    ) -> Option<TraceInfo> {
        let trace_id = self.trace_id()?;
        let mut a = self.active.take()?;
        if let Some((_, mut span)) = a.phase.take() {
            span.end();
        }
        for (_, mut span) in a.faults.drain() {
            span.end();
        }
        let root = a.root.span();
        match result {
            Ok(report) => {
                let code = report.exit_code();
                let strings = |f: &dyn Fn(&crate::report::HypothesisResult) -> String| {
                    Value::Array(Array::String(
                        report
                            .hypotheses
                            .iter()
                            .map(|h| StringValue::from(f(h)))
                            .collect(),
                    ))
                };
                root.set_attribute(KeyValue::new(
                    "chaos.outcome",
                    report.outcome.as_str().to_string(),
                ));
                root.set_attribute(KeyValue::new("chaos.exit_code", i64::from(code)));
                root.set_attribute(KeyValue::new(
                    "chaos.hypotheses",
                    strings(&|h| h.name.clone()),
                ));
                root.set_attribute(KeyValue::new(
                    "chaos.verdicts",
                    strings(&|h| h.verdict.as_str().to_string()),
                ));
                for h in &report.hypotheses {
                    root.add_event(
                        "verdict",
                        vec![
                            KeyValue::new("chaos.hypothesis", h.name.clone()),
                            KeyValue::new(
                                "chaos.verdict",
                                h.verdict.as_str().to_string(),
                            ),
                            KeyValue::new("chaos.metric", h.metric.clone()),
                            KeyValue::new("chaos.tolerance", h.tolerance.clone()),
                        ],
                    );
                }
                if code != crate::exit::OK {
                    root.set_status(Status::error(format!(
                        "{} (exit {code})",
                        report.outcome.as_str()
                    )));
                }
            }
            Err((code, why)) => {
                root.set_attribute(KeyValue::new("chaos.outcome", "not-started"));
                root.set_attribute(KeyValue::new("chaos.exit_code", i64::from(code)));
                root.set_status(Status::error(why.to_string()));
            }
        }
        root.end();
        // Closes the channel once the last span is in it: the exporter sends
        // what is left and ends.
        let _ = a.provider.shutdown();
        drop(a.tracer);
        drop(a.provider);
        let delivery = match tokio::time::timeout(FLUSH_BUDGET, &mut a.exporter).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => export::Delivery::failed(format!("exporter task failed: {e}")),
            Err(_) => {
                a.exporter.abort();
                export::Delivery::failed(format!(
                    "the collector did not take the trace within {FLUSH_BUDGET:?}"
                ))
            }
        };
        if let Some(e) = &delivery.error {
            tracing::warn!(endpoint = %a.endpoint, error = %e, "trace not delivered");
        }
        Some(TraceInfo {
            trace_id,
            endpoint: a.endpoint,
            delivered: delivery.error.is_none() && delivery.spans > 0,
            error: delivery.error,
        })
    }
}

impl Active {
    fn child(&self, name: &str, attrs: Vec<KeyValue>) -> Span {
        self.tracer
            .span_builder(name.to_string())
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_path_gets_the_otlp_traces_path() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint_url("http://tempo:4318/otlp/v1/traces").unwrap(),
            "http://tempo:4318/otlp/v1/traces"
        );
        for bad in ["https://x:4318", "grpc://x:4317", "http://x", "http://:4318", ""] {
            assert!(endpoint_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn without_otel_every_hook_is_a_no_op() {
        let mut t = RunTrace::start(None, "x", "run");
        t.phase(Phase::Baseline);
        t.fault_applied("f", "latency", "d");
        t.fault_reverted("f", None);
        assert_eq!(t.trace_id(), None);
        assert_eq!(t.finish(Err((5, "no"))).await, None);
    }
}
