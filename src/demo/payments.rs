//! The payments service: `GET /charge` answers a fixed charge after a
//! simulated lognormal service time and echoes `x-chaos-cohort` and
//! `baggage` back, so
//! callers (and tests) can see that the cohort travelled the whole path.

use http::{Method, StatusCode};
use rand::SeedableRng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

use super::http::{json, serve as serve_http, text, Request};
use super::{Region, ServiceTime};
use crate::cohort::{Cohort, COHORT_HEADER};
use crate::traffic::baggage::BAGGAGE;

/// Configuration of one payments replica.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// The pool (cluster) this replica belongs to.
    pub pool: Cohort,
    /// Its region, reported in every charge.
    pub region: Region,
    /// Simulated service time per charge.
    pub service_time: ServiceTime,
}

/// Serves payments on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cfg: PaymentsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let rng = Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::from_entropy()));
    let cfg = Arc::new(cfg);
    let handler = move |req: Request| {
        let cfg = Arc::clone(&cfg);
        let rng = Arc::clone(&rng);
        async move {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            }
            match req.uri().path() {
                "/healthz" => text(StatusCode::OK, "ok\n"),
                "/charge" => charge(&cfg, &rng, req.headers()).await,
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        }
    };
    serve_http(listener, handler, shutdown).await;
}

async fn charge(
    cfg: &PaymentsConfig,
    rng: &Mutex<rand_chacha::ChaCha8Rng>,
    headers: &http::HeaderMap,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let delay = {
        // A poisoned lock only means another request panicked mid-draw;
        // the generator state is still usable.
        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
        cfg.service_time.sample(&mut *rng)
    };
    let cohort = headers.get(COHORT_HEADER);
    let cohort_str = cohort.and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::debug!(
        pool = %cfg.pool, region = %cfg.region, cohort = cohort_str,
        delay_ms = delay.as_secs_f64() * 1e3, "charge"
    );
    tokio::time::sleep(delay).await;
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "charged",
            "amount_cents": 4200,
            "region": cfg.region.as_str(),
        }),
    );
    if let Some(v) = cohort {
        resp.headers_mut().insert(COHORT_HEADER, v.clone());
    }
    if let Some(v) = headers.get(BAGGAGE) {
        resp.headers_mut().insert(BAGGAGE, v.clone());
    }
    resp
}
