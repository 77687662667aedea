//! The admin endpoint: health, Prometheus metrics, cohort counts with the
//! SRM check, and run-time fault toggles. Reads are open; every change
//! needs `Authorization: Bearer TOKEN`, and without a configured token
//! changes are refused outright.
//!
//! Who may listen where ([`exposure_refusal`]) and how the token is sent
//! ([`bearer_token`]) are decided here for every listener that changes
//! state: this admin endpoint and the daemon's API.
//!
//! Routes: `GET /healthz`, `GET /metrics`, `GET /cohorts`, `GET /faults`,
//! `POST /faults/{id}/enable`, `POST /faults/{id}/disable`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::server::Shared;
use super::srm::split_checks;
use crate::cohort::Cohort;

type AdminResponse = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &str) -> AdminResponse {
    reply(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    reply(status, "application/json", v.to_string())
}

/// Compares without an early exit, so response timing leaks nothing
/// about how much of a guessed token was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization: Bearer TOKEN` header. The scheme
/// is case-insensitive (RFC 7235 §2.1), so `bearer` and `BEARER` work too.
pub fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// Why a state-changing listener may not bind `listen`, or `None` when it
/// may. Loopback is always fine; anything else must be asked for
/// explicitly (`allow_remote`) and guarded by a token, so a typo such as
/// `0.0.0.0` can never expose fault switches silently.
pub fn exposure_refusal(
    listen: std::net::SocketAddr,
    allow_remote: bool,
    has_token: bool,
) -> Option<String> {
    if listen.ip().is_loopback() {
        None
    } else if !allow_remote {
        Some(format!(
            "{listen} is not a loopback address; anyone who reaches it could switch \
             faults. Use 127.0.0.1, or allow remote access explicitly together with a token"
        ))
    } else if !has_token {
        Some(format!("{listen} is not a loopback address and no token is set"))
    } else {
        None
    }
}

/// `None` when the request may change state, else the refusal to send.
fn refuse_unless_authorized(
    shared: &Shared,
    req: &Request<Incoming>,
) -> Option<AdminResponse> {
    let Some(token) = shared.admin_token.as_deref() else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "changes are disabled: start the proxy with --admin-token or CHAOS_ADMIN_TOKEN",
        ));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => None,
        _ => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (send Authorization: Bearer TOKEN)",
            );
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> AdminResponse {
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.recorder.metrics_text(),
        ),
        (&Method::GET, ["faults"]) => {
            let faults = shared.faults();
            json(
                StatusCode::OK,
                &serde_json::to_value(faults.as_ref()).unwrap_or_default(),
            )
        }
        (&Method::GET, ["cohorts"]) => {
            let rec = &shared.recorder;
            let c = rec.totals(Cohort::Control);
            let e = rec.totals(Cohort::Experiment);
            let u = rec.untouched_total();
            let (cf, ef) = shared.fractions();
            let checks = split_checks(rec, cf, ef);
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "control": {"total": c.0, "errors": c.1},
                    "experiment": {"total": e.0, "errors": e.1},
                    "untouched": {"total": u},
                    "srm": checks.by_keys,
                    "srm_requests": checks.by_requests,
                }),
            )
        }
        (&Method::POST, ["faults", id, action @ ("enable" | "disable")]) => {
            if let Some(refusal) = refuse_unless_authorized(shared, req) {
                return refusal;
            }
            let on = *action == "enable";
            if shared.set_enabled(id, on) {
                tracing::info!(fault = %id, enabled = on, "fault toggled through admin");
                json(StatusCode::OK, &serde_json::json!({"id": id, "enabled": on}))
            } else {
                text(StatusCode::NOT_FOUND, &format!("no fault with id {id:?}"))
            }
        }
        (_, ["healthz" | "metrics" | "faults" | "cohorts"])
        | (_, ["faults", _, "enable" | "disable"]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown path; try /healthz, /metrics, /cohorts, /faults, \
             POST /faults/{id}/enable|disable",
        ),
    }
}

/// Serves admin requests until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = super::server::stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = route(&shared, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    /// Issue 12 case 12: the scheme is case-insensitive (RFC 7235).
    #[test]
    fn r12_12_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer tok", "bearer tok", "BEARER  tok ", "bEaReR\ttok"] {
            assert_eq!(bearer_token(h), Some("tok"), "{h:?}");
        }
        for h in ["Basic tok", "Bearer", "Bearer ", "Bearertok", ""] {
            assert_eq!(bearer_token(h), None, "{h:?}");
        }
    }

    /// Issue 12 case 12: non-loopback only when asked for, with a token.
    #[test]
    fn r12_12_non_loopback_admin_needs_allow_remote_and_a_token() {
        let any: std::net::SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let lo6: std::net::SocketAddr = "[::1]:9901".parse().unwrap();
        assert!(exposure_refusal(lo, false, false).is_none());
        assert!(exposure_refusal(lo6, false, false).is_none());
        assert!(exposure_refusal(any, false, true).is_some());
        assert!(exposure_refusal(any, true, false).is_some());
        assert!(exposure_refusal(any, true, true).is_none());
    }
}
