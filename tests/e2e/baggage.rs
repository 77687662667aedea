//! The cohort in W3C baggage over real loopback HTTP: what an upstream
//! receives behind an edge proxy (with and without client baggage, spoofed
//! members, the W3C limits), and a sidecar that finds the cohort in baggage
//! after a service that propagates only its OpenTelemetry context.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chaos::cohort::COHORT_HEADER;
use chaos::metrics::Recorder;
use chaos::traffic::baggage::{BAGGAGE, MAX_MEMBERS};
use chaos::traffic::{CohortKey, HttpFault, Proxy, ProxyConfig, ProxyHandle, ProxyMode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

type TestClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn joined(h: &http::HeaderMap, name: impl http::header::AsHeaderName) -> String {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>().join(" | ")
}

/// Serves `handler` on a fresh loopback port.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Answers with what it received: every `baggage` line (joined by " | ")
/// in `x-seen-baggage`, the cohort header in `x-seen-cohort`.
async fn echo() -> SocketAddr {
    serve(|req: http::Request<Incoming>| async move {
        let h = req.headers();
        http::Response::builder()
            .header("x-seen-baggage", joined(h, BAGGAGE))
            .header("x-seen-cohort", joined(h, COHORT_HEADER))
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await
}

/// A service instrumented with OpenTelemetry and nothing else: it calls
/// its dependency at `next` carrying the incoming `baggage` (what the W3C
/// propagator does) but not `x-chaos-cohort`, and relays the answer.
async fn otel_service(next: SocketAddr) -> SocketAddr {
    serve(move |req: http::Request<Incoming>| async move {
        let mut out = http::Request::get(format!("http://{next}/dep"));
        for v in req.headers().get_all(BAGGAGE) {
            out = out.header(BAGGAGE, v.clone());
        }
        let resp = client().request(out.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        http::Response::from_parts(parts, Full::new(body))
    })
    .await
}

fn proxy_config(up: SocketAddr, mode: ProxyMode, share: f64) -> ProxyConfig {
    let key = CohortKey::Header("x-user-id".into());
    let mut cfg =
        crate::support::proxy_config(&format!("http://{up}"), key, share, share);
    cfg.mode = mode;
    cfg
}

async fn start(cfg: ProxyConfig) -> ProxyHandle {
    let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 1_000));
    Proxy::start(cfg, rec).await.unwrap()
}

/// What one request through the chain showed.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// The cohort the edge assigned (its response header).
    cohort: Option<String>,
    upstream_baggage: String,
    upstream_cohort: String,
}

async fn get(addr: SocketAddr, key: &str, headers: &[(&str, &str)]) -> Seen {
    let mut b = http::Request::get(format!("http://{addr}/")).header("x-user-id", key);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = timeout(T, client().request(b.body(Empty::new()).unwrap()))
        .await
        .unwrap()
        .unwrap();
    let h = resp.headers();
    Seen {
        status: resp.status().as_u16(),
        cohort: h.get(COHORT_HEADER).map(|v| v.to_str().unwrap().to_string()),
        upstream_baggage: joined(h, "x-seen-baggage"),
        upstream_cohort: joined(h, "x-seen-cohort"),
    }
}

/// Keys that the edge (50% / 50%) put in each cohort: one per cohort.
async fn one_key_per_cohort(edge: SocketAddr) -> [(String, String); 2] {
    let mut control = None;
    let mut experiment = None;
    for i in 0..200 {
        let key = format!("user-{i}");
        match get(edge, &key, &[]).await.cohort.as_deref() {
            Some("control") => control = control.or(Some(key)),
            Some("experiment") => experiment = experiment.or(Some(key)),
            other => panic!("50/50 edge left {key} in {other:?}"),
        }
        if control.is_some() && experiment.is_some() {
            break;
        }
    }
    [
        ("control".into(), control.expect("a control key")),
        ("experiment".into(), experiment.expect("an experiment key")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_merges_its_cohort_into_client_baggage_and_strips_spoofed_members() {
    let up = echo().await;
    let edge = start(proxy_config(up, ProxyMode::Edge, 0.5)).await;
    let addr = edge.local_addr();
    for (cohort, key) in one_key_per_cohort(addr).await {
        let ours = format!("chaos.cohort={cohort}");
        // No baggage: ours alone, next to the header.
        let s = get(addr, &key, &[]).await;
        assert_eq!((s.status, s.upstream_cohort.as_str()), (200, cohort.as_str()));
        assert_eq!(s.upstream_baggage, ours);
        // Existing baggage: kept byte for byte, ours appended.
        let theirs = "userId=alice%2C42;ttl=3, isProduction=false";
        let s = get(addr, &key, &[("baggage", theirs)]).await;
        assert_eq!(s.upstream_baggage, format!("{theirs},{ours}"));
        // Spoofed: whichever cohort the client claims, the edge's wins and
        // the other members survive.
        for claim in ["experiment", "control"] {
            let spoof = format!("a=1,chaos.cohort={claim};p=x,b=2");
            let s = get(addr, &key, &[("baggage", &spoof)]).await;
            assert_eq!(s.upstream_baggage, format!("a=1,b=2,{ours}"), "{claim}");
        }
        // Two baggage lines: joined into one (some propagators read one).
        let s = get(addr, &key, &[("baggage", "a=1"), ("baggage", "b=2")]).await;
        assert_eq!(s.upstream_baggage, format!("a=1,b=2,{ours}"));
        // At the W3C member limit: ours is dropped, theirs untouched, the
        // header still carries the cohort.
        let full =
            (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        let s = get(addr, &key, &[("baggage", &full)]).await;
        assert_eq!(s.upstream_baggage, full);
        assert_eq!(s.upstream_cohort, cohort);
        // At the byte limit: the same.
        let big = format!("big={}", "v".repeat(8192 - 4));
        let s = get(addr, &key, &[("baggage", &big)]).await;
        assert_eq!(s.upstream_baggage, big);
    }
    edge.shutdown().await;

    // Untouched traffic (0% / 0%): nothing added, a spoofed member removed.
    let edge = start(proxy_config(up, ProxyMode::Edge, 0.0)).await;
    let addr = edge.local_addr();
    let s = get(addr, "u", &[]).await;
    assert_eq!((s.cohort, s.upstream_baggage.as_str()), (None, ""));
    let s = get(addr, "u", &[("baggage", "a=1,chaos.cohort=experiment")]).await;
    assert_eq!((s.upstream_baggage.as_str(), s.upstream_cohort.as_str()), ("a=1", ""));
    let s = get(addr, "u", &[("baggage", "chaos.cohort=control")]).await;
    assert_eq!(s.upstream_baggage, "", "an emptied baggage header is not sent");
    let s = get(addr, "u", &[("baggage", "a=1;p, b=2")]).await;
    assert_eq!(s.upstream_baggage, "a=1;p, b=2", "untouched baggage passes as is");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_finds_the_cohort_in_baggage_an_instrumented_service_propagated() {
    // client → edge → service (baggage only) → sidecar (503 fault for the
    // experiment cohort) → dependency.
    let dep = echo().await;
    let sidecar = start(proxy_config(dep, ProxyMode::Sidecar, 0.0)).await;
    sidecar.set_faults(vec![HttpFault::parse_spec("kind=error,status=503").unwrap()]);
    let service = otel_service(sidecar.local_addr()).await;
    let edge = start(proxy_config(service, ProxyMode::Edge, 0.5)).await;
    let addr = edge.local_addr();
    for (cohort, key) in one_key_per_cohort(addr).await {
        let s = get(addr, &key, &[("baggage", "tenant=acme")]).await;
        if cohort == "experiment" {
            assert_eq!(s.status, 503, "the sidecar faulted the experiment cohort");
        } else {
            assert_eq!(s.status, 200);
            assert_eq!(s.upstream_cohort, "", "the service dropped the header");
            assert_eq!(s.upstream_baggage, "tenant=acme,chaos.cohort=control");
        }
    }
    // Straight to the sidecar: the header wins over baggage; baggage alone
    // counts; the sidecar forwards baggage untouched.
    let side = sidecar.local_addr();
    let cases = [
        (vec![("baggage", "chaos.cohort=experiment")], 503),
        (
            vec![("x-chaos-cohort", "control"), ("baggage", "chaos.cohort=experiment")],
            200,
        ),
        (vec![("baggage", "a=1, chaos.cohort = control;p")], 200),
        (vec![("baggage", "chaos.cohort=bogus")], 200),
    ];
    for (headers, status) in cases {
        let s = get(side, "k", &headers).await;
        assert_eq!(s.status, status, "{headers:?}");
        if status == 200 {
            let sent = headers.iter().find(|(k, _)| *k == "baggage").unwrap().1;
            assert_eq!(s.upstream_baggage, sent);
        }
    }
    edge.shutdown().await;
    sidecar.shutdown().await;
}

#[test]
fn the_demo_api_carries_the_cohort_to_payments_in_baggage_by_the_same_rules() {
    use chaos::cohort::Cohort;
    use chaos::demo::{Fleet, FleetSpec, Variant, PAYMENT_BAGGAGE_HEADER};
    let dir = tempfile::tempdir().unwrap();
    let mut spec = FleetSpec::new(Variant::Resilient, dir.path().join("fleet"));
    spec.exe = Some(crate::support::chaos_bin());
    let fleet = Fleet::start(spec).expect("fleet starts");
    let url = format!("{}/checkout", fleet.api_url(Cohort::Experiment).unwrap());
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        // The edge's header, the client's own members kept.
        (
            &[("x-chaos-cohort", "experiment"), ("baggage", "tenant=acme;p=1")],
            "tenant=acme;p=1,chaos.cohort=experiment",
        ),
        // The header decides over a stale member.
        (
            &[("x-chaos-cohort", "control"), ("baggage", "chaos.cohort=experiment,k=v")],
            "k=v,chaos.cohort=control",
        ),
        // Baggage alone (an OpenTelemetry hop dropped the header).
        (&[("baggage", "chaos.cohort=experiment")], "chaos.cohort=experiment"),
        // No cohort at all: nothing invented.
        (&[], ""),
    ];
    for (headers, want) in cases {
        let mut req = client.get(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 200, "{headers:?}");
        let seen = resp
            .headers()
            .get(PAYMENT_BAGGAGE_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(seen, want, "{headers:?}");
    }
}
