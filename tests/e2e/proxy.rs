//! End-to-end tests of the cohort proxy over real loopback sockets: a tiny
//! hyper upstream, the proxy under test, and a keep-alive client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chaos::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};
use chaos::metrics::Recorder;
use chaos::traffic::{
    sample_ratio_mismatch, AdminConfig, CohortKey, HttpFault, HttpFaultKind,
    MalformedMode, Proxy, ProxyConfig, ProxyHandle, ProxyMode,
};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const BODY: &str = r#"{"name":"widget","ok":true,"price":10}"#;
const T: Duration = Duration::from_secs(60);

/// A loopback upstream: `/` answers JSON and reports the cohort it saw in
/// `x-seen-cohort`; `/slow` answers after two seconds.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        let seen = req
                            .headers()
                            .get(COHORT_HEADER)
                            .map(|v| v.to_str().unwrap_or("?").to_string())
                            .unwrap_or_else(|| "none".into());
                        let resp = http::Response::builder()
                            .header("content-type", "application/json")
                            .header("x-seen-cohort", seen)
                            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(up: SocketAddr, experiment: f64, control: f64) -> ProxyConfig {
    let key = CohortKey::Header("x-user-id".into());
    let mut cfg =
        crate::support::proxy_config(&format!("http://{up}"), key, experiment, control);
    cfg.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some("s3cret".into()),
        allow_remote: false,
    });
    cfg
}

async fn start(cfg: ProxyConfig) -> (ProxyHandle, Arc<Recorder>) {
    let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 10_000));
    let h = Proxy::start(cfg, rec.clone()).await.unwrap();
    (h, rec)
}

type TestClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// What a client saw for one request.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    cohort: Option<String>,
    upstream_cohort: Option<String>,
    fault: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

async fn get(c: &TestClient, url: &str, key: Option<&str>) -> Seen {
    let mut b = http::Request::get(url);
    if let Some(k) = key {
        b = b.header("x-user-id", k);
    }
    let resp =
        timeout(T, c.request(b.body(Empty::new()).unwrap())).await.unwrap().unwrap();
    let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, cohort, upstream_cohort, fault, content_type) = (
        resp.status().as_u16(),
        h(COHORT_HEADER),
        h("x-seen-cohort"),
        h(FAULT_HEADER),
        h("content-type"),
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Seen { status, cohort, upstream_cohort, fault, content_type, body }
}

/// Sends one request per key with `workers` concurrent keep-alive loops.
async fn fan_out(url: String, keys: Vec<Option<String>>, workers: usize) -> Vec<Seen> {
    let c = client();
    let keys = Arc::new(keys);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (c, keys, next, url) = (c.clone(), keys.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(k) = keys.get(i) else { return out };
                out.push((i, get(&c, &url, k.as_deref()).await));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, s)| s).collect()
}

fn random_keys(n: usize, seed: u64) -> Vec<Option<String>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| Some(format!("{:016x}", rng.gen::<u64>()))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is held on purpose across awaits: it only serializes
// heavy tests, nothing awaited here takes it.
#[allow(clippy::await_holding_lock)]
async fn splits_20000_random_keys_within_five_percent_of_the_configured_shares() {
    let _heavy = crate::support::heavy();
    let up = upstream().await;
    let (h, rec) = start(config(up, 0.25, 0.25)).await;
    let url = format!("http://{}/", h.local_addr());
    let seen = fan_out(url, random_keys(20_000, 1), 32).await;
    let mut counts: HashMap<Option<String>, u64> = HashMap::new();
    for s in &seen {
        assert_eq!(s.status, 200);
        // The cohort travels upstream and is echoed back unchanged.
        assert_eq!(
            s.upstream_cohort.clone().unwrap_or_default(),
            s.cohort.clone().unwrap_or("none".into())
        );
        *counts.entry(s.cohort.clone()).or_default() += 1;
    }
    let e = counts.get(&Some("experiment".into())).copied().unwrap_or(0);
    let c = counts.get(&Some("control".into())).copied().unwrap_or(0);
    let u = counts.get(&None).copied().unwrap_or(0);
    for (got, share) in [(e, 0.25), (c, 0.25), (u, 0.5)] {
        let want = share * 20_000.0;
        assert!((got as f64 - want).abs() <= 0.05 * want, "{got} vs {want}: {counts:?}");
    }
    // The recorder agrees with what the clients saw, and SRM is quiet.
    assert_eq!(rec.snapshot(Cohort::Experiment).total, e);
    assert_eq!(rec.snapshot(Cohort::Control).total, c);
    assert_eq!(rec.untouched_total(), u);
    assert!(!sample_ratio_mismatch(c, e, u, 0.25, 0.25).mismatch);
    // The check that gates verdicts counts distinct keys: 4,000 random keys
    // each sent once land as configured.
    let by_keys = chaos::traffic::key_sample_ratio_mismatch(rec.keys(), 0.25, 0.25);
    assert!(!by_keys.mismatch, "{by_keys:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_1000_keys_always_lands_in_the_same_cohort() {
    let up = upstream().await;
    let (h, _rec) = start(config(up, 0.3, 0.3)).await;
    let url = format!("http://{}/", h.local_addr());
    let keys: Vec<Option<String>> =
        (0..5).flat_map(|_| (0..1000).map(|k| Some(format!("user-{k}")))).collect();
    let seen = fan_out(url, keys.clone(), 16).await;
    let mut first: HashMap<&str, Option<String>> = HashMap::new();
    for (k, s) in keys.iter().zip(&seen) {
        let k = k.as_deref().unwrap();
        let prev = first.entry(k).or_insert_with(|| s.cohort.clone());
        assert_eq!(*prev, s.cohort, "key {k} changed cohort");
    }
    assert_eq!(first.len(), 1000);
    // All three cohorts are actually in use.
    let distinct: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(distinct.len(), 3);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is held on purpose across awaits: it only serializes
// heavy tests, nothing awaited here takes it.
#[allow(clippy::await_holding_lock)]
async fn control_and_untouched_traffic_never_get_a_fault_over_20000_requests() {
    let _heavy = crate::support::heavy();
    let up = upstream().await;
    let (h, rec) = start(config(up, 0.1, 0.1)).await;
    h.set_faults(vec![
        HttpFault::parse_spec("kind=error,status=503,id=boom").unwrap(),
        HttpFault::parse_spec("kind=malformed,mode=flip-bytes,id=flip").unwrap(),
    ]);
    let url = format!("http://{}/", h.local_addr());
    let seen = fan_out(url, random_keys(20_000, 2), 32).await;
    let mut faulted_outside = 0;
    let mut experiment = 0;
    for s in &seen {
        match s.cohort.as_deref() {
            Some("experiment") => {
                experiment += 1;
                assert_eq!(s.status, 503);
                assert_eq!(s.fault.as_deref(), Some("error"));
            }
            _ => {
                if s.fault.is_some() || s.status != 200 || s.body != BODY.as_bytes() {
                    faulted_outside += 1;
                }
            }
        }
    }
    assert_eq!(faulted_outside, 0);
    assert!(experiment > 1500, "{experiment}");
    let metrics = rec.metrics_text();
    assert!(metrics.contains(&format!(
        "chaos_faults_injected_total{{kind=\"error\"}} {experiment}"
    )));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_mode_reaches_a_client_that_reads_the_body() {
    let up = upstream().await;
    let (h, _rec) = start(config(up, 1.0, 0.0)).await;
    let url = format!("http://{}/", h.local_addr());
    let c = client();
    for mode in MalformedMode::ALL {
        h.set_faults(vec![HttpFault {
            id: "m".into(),
            kind: HttpFaultKind::Malformed { mode },
            probability: 1.0,
            enabled: true,
        }]);
        let s = get(&c, &url, Some("k")).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.fault.as_deref(), Some(mode.label().as_str()), "{mode:?}");
        let json = serde_json::from_slice::<serde_json::Value>(&s.body);
        let ct = s.content_type.as_deref();
        match mode {
            MalformedMode::Truncate => {
                assert_eq!(s.body.len(), BODY.len() / 2);
                assert!(json.is_err());
            }
            MalformedMode::FlipBytes => {
                assert_eq!(s.body.len(), BODY.len());
                assert_ne!(s.body, BODY.as_bytes());
            }
            MalformedMode::JsonWrongType => {
                let v = json.unwrap();
                assert!(v["name"].is_number(), "{v}");
                assert_eq!(v["price"], 10);
            }
            MalformedMode::WrongContentType => {
                assert_eq!(s.body, BODY.as_bytes());
                assert!(ct.is_some_and(|c| !c.contains("json")), "{ct:?}");
            }
            MalformedMode::MissingContentType => {
                assert_eq!(s.body, BODY.as_bytes());
                assert_eq!(ct, None);
            }
            MalformedMode::Oversized => {
                assert_eq!(s.body.len(), chaos::traffic::malformed::OVERSIZED_BYTES);
                assert!(
                    json.is_ok(),
                    "padding keeps the JSON valid; only the size is wrong"
                );
            }
        }
    }
    h.shutdown().await;
}

/// 5 keep-alive loops of 10 requests each; client-side milliseconds.
/// Low concurrency keeps queueing in the (debug-built, shared-CPU) proxy
/// out of the measurement.
/// Connection setup stays out of the measurement, as with a real pool.
async fn timed_requests(
    url: &str,
    tag: &'static str,
    expect_fault: Option<&'static str>,
) -> Vec<f64> {
    let c = client();
    let mut tasks = Vec::new();
    for w in 0..5 {
        let (c, url) = (c.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            for i in 0..10 {
                let t0 = tokio::time::Instant::now();
                let s = get(&c, &url, Some(&format!("{tag}{w}-{i}"))).await;
                assert_eq!(s.fault.as_deref(), expect_fault);
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            ms
        }));
    }
    let mut ms = Vec::new();
    for t in tasks {
        ms.extend(t.await.unwrap());
    }
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is held on purpose across awaits: it only serializes
// heavy tests, nothing awaited here takes it.
#[allow(clippy::await_holding_lock)]
async fn a_latency_fault_shows_up_at_the_configured_median() {
    let _heavy = crate::support::heavy();
    // The median of the same requests without the fault is subtracted:
    // what is checked is the latency the fault added.
    let up = upstream().await;
    let (h, rec) = start(config(up, 1.0, 0.0)).await;
    let url = format!("http://{}/", h.local_addr());
    let base = median(timed_requests(&url, "b", None).await);
    // Millisecond gaps on both sides of the cut, so at_ms separates the
    // baseline from the injection window exactly.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let fault_start_ms = rec.elapsed_ms(tokio::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(3)).await;
    let rec_base = median(
        rec.snapshot(Cohort::Experiment).samples.iter().map(|s| s.latency_ms).collect(),
    );
    h.set_faults(vec![
        HttpFault::parse_spec("kind=latency,delay=400ms,jitter=20ms").unwrap()
    ]);
    let p50 = median(timed_requests(&url, "f", Some("latency")).await) - base;
    assert!(
        (380.0..=420.0).contains(&p50),
        "client-side added p50 {p50} ms (base {base})"
    );
    // The recorder, sliced to the injection window by at_ms, agrees.
    let injected: Vec<f64> = rec
        .snapshot(Cohort::Experiment)
        .samples
        .iter()
        .filter(|s| s.at_ms >= fault_start_ms)
        .map(|s| s.latency_ms)
        .collect();
    assert_eq!(injected.len(), 50);
    let rec_p50 = median(injected) - rec_base;
    assert!(
        (380.0..=420.0).contains(&rec_p50),
        "recorded added p50 {rec_p50} ms (base {rec_base})"
    );
    h.shutdown().await;
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut buf = Vec::new();
    timeout(T, s.read_to_end(&mut buf))
        .await
        .expect("server neither answered nor closed")?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_closes_without_a_response_and_reset_sends_rst() {
    let up = upstream().await;
    let (h, rec) = start(config(up, 1.0, 0.0)).await;
    let req = b"GET / HTTP/1.1\r\nhost: x\r\nx-user-id: a\r\n\r\n";
    h.set_faults(vec![HttpFault::parse_spec("kind=abort").unwrap()]);
    let got = raw_exchange(h.local_addr(), req).await.unwrap();
    assert!(got.is_empty(), "abort sent {:?}", String::from_utf8_lossy(&got));
    h.set_faults(vec![HttpFault::parse_spec("kind=reset").unwrap()]);
    let err = raw_exchange(h.local_addr(), req).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let snap = rec.snapshot(Cohort::Experiment);
    assert_eq!((snap.total, snap.errors), (2, 2));
    assert_eq!(snap.status_counts.get(&0), Some(&2));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstreams_and_bad_clients_get_clear_status_codes() {
    // Bound but never listening: connection refused, and kept from other tests.
    let closed = crate::support::ClosedPort::new();
    let dead: std::net::SocketAddr = ([127, 0, 0, 1], closed.port).into();
    let (h, rec) = start(config(dead, 0.0, 1.0)).await;
    let c = client();
    let s = get(&c, &format!("http://{}/", h.local_addr()), Some("k")).await;
    assert_eq!(s.status, 502);
    let body = String::from_utf8_lossy(&s.body).to_string();
    assert!(body.contains(&dead.to_string()) && body.contains("failed"), "{body}");
    assert_eq!(rec.snapshot(Cohort::Control).errors, 1);
    h.shutdown().await;

    let up = upstream().await;
    let mut cfg = config(up, 0.0, 0.0);
    cfg.upstream_timeout = Duration::from_millis(300);
    let (h, _) = start(cfg).await;
    let s = get(&c, &format!("http://{}/slow", h.local_addr()), None).await;
    assert_eq!(s.status, 504);
    let got = raw_exchange(h.local_addr(), b"BLAH\x01 / HTTP/9\r\n\r\n").await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_mode_ignores_a_spoofed_cohort_and_sidecar_mode_trusts_it() {
    let up = upstream().await;
    let (h, _) = start(config(up, 0.0, 0.0)).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=error,status=500").unwrap()]);
    let c = client();
    let url = format!("http://{}/", h.local_addr());
    let spoofed = http::Request::get(&url)
        .header(COHORT_HEADER, "experiment")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = c.request(spoofed).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-cohort"], "none");
    h.shutdown().await;

    let mut cfg = config(up, 0.0, 0.0);
    cfg.mode = ProxyMode::Sidecar;
    let (h, _) = start(cfg).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=error,status=500").unwrap()]);
    let url = format!("http://{}/", h.local_addr());
    for (cohort, status) in [("experiment", 500), ("control", 200)] {
        let req = http::Request::get(&url)
            .header(COHORT_HEADER, cohort)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), status, "{cohort}");
    }
    let plain = get(&c, &url, None).await;
    assert_eq!((plain.status, plain.upstream_cohort.as_deref()), (200, Some("none")));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_srm_check_flags_a_deliberately_skewed_split() {
    let up = upstream().await;
    let (h, rec) = start(config(up, 0.25, 0.25)).await;
    let url = format!("http://{}/", h.local_addr());
    fan_out(url, random_keys(4_000, 3), 16).await;
    let c = rec.snapshot(Cohort::Control).total;
    let e = rec.snapshot(Cohort::Experiment).total;
    let u = rec.untouched_total();
    assert!(!sample_ratio_mismatch(c, e, u, 0.25, 0.25).mismatch);
    // The check that gates verdicts counts distinct keys: 4,000 random keys
    // each sent once land as configured.
    let by_keys = chaos::traffic::key_sample_ratio_mismatch(rec.keys(), 0.25, 0.25);
    assert!(!by_keys.mismatch, "{by_keys:?}");
    // Skew: drop a fifth of the experiment cohort, as a broken recorder
    // or a cohort-dependent crash would.
    let skewed = sample_ratio_mismatch(c, e * 4 / 5, u, 0.25, 0.25);
    assert!(skewed.mismatch, "{skewed:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_client_gives_up_on_count_as_failures_of_their_cohort() {
    // A 5 s latency fault against clients that wait 1 s: every experiment
    // request is abandoned. They must show up as experiment-cohort failures
    // (what the clients saw), not vanish and leave the cohort looking
    // healthy. All 40 requests go at once, so the test takes about 1 s.
    let up = upstream().await;
    let (h, rec) = start(config(up, 0.5, 0.5)).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=latency,delay=5s").unwrap()]);
    let url = format!("http://{}/", h.local_addr());
    let c = client();
    let mut requests = tokio::task::JoinSet::new();
    for k in random_keys(40, 21).into_iter().flatten() {
        let req =
            http::Request::get(&url).header("x-user-id", k).body(Empty::new()).unwrap();
        let c = c.clone();
        requests
            .spawn(async move { timeout(Duration::from_secs(1), c.request(req)).await });
    }
    let mut abandoned = 0;
    while let Some(done) = requests.join_next().await {
        abandoned += u64::from(done.expect("request task").is_err());
    }
    // The proxy notices the closed connections; give it a moment.
    let mut recorded = None;
    for _ in 0..100 {
        let e = rec.snapshot(Cohort::Experiment);
        if e.total == abandoned {
            recorded = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = recorded.unwrap_or_else(|| {
        panic!("{abandoned} abandoned, recorded {:?}", rec.totals(Cohort::Experiment))
    });
    assert!(abandoned >= 10, "only {abandoned} of 40 keys in the experiment cohort");
    assert_eq!(e.errors, abandoned, "abandoned requests are failures");
    assert_eq!(e.status_counts.get(&0), Some(&abandoned), "{:?}", e.status_counts);
    // Arrival at the proxy trails the client's clock by the connect and
    // scheduling delay, which reaches 100-200 ms on a loaded machine.
    for s in &e.samples {
        assert!(
            (500.0..4000.0).contains(&s.latency_ms),
            "recorded when abandoned, not at the fault's 5 s: {s:?}"
        );
    }
    let ctl = rec.snapshot(Cohort::Control);
    assert_eq!((ctl.total, ctl.errors), (40 - abandoned, 0));
    // Every key was recorded, so the key-level split check is satisfied.
    assert!(!chaos::traffic::key_sample_ratio_mismatch(rec.keys(), 0.5, 0.5).mismatch);
    h.shutdown().await;
}

async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut b =
        http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = client().request(b.body(Empty::new()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_without_the_token_are_refused() {
    let up = upstream().await;
    let (h, _) = start(config(up, 1.0, 0.0)).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=abort,id=cut,enabled=false").unwrap()]);
    let a = h.admin_addr().unwrap();
    assert_eq!(admin(a, "POST", "/faults/cut/enable", None).await.0, 401);
    assert_eq!(admin(a, "POST", "/faults/cut/enable", Some("guess")).await.0, 401);
    assert!(!h.faults()[0].enabled, "a refused change must not apply");
    assert_eq!(admin(a, "POST", "/faults/cut/enable", Some("s3cret")).await.0, 200);
    assert!(h.faults()[0].enabled);
    assert_eq!(admin(a, "POST", "/faults/nope/enable", Some("s3cret")).await.0, 404);
    let (status, faults) = admin(a, "GET", "/faults", None).await;
    assert_eq!(status, 200);
    assert!(faults.contains("\"enabled\":true"), "{faults}");
    assert_eq!(admin(a, "GET", "/healthz", None).await, (200, "ok\n".into()));
    let (status, cohorts) = admin(a, "GET", "/cohorts", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&cohorts).unwrap();
    assert_eq!(v["srm"]["mismatch"], false, "{v}");
    let (_, metrics) = admin(a, "GET", "/metrics", None).await;
    for name in chaos::metrics::labels::ALL {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    h.shutdown().await;

    // Without a configured token, nothing can be changed at all.
    let mut cfg = config(up, 1.0, 0.0);
    cfg.admin.as_mut().unwrap().token = None;
    let (h, _) = start(cfg).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=abort,id=cut,enabled=false").unwrap()]);
    let a = h.admin_addr().unwrap();
    assert_eq!(admin(a, "POST", "/faults/cut/enable", Some("")).await.0, 403);
    assert!(!h.faults()[0].enabled);
    h.shutdown().await;
}

/// SIGKILLs a `chaos proxy` child by PID if a test fails before it stops it.
pub(crate) struct KillOnDrop(pub(crate) u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn the_cli_proxies_until_sigterm_and_prints_a_cohort_summary() {
    use std::io::{BufRead, BufReader, Read};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream());
    let mut child = std::process::Command::new(crate::support::chaos_bin())
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("http://{up}"))
        .args(["--experiment-percent", "50", "--control-percent", "50"])
        .args(["--fault", "kind=error,status=418"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let seen = rt.block_on(async {
        let c = client();
        let mut statuses = Vec::new();
        for i in 0..20 {
            statuses.push(
                get(&c, &format!("http://{addr}/"), Some(&format!("u{i}"))).await.status,
            );
        }
        statuses
    });
    assert!(seen.iter().all(|s| *s == 200 || *s == 418), "{seen:?}");
    assert!(seen.contains(&418) && seen.contains(&200), "{seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("untouched 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_proxied_to_an_http1_upstream() {
    let up = upstream().await;
    let (h, rec) = start(config(up, 1.0, 0.0)).await;
    let h2: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let s = get(&h2, &format!("http://{}/", h.local_addr()), Some("k")).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.body, BODY.as_bytes());
    assert_eq!(s.cohort.as_deref(), Some("experiment"));
    assert_eq!(s.upstream_cohort.as_deref(), Some("experiment"));
    assert_eq!(rec.totals(Cohort::Experiment), (1, 0));
    h.shutdown().await;
}

#[test]
fn the_cli_takes_its_traffic_section_and_switched_off_faults_from_an_experiment_file() {
    use std::io::{BufRead, BufReader, Read};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(upstream());
    let free =
        || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (listen, admin) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[experiment]
name = "proxy config"
duration = "10s"
[traffic]
listen = "{listen}"
upstream = "http://{up}"
cohort_key = "header:x-user-id"
experiment_percent = 50
control_percent = 50
[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"
[[fault]]
name = "teapot"
kind = "http-error"
status = 418
"#
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::support::chaos_bin())
        .args(["proxy", "--config"])
        .arg(&file)
        .args(["--admin", &admin.to_string(), "--admin-token", "t0k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Validation warnings come first (a 50% cohort is a large blast radius).
    let mut seen = String::new();
    for _ in 0..10 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 || line.contains(&listen.to_string())
        {
            seen.push_str(&line);
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains(&listen.to_string()), "listens where [traffic] says: {seen}");
    let statuses = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let c = client();
            let mut v = Vec::new();
            for i in 0..40 {
                let s =
                    get(&c, &format!("http://{listen}/"), Some(&format!("u{i}"))).await;
                v.push((s.status, s.cohort.clone()));
            }
            v
        })
    };
    // The file's fault is loaded switched off: nobody gets a 418 yet, and
    // the 50/50 split from the file puts every keyed request in a cohort.
    let before = statuses(&rt);
    assert!(before.iter().all(|(s, c)| *s == 200 && c.is_some()), "{before:?}");
    let enabled = rt.block_on(async {
        let c = client();
        let req = hyper::Request::post(format!("http://{admin}/faults/teapot/enable"))
            .header("authorization", "Bearer t0k")
            .body(Empty::new())
            .unwrap();
        c.request(req).await.unwrap().status()
    });
    assert_eq!(enabled, 200);
    let after = statuses(&rt);
    assert!(
        after.iter().any(|(s, c)| *s == 418 && c.as_deref() == Some("experiment")),
        "{after:?}"
    );
    assert!(
        after.iter().all(|(s, c)| *s != 418 || c.as_deref() == Some("experiment")),
        "a fault reached control: {after:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
}
