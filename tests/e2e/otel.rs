//! `chaos run` with `[otel]`: a real OTLP/HTTP receiver built here on the
//! `opentelemetry-proto` types (hyper on 127.0.0.1:0, protobuf decoded
//! with prost) gets one trace per run — root span, phases, faults, abort —
//! with the attributes Jaeger or Tempo users search by; and a collector
//! that refuses or hangs neither fails a run nor slows it by more than
//! the 1 s flush budget.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{chaos_bin, ClosedPort};

/// Every span a receiver got, with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered like a collector does.
async fn otlp_receiver() -> (SocketAddr, Received) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got: Received = Arc::default();
    let store = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers()["content-type"]
                                    == "application/x-protobuf";
                            let body =
                                req.into_body().collect().await.unwrap().to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if ok => {
                                    let mut store = store.lock().unwrap();
                                    for rs in r.resource_spans {
                                        let service = rs
                                            .resource
                                            .as_ref()
                                            .and_then(|r| {
                                                attr(&r.attributes, "service.name")
                                            })
                                            .and_then(as_str)
                                            .unwrap_or_default();
                                        for ss in rs.scope_spans {
                                            for span in ss.spans {
                                                store.push((service.clone(), span));
                                            }
                                        }
                                    }
                                    200
                                }
                                _ => 400,
                            };
                            let answer =
                                ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// The service under test: answers 200 to everything.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            "ok",
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}

fn as_str(v: &AnyValue) -> Option<String> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn str_attr(span: &Span, key: &str) -> String {
    attr(&span.attributes, key)
        .and_then(as_str)
        .unwrap_or_else(|| panic!("{}: no string attribute {key}", span.name))
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(&span.attributes, key).and_then(|v| v.value.clone()) {
        Some(any_value::Value::IntValue(i)) => i,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn strings_attr(span: &Span, key: &str) -> Vec<String> {
    match attr(&span.attributes, key).and_then(|v| v.value.clone()) {
        Some(any_value::Value::ArrayValue(a)) => {
            a.values.iter().filter_map(as_str).collect()
        }
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 1 s baseline + `duration` run at 200 req/s, 50% / 50%, on `up`.
fn experiment(up: SocketAddr, duration: &str, otel: &str, rest: &str) -> String {
    format!(
        r#"
[experiment]
name = "traced checkout"
duration = "{duration}"
baseline = "1s"
min_samples = 20

[traffic]
listen = "127.0.0.1:0"
upstream = "http://{up}"
cohort_key = "header:x-user-id"
experiment_percent = 50
control_percent = 50

[load]
path = "/"
rate = 200
concurrency = 16
keys = 5000

[[hypothesis]]
name = "errors stay flat"
metric = "error_rate"
tolerance = "+50pp"
{rest}
{otel}
"#
    )
}

/// `chaos run --quiet --json FILE`: output, wall time, result.json.
fn run(dir: &Path, name: &str, text: &str) -> (Output, Duration, Value) {
    let file: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let t = Instant::now();
    let out = Command::new(chaos_bin())
        .args(["run", "--quiet", "--json", "--report-dir"])
        .arg(dir.join(format!("reports-{name}")))
        .arg(&file)
        .env("CHAOS_JOURNAL_DIR", dir.join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run chaos");
    let took = t.elapsed();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: stdout is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, took, result)
}

fn spans_of(got: &Received, trace_id: &str) -> Vec<Span> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id)
        .map(|(_, s)| s.clone())
        .collect()
}

#[test]
fn each_run_sends_one_trace_with_phase_fault_and_abort_spans_under_its_root() {
    let _heavy = crate::support::heavy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream());
    let (otlp, got) = rt.block_on(otlp_receiver());
    let dir = tempfile::tempdir().unwrap();
    let otel =
        format!("[otel]\nendpoint = \"http://{otlp}\"\nservice_name = \"chaos-e2e\"");

    // An accepted run with a latency fault that starts and stops inside it.
    let fault = r#"
[[fault]]
kind = "latency"
name = "slow"
delay = "2ms"
start = "500ms"
duration = "1s"
"#;
    let text = experiment(up, "2500ms", &otel, fault);
    let (out, _, result) = run(dir.path(), "accepted", &text);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = &result["trace"];
    let trace_id = trace["trace_id"].as_str().expect("trace id in result.json");
    assert_eq!(trace_id.len(), 32, "{trace}");
    assert_eq!(trace["endpoint"], format!("http://{otlp}/v1/traces"));
    assert_eq!(trace["delivered"], true, "{trace}");
    assert!(trace["error"].is_null(), "{trace}");
    let errs = crate::report::schema_errors(&result);
    assert!(errs.is_empty(), "{errs:#?}");

    let spans = spans_of(&got, trace_id);
    let services: Vec<String> =
        got.lock().unwrap().iter().map(|(s, _)| s.clone()).collect();
    assert!(services.iter().all(|s| s == "chaos-e2e"), "{services:?}");
    let by_name: HashMap<&str, &Span> =
        spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 7, "{names:?}");
    let root = by_name["chaos run: traced checkout"];
    assert!(root.parent_span_id.is_empty(), "the run span is the root");
    assert_eq!(str_attr(root, "chaos.experiment.name"), "traced checkout");
    assert_eq!(str_attr(root, "chaos.run_id"), result["run_id"].as_str().unwrap());
    assert_eq!(str_attr(root, "chaos.outcome"), "accepted");
    assert_eq!(int_attr(root, "chaos.exit_code"), 0);
    assert_eq!(strings_attr(root, "chaos.hypotheses"), ["errors stay flat"]);
    assert_eq!(strings_attr(root, "chaos.verdicts"), ["accepted"]);
    assert_eq!(root.events.len(), 1, "one verdict event per hypothesis");
    let phases = ["preflight", "baseline", "observe", "revert", "verdict"];
    for name in phases.iter().copied().chain(["fault slow"]) {
        let s = by_name.get(name).unwrap_or_else(|| panic!("no {name} span: {names:?}"));
        assert_eq!(s.parent_span_id, root.span_id, "{name} is a child of the run");
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano
                && s.end_time_unix_nano <= root.end_time_unix_nano
                && s.start_time_unix_nano <= s.end_time_unix_nano,
            "{name} lies inside the run"
        );
    }
    // Phases follow each other; the fault lies inside observe and lasted
    // about its configured second.
    for w in phases.windows(2) {
        assert!(
            by_name[w[0]].end_time_unix_nano <= by_name[w[1]].start_time_unix_nano,
            "{} before {}",
            w[0],
            w[1]
        );
    }
    let fault = by_name["fault slow"];
    let observe = by_name["observe"];
    assert!(fault.start_time_unix_nano >= observe.start_time_unix_nano);
    assert!(fault.end_time_unix_nano <= observe.end_time_unix_nano);
    let lasted = (fault.end_time_unix_nano - fault.start_time_unix_nano) as f64 / 1e9;
    assert!((0.7..1.6).contains(&lasted), "fault span lasted {lasted}s");
    assert_eq!(str_attr(fault, "chaos.fault.kind"), "latency");
    assert!(!by_name.contains_key("abort"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("Trace:"), "--json prints only JSON");

    // An aborted run: its own trace, with an abort span and exit code 3.
    let fault = r#"
[[fault]]
kind = "http-error"
name = "broken"
status = 500
start = "300ms"

[safety]
max_error_rate = "40%"
"#;
    let text = experiment(up, "20s", &otel, fault);
    let (out, took, result) = run(dir.path(), "aborted", &text);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(15), "aborted early: {took:?}");
    let trace_id = result["trace"]["trace_id"].as_str().unwrap();
    let spans = spans_of(&got, trace_id);
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).expect("a root");
    assert_eq!(str_attr(root, "chaos.outcome"), "aborted");
    assert_eq!(int_attr(root, "chaos.exit_code"), 3);
    assert_eq!(strings_attr(root, "chaos.verdicts").len(), 1);
    let abort = spans.iter().find(|s| s.name == "abort").expect("an abort span");
    assert_eq!(abort.parent_span_id, root.span_id);
    assert!(str_attr(abort, "chaos.abort.reason").contains("max_error_rate"));
    let fault = spans.iter().find(|s| s.name == "fault broken").expect("fault span");
    assert!(fault.end_time_unix_nano <= abort.end_time_unix_nano + 2_000_000_000);
    assert_eq!(spans.iter().filter(|s| s.parent_span_id.is_empty()).count(), 1);
}

#[test]
fn a_refusing_or_hanging_collector_neither_fails_nor_slows_a_run() {
    let _heavy = crate::support::heavy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream());
    let hanging = rt.block_on(hanging_collector());
    let closed = rt.block_on(async { ClosedPort::new() });
    let dir = tempfile::tempdir().unwrap();
    let mut took = HashMap::new();
    for (name, otel) in [
        ("plain", String::new()),
        ("refused", format!("[otel]\nendpoint = \"{}\"", closed.url())),
        ("hanging", format!("[otel]\nendpoint = \"http://{hanging}/v1/traces\"")),
    ] {
        let text = experiment(up, "2s", &otel, "");
        let (out, t, result) = run(dir.path(), name, &text);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took.insert(name, t);
        let trace = &result["trace"];
        if name == "plain" {
            assert!(trace.is_null(), "no [otel], no trace: {trace}");
            continue;
        }
        assert_eq!(trace["trace_id"].as_str().map(str::len), Some(32), "{trace}");
        assert_eq!(trace["delivered"], false, "{name}: {trace}");
        assert!(trace["error"].is_string(), "{name}: {trace}");
        let errs = crate::report::schema_errors(&result);
        assert!(errs.is_empty(), "{errs:#?}");
    }
    eprintln!("wall time per run: {took:?}");
    for name in ["refused", "hanging"] {
        let extra = took[name].as_secs_f64() - took["plain"].as_secs_f64();
        // The flush budget is 1 s; 0.5 s more for a busy 2-core machine.
        assert!(extra < 1.5, "{name} slowed the run by {extra:.2}s: {took:?}");
    }
}

#[test]
fn the_terminal_says_where_the_trace_is() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream());
    let closed = rt.block_on(async { ClosedPort::new() });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.toml");
    let otel = format!("[otel]\nendpoint = \"{}\"", closed.url());
    std::fs::write(&file, experiment(up, "1s", &otel, "")).unwrap();
    let out = Command::new(chaos_bin())
        .args(["run", "--quiet", "--report-dir"])
        .arg(dir.path().join("reports"))
        .arg(&file)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // A 1 s window may be too short for a verdict (exit 4); the run must
    // still end normally and say where its trace is.
    assert!(matches!(out.status.code(), Some(0 | 4)), "{text}");
    assert!(text.contains("Outcome: "), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("Trace: "))
        .unwrap_or_else(|| panic!("no Trace: line in\n{text}"));
    assert!(
        line.contains(&format!("not delivered to {}/v1/traces", closed.url())),
        "{line}"
    );
}
