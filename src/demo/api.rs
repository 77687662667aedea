//! The API service: `GET /checkout` charges through payments and answers
//! an order. The two variants differ only in how they treat a failing
//! dependency, which is exactly what the demo experiments measure:
//! resilient = per-attempt timeout, one retry in the other region, then a
//! degraded-but-successful fallback; fragile = wait (up to a safety bound),
//! no retry, and turn every dependency problem into a 5xx.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::http::{json, serve as serve_http, text, Request};
use super::{Region, Variant};
use crate::cohort::{Cohort, COHORT_HEADER};
use crate::traffic::baggage::{self, BAGGAGE};

/// Response header carrying the cohort value payments echoed back (shows
/// that `x-chaos-cohort` was propagated API → payments).
pub const PAYMENT_COHORT_HEADER: &str = "x-demo-payment-cohort";
/// Response header carrying the `baggage` payments echoed back (shows that
/// the W3C baggage `chaos.cohort` member was propagated API → payments).
pub const PAYMENT_BAGGAGE_HEADER: &str = "x-demo-payment-baggage";
/// Response header with the number of payments attempts this order took.
pub const PAYMENT_ATTEMPTS_HEADER: &str = "x-demo-payment-attempts";

/// Largest payments body we read; anything bigger is an invalid payload.
const MAX_PAYMENT_BODY: usize = 64 * 1024;

/// Configuration of one API process.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The pool (cluster) this API belongs to.
    pub pool: Cohort,
    /// Resilient or fragile.
    pub variant: Variant,
    /// Base URL of payments per region (`{url}/charge` is called).
    pub payments: BTreeMap<Region, Uri>,
    /// Resilient: timeout of each payments attempt.
    pub attempt_timeout: Duration,
    /// Fragile: the only bound on a payments call.
    pub safety_timeout: Duration,
    /// Requests handled at once; beyond this the API sheds with 503.
    pub max_in_flight: usize,
}

impl ApiConfig {
    /// Defaults: 120 ms per attempt, 10 s safety bound, 1024 in flight.
    pub fn new(pool: Cohort, variant: Variant, payments: BTreeMap<Region, Uri>) -> Self {
        ApiConfig {
            pool,
            variant,
            payments,
            attempt_timeout: Duration::from_millis(120),
            safety_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
        }
    }
}

/// What payments answers; every field's type is checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Charge {
    status: String,
    amount_cents: u64,
    region: String,
}

/// Why one payments attempt failed; decides the fragile variant's status.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no payments URL for region {0}")]
    NoUrl(Region),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("payments answered HTTP {0}")]
    Status(StatusCode),
    #[error("invalid payload: {0}")]
    Invalid(String),
}

struct Api {
    cfg: ApiConfig,
    client: Client<HttpConnector, Empty<Bytes>>,
    in_flight: Arc<Semaphore>,
    breakers: BTreeMap<Region, Breaker>,
}

/// Consecutive failures that open a region's circuit.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit sends traffic straight to the other region
/// before the next call probes the region again.
const BREAKER_OPEN: Duration = Duration::from_secs(2);

/// A per-region circuit breaker (resilient variant): after a few failures
/// in a row the API stops paying a timeout or a refused connection on
/// every request and goes to the healthy region first.
#[derive(Default)]
struct Breaker(std::sync::Mutex<BreakerState>);

#[derive(Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<tokio::time::Instant>,
}

impl Breaker {
    fn is_open(&self) -> bool {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.open_until.is_some_and(|t| tokio::time::Instant::now() < t)
    }

    fn record(&self, ok: bool) {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *st = BreakerState::default();
        } else {
            st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            if st.consecutive_failures >= BREAKER_THRESHOLD {
                st.open_until = Some(tokio::time::Instant::now() + BREAKER_OPEN);
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cfg: ApiConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector);
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let breakers = Region::ALL.into_iter().map(|r| (r, Breaker::default())).collect();
    let api = Arc::new(Api { cfg, client, in_flight, breakers });
    let handler = move |req: Request| {
        let api = Arc::clone(&api);
        async move { api.handle(req).await }
    };
    serve_http(listener, handler, shutdown).await;
}

impl Api {
    async fn handle(&self, req: Request) -> http::Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/checkout" => {
                // Bounded concurrency: shed instead of queueing without limit.
                let Ok(_permit) = self.in_flight.try_acquire() else {
                    return json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"error": "overloaded"}),
                    );
                };
                let ctx = outgoing_context(req.headers());
                match self.cfg.variant {
                    Variant::Resilient => self.checkout_resilient(&ctx).await,
                    Variant::Fragile => self.checkout_fragile(&ctx).await,
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn checkout_resilient(&self, ctx: &HeaderMap) -> http::Response<Full<Bytes>> {
        let primary = Region::UsEast;
        let open = |r: Region| self.breakers.get(&r).is_some_and(Breaker::is_open);
        // A region whose circuit is open goes last (still tried: it is the
        // only chance when both are open).
        let order = if open(primary) && !open(primary.other()) {
            [primary.other(), primary]
        } else {
            [primary, primary.other()]
        };
        for (i, region) in order.into_iter().enumerate() {
            let result = self.attempt(region, ctx, self.cfg.attempt_timeout).await;
            if let Some(b) = self.breakers.get(&region) {
                b.record(result.is_ok());
            }
            match result {
                Ok((charge, echoed)) => return ok_response(&charge, echoed, i + 1),
                Err(e) => {
                    tracing::warn!(pool = %self.cfg.pool, %region, error = %e, "payments attempt failed")
                }
            }
        }
        let mut resp = json(
            StatusCode::OK,
            &serde_json::json!({"order": "accepted", "fallback": true}),
        );
        resp.headers_mut().insert(PAYMENT_ATTEMPTS_HEADER, HeaderValue::from(2u32));
        resp
    }

    async fn checkout_fragile(&self, ctx: &HeaderMap) -> http::Response<Full<Bytes>> {
        let result = self.attempt(Region::UsEast, ctx, self.cfg.safety_timeout).await;
        match result {
            Ok((charge, echoed)) => ok_response(&charge, echoed, 1),
            Err(e) => {
                tracing::warn!(pool = %self.cfg.pool, error = %e, "payments call failed");
                let status = match e {
                    AttemptError::Invalid(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_GATEWAY,
                };
                json(
                    status,
                    &serde_json::json!({"error": format!("payment failed: {e}")}),
                )
            }
        }
    }

    /// One payments call, bounded by `timeout` end to end (headers + body).
    async fn attempt(
        &self,
        region: Region,
        ctx: &HeaderMap,
        timeout: Duration,
    ) -> Result<(Charge, Echoed), AttemptError> {
        let base = self.cfg.payments.get(&region).ok_or(AttemptError::NoUrl(region))?;
        let uri = charge_uri(base);
        let mut req = http::Request::get(uri)
            .body(Empty::new())
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        req.headers_mut().extend(ctx.iter().map(|(k, v)| (k.clone(), v.clone())));
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AttemptError::Transport(format!("{e:?}")))?;
            if !resp.status().is_success() {
                return Err(AttemptError::Status(resp.status()));
            }
            let echoed = Echoed {
                cohort: resp.headers().get(COHORT_HEADER).cloned(),
                baggage: resp.headers().get(BAGGAGE).cloned(),
            };
            let is_json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let body = Limited::new(resp.into_body(), MAX_PAYMENT_BODY)
                .collect()
                .await
                .map_err(|e| AttemptError::Invalid(format!("body: {e}")))?
                .to_bytes();
            if !is_json {
                return Err(AttemptError::Invalid("content-type is not JSON".into()));
            }
            let charge = validate(&body)?;
            Ok((charge, echoed))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| AttemptError::Timeout(timeout))?
    }
}

/// What payments echoed of the context it received.
struct Echoed {
    cohort: Option<HeaderValue>,
    baggage: Option<HeaderValue>,
}

/// The cohort context an outgoing call carries, by the proxy's rules: the
/// `x-chaos-cohort` the edge set, and the incoming baggage (as an
/// OpenTelemetry propagator forwards it) with exactly one `chaos.cohort`
/// member for that cohort — read from the header, else from the baggage.
fn outgoing_context(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let header = incoming.get(COHORT_HEADER);
    if let Some(v) = header {
        out.insert(COHORT_HEADER, v.clone());
    }
    for v in incoming.get_all(BAGGAGE) {
        out.append(BAGGAGE, v.clone());
    }
    let cohort = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Cohort::parse(v.trim()))
        .or_else(|| baggage::cohort(incoming));
    baggage::set_cohort(&mut out, cohort);
    out
}

/// `{base}/charge`, keeping any path prefix of the base URL.
fn charge_uri(base: &Uri) -> Uri {
    let s = base.to_string();
    let joined = format!("{}/charge", s.trim_end_matches('/'));
    joined.parse().unwrap_or_else(|_| base.clone())
}

fn validate(body: &[u8]) -> Result<Charge, AttemptError> {
    let charge: Charge = serde_json::from_slice(body)
        .map_err(|e| AttemptError::Invalid(format!("JSON: {e}")))?;
    if charge.status != "charged" {
        return Err(AttemptError::Invalid(format!("status {:?}", charge.status)));
    }
    if Region::parse(&charge.region).is_none() {
        return Err(AttemptError::Invalid(format!("region {:?}", charge.region)));
    }
    Ok(charge)
}

fn ok_response(
    charge: &Charge,
    echoed: Echoed,
    attempts: usize,
) -> http::Response<Full<Bytes>> {
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({"order": "ok", "payment": charge, "fallback": false}),
    );
    if let Some(v) = echoed.cohort {
        resp.headers_mut().insert(PAYMENT_COHORT_HEADER, v);
    }
    if let Some(v) = echoed.baggage {
        resp.headers_mut().insert(PAYMENT_BAGGAGE_HEADER, v);
    }
    resp.headers_mut()
        .insert(PAYMENT_ATTEMPTS_HEADER, HeaderValue::from(attempts as u32));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_well_formed_charge() {
        let c =
            validate(br#"{"status":"charged","amount_cents":4200,"region":"us-east"}"#)
                .unwrap();
        assert_eq!(c.amount_cents, 4200);
    }

    #[test]
    fn rejects_charges_with_a_wrong_field_type_or_value() {
        for body in [
            &br#"{"status":"charged","amount_cents":"4200","region":"us-east"}"#[..],
            br#"{"status":"declined","amount_cents":4200,"region":"us-east"}"#,
            br#"{"status":"charged","amount_cents":4200,"region":"mars"}"#,
            br#"{"status":"charged","amount_cents":4200}"#,
            br#"{"status":"charged","amount_cents":4200,"region":"us-east""#,
            b"",
        ] {
            assert!(
                matches!(validate(body), Err(AttemptError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_closes_on_success() {
        let b = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            b.record(false);
        }
        assert!(!b.is_open(), "opens only after the threshold");
        b.record(false);
        assert!(b.is_open());
        b.record(true);
        assert!(!b.is_open(), "a success closes it");
    }

    #[test]
    fn propagates_the_cohort_in_header_and_baggage_keeping_other_members() {
        let mut h = HeaderMap::new();
        h.insert(COHORT_HEADER, HeaderValue::from_static("experiment"));
        h.append(BAGGAGE, HeaderValue::from_static("user=a%2Cb;p"));
        h.append(BAGGAGE, HeaderValue::from_static("chaos.cohort=control"));
        let out = outgoing_context(&h);
        assert_eq!(out[COHORT_HEADER], "experiment");
        assert_eq!(out[BAGGAGE], "user=a%2Cb;p,chaos.cohort=experiment");
        // Baggage only (an OpenTelemetry hop dropped the header).
        let mut h = HeaderMap::new();
        h.insert(BAGGAGE, HeaderValue::from_static("chaos.cohort=control,k=v"));
        let out = outgoing_context(&h);
        assert!(out.get(COHORT_HEADER).is_none());
        assert_eq!(out[BAGGAGE], "k=v,chaos.cohort=control");
        assert!(outgoing_context(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn charge_uri_keeps_a_path_prefix() {
        let u: Uri = "http://127.0.0.1:9/pay/".parse().unwrap();
        assert_eq!(charge_uri(&u).to_string(), "http://127.0.0.1:9/pay/charge");
        let u: Uri = "http://127.0.0.1:9".parse().unwrap();
        assert_eq!(charge_uri(&u).to_string(), "http://127.0.0.1:9/charge");
    }
}
