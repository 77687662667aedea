//! The daemon's HTTP endpoint: `GET /metrics` (Prometheus text),
//! `GET /status` (JSON, read-only), `POST /schedules/NAME/pause|resume`
//! and the machine-wide emergency stop `POST /halt?reason=TEXT` /
//! `POST /resume` (the same marker as `chaos halt`, see [`crate::halt`]),
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
    /// 1 while `chaos halt` is in force (set on every render).
    pub halted: Gauge<i64, AtomicI64>,
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
        let halted = Gauge::<i64, AtomicI64>::default();
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
        registry.register(
            platform::HALTED,
            "1 while an emergency stop (`chaos halt`) is in force on this machine",
            halted.clone(),
        );
        DaemonMetrics { registry, runs, skips, paused, running, halted }
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
    /// The machine-wide state directory (the halt marker).
    pub state_dir: std::path::PathBuf,
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
    /// The emergency stop in force, if any.
    pub halted: Option<crate::halt::HaltInfo>,
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

/// `None` when the request carries the configured bearer token, else the
/// refusal to send.
fn refusal<B>(req: &Request<B>, shared: &Shared) -> Option<Response<Full<Bytes>>> {
    let Some(expected) = &shared.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "changes are disabled: set [daemon] token in the config",
        ));
    };
    let got = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::traffic::admin::bearer_token)
        .unwrap_or("");
    if !token_matches(expected, got) {
        return Some(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
    }
    None
}

/// `POST /halt?reason=TEXT` and `POST /resume`: the machine-wide marker
/// (the daemon's own runs see it on their next tick like every runner's).
fn halt_or_resume(
    path: &str,
    query: Option<&str>,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let result = if path == "/halt" {
        let reason = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("reason="))
            .map(percent_decode)
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "halted through the daemon API".into());
        let by = crate::halt::who("daemon API");
        crate::halt::halt(&shared.state_dir, &reason, &by).map(Some)
    } else {
        crate::halt::resume(&shared.state_dir)
    };
    match result {
        Ok(info) => {
            let halted = crate::halt::check(&shared.state_dir);
            shared.metrics.halted.set(i64::from(halted.is_some()));
            shared.replan.notify_one();
            tracing::warn!(
                action = path,
                ?info,
                "emergency stop changed through the API"
            );
            json_reply(StatusCode::OK, &serde_json::json!({ "halted": halted }))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `application/x-www-form-urlencoded` value decoding (`+` and `%XX`);
/// invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied(), bytes.get(i + 2).copied()) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            let halted = crate::halt::check(&shared.state_dir).is_some();
            shared.metrics.halted.set(i64::from(halted));
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
                    halted: crate::halt::check(&shared.state_dir),
                },
            )
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "chaos continuous: GET /status, GET /metrics, \
             POST /schedules/NAME/pause|resume, POST /halt?reason=TEXT, \
             POST /resume (bearer token)\n"
                .into(),
        ),
        (&Method::POST, "/halt" | "/resume") => {
            if let Some(denied) = refusal(req, shared) {
                return denied;
            }
            halt_or_resume(path, req.uri().query(), shared)
        }
        (&Method::POST, p) if p.starts_with("/schedules/") => {
            if let Some(denied) = refusal(req, shared) {
                return denied;
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
