//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text),
//! `GET /status` (JSON, read-only) and `POST /schedules/NAME/pause|resume`,
//! which need `Authorization: Bearer TOKEN`. Without a configured token the
//! API is read-only.

use crate::metrics::platform;
use std::convert::Infallible;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::clock::Clock;
use super::exec::Stop;
use super::planner::{EntryStatus, Planner};

/// Labels of `chaos_daemon_runs_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Schedule or monkey name.
    pub schedule: String,
    /// Outcome word.
    pub outcome: String,
}

/// Labels of `chaos_daemon_skips_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// Schedule or monkey name.
    pub schedule: String,
    /// Why the fire was skipped.
    pub reason: String,
}

/// The daemon's metrics, registered once.
pub struct DaemonMetrics {
    registry: Registry,
    /// Finished runs by schedule and outcome.
    pub runs: Family<RunLabels, Counter>,
    /// Skipped fires by schedule and reason.
    pub skips: Family<SkipLabels, Counter>,
    /// Entries paused now.
    pub paused: Gauge<i64, AtomicI64>,
    /// Runs in progress now.
    pub running: Gauge<i64, AtomicI64>,
}

/// Names come from `metrics::platform` (prometheus-client appends `_total`
/// to counters), so the dashboard test sees them.
impl Default for DaemonMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let runs = Family::<RunLabels, Counter>::default();
        let skips = Family::<SkipLabels, Counter>::default();
        let paused = Gauge::<i64, AtomicI64>::default();
        let running = Gauge::<i64, AtomicI64>::default();
        registry.register(
            platform::DAEMON_RUNS_TOTAL.trim_end_matches("_total"),
            "Runs finished by the continuous daemon, by schedule and outcome",
            runs.clone(),
        );
        registry.register(
            platform::DAEMON_SKIPS_TOTAL.trim_end_matches("_total"),
            "Scheduled fires that did not start, by schedule and reason",
            skips.clone(),
        );
        registry.register(
            platform::DAEMON_SCHEDULES_PAUSED,
            "Schedules paused after consecutive failures or by an operator",
            paused.clone(),
        );
        registry.register(
            platform::DAEMON_RUNS_IN_PROGRESS,
            "Experiments or monkey strikes running now",
            running.clone(),
        );
        DaemonMetrics { registry, runs, skips, paused, running }
    }
}

impl DaemonMetrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// State shared by the daemon loop, its run tasks and the API.
pub struct Shared {
    /// The schedule state.
    pub planner: Mutex<Planner>,
    /// Metrics.
    pub metrics: DaemonMetrics,
    /// Woken when the plan changes (pause/resume, a run finished).
    pub replan: Notify,
    /// Bearer token for changes.
    pub token: Option<String>,
    /// RFC 3339 start time.
    pub started_at: String,
}

impl Shared {
    /// Locks the planner; a poisoned lock (a panicked task) still holds a
    /// consistent planner, so keep going.
    pub fn planner(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.planner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `GET /status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// When the daemon started.
    pub started_at: String,
    /// The daemon's clock now.
    pub now: String,
    /// Entries running now.
    pub running: Vec<String>,
    /// Every entry.
    pub schedules: Vec<EntryStatus>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    reply(status, "application/json", body)
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json_reply(status, &serde_json::json!({ "error": msg }))
}

/// Compares without an early exit, so response timing does not leak how
/// much of a guessed token was right.
fn token_matches(expected: &str, got: &str) -> bool {
    let (a, b) = (expected.as_bytes(), got.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Handles one request.
pub fn handle<B>(
    req: &Request<B>,
    shared: &Shared,
    clock: &dyn Clock,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render())
        }
        (&Method::GET, "/status") => {
            let p = shared.planner();
            json_reply(
                StatusCode::OK,
                &Status {
                    started_at: shared.started_at.clone(),
                    now: clock.now().to_string(),
                    running: p.running(),
                    schedules: p.status(),
                },
            )
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "chaos continuous: GET /status, GET /metrics, \
             POST /schedules/NAME/pause|resume (bearer token)\n"
                .into(),
        ),
        (&Method::POST, p) if p.starts_with("/schedules/") => {
            let Some(expected) = &shared.token else {
                return error(
                    StatusCode::FORBIDDEN,
                    "changes are disabled: set [daemon] token in the config",
                );
            };
            let got = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::traffic::admin::bearer_token)
                .unwrap_or("");
            if !token_matches(expected, got) {
                return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
            let rest = &p["/schedules/".len()..];
            let Some((name, action)) = rest.split_once('/') else {
                return error(
                    StatusCode::NOT_FOUND,
                    "use /schedules/NAME/pause or /resume",
                );
            };
            let mut planner = shared.planner();
            let ok = match action {
                "pause" => planner.pause(name),
                "resume" => planner.resume(name, clock.now()),
                _ => return error(StatusCode::NOT_FOUND, "actions: pause, resume"),
            };
            if !ok {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no schedule named {name:?}"),
                );
            }
            shared.metrics.paused.set(planner.paused_count() as i64);
            let status = planner.status().into_iter().find(|s| s.name == name);
            drop(planner);
            shared.replan.notify_one();
            tracing::warn!(schedule = name, action, "schedule changed through the API");
            json_reply(StatusCode::OK, &status)
        }
        (_, "/metrics" | "/status") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "read-only endpoint: use GET")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the API on `listener` until `stop` is set.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    stop: Stop,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (shared, clock) = (shared.clone(), clock.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&req, &shared, clock.as_ref());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}
