//! Heavy-tailed users through a real `chaos run` (issue 15): requests of
//! one user share a cohort and an outcome, so verdicts must count users,
//! not requests. The proxy, the load generator (Zipf user mix) and the
//! verdict engine are the real ones; the upstream is a loopback hyper
//! server whose broken users fail every request.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::support::{chaos_bin, heavy};

/// A loopback upstream on its own runtime; dropping it stops it.
struct BrokenUsersUpstream {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    broken: Arc<Mutex<HashSet<String>>>,
}

/// Answers 200, except to broken users, who get 500 on every request. The
/// broken users are the first `count` of `user-0 … user-(among-1)` (the
/// heaviest of a Zipf mix) that arrive in the experiment cohort: an A/A
/// run in the unlucky draw where users whose accounts are broken all
/// landed on one side. Nothing is injected.
fn broken_users_upstream(count: usize, among: u64) -> BrokenUsersUpstream {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let broken: Arc<Mutex<HashSet<String>>> = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("addr");
    let shared = broken.clone();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let broken = shared.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let broken = broken.clone();
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let user = header("x-user-id");
                            let heavy = user
                                .strip_prefix("user-")
                                .and_then(|n| n.parse::<u64>().ok())
                                .is_some_and(|n| n < among);
                            let fail = {
                                let mut b =
                                    broken.lock().unwrap_or_else(|p| p.into_inner());
                                if heavy
                                    && header("x-chaos-cohort") == "experiment"
                                    && b.len() < count
                                {
                                    b.insert(user.clone());
                                }
                                b.contains(&user)
                            };
                            let status = if fail { 500 } else { 200 };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .expect("static response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    BrokenUsersUpstream { _rt: rt, addr, broken }
}

/// Two broken heavy users in the experiment cohort: per request, the
/// experiment's error rate is several points above control and the
/// per-request test rejects "errors ≤ +0.5pp" with p far below α. Per key,
/// two users are two independent units: with k failing users the per-key
/// z statistic is at most about √k (here 1.41 < 1.645), so the error-rate
/// hypothesis cannot be rejected, whatever their share of traffic. The
/// critical latency hypothesis is accepted, so the run is ACCEPTED (exit 0)
/// where the per-request test would have rejected it (exit 1). The seed
/// fixes the user sequence and the cohort of every user.
#[test]
fn a_a_run_with_heavy_tailed_failing_users_is_accepted_with_per_key_variance() {
    let _heavy = heavy();
    let up = broken_users_upstream(2, 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = dir.path().join("heavy-users.toml");
    std::fs::write(
        &exp,
        format!(
            r#"
[experiment]
name = "heavy users A/A"
duration = "6s"
baseline = "1s"
seed = 15
min_samples = 300

[traffic]
listen = "127.0.0.1:0"
upstream = "http://{}"
experiment_percent = 40
control_percent = 40
upstream_timeout = "1s"

[load]
path = "/"
rate = 400
concurrency = 64
keys = {{ count = 500, zipf = 1.1 }}

[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+0.5pp"

[[hypothesis]]
name = "latency holds"
metric = "latency"
tolerance = "+25%"
critical = true
"#,
            up.addr
        ),
    )
    .expect("write experiment");
    let reports = dir.path().join("reports");
    let out = Command::new(chaos_bin())
        .args(["run", "--json", "--quiet", "--report-dir"])
        .arg(&reports)
        .arg(&exp)
        .env("CHAOS_JOURNAL_DIR", dir.path().join("journal"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("--json prints the result ({e}):\n{stdout}\n{stderr}")
    });
    let broken = up.broken.lock().expect("lock").clone();
    assert_eq!(broken.len(), 2, "two heavy users broke in the experiment: {broken:?}");
    let errors = &v["hypotheses"][0];
    let latency = &v["hypotheses"][1];
    let k = &errors["per_key"];
    assert!(k.is_object(), "{errors}\n{stderr}");
    // The per-request test on the same data rejects with certainty (even
    // after Holm over two hypotheses)...
    let p_request = k["p_value_per_request"].as_f64().expect("per-request P(worse)");
    assert!(p_request < 1e-3, "per-request P(worse) {p_request}: {errors}");
    assert!(errors["estimate"].as_f64().expect("estimate") > 1.0, "{errors}");
    // ...because the failures sit in two users, which per-key inference
    // sees as two units.
    assert!(k["design_effect_experiment"].as_f64().expect("deff") > 5.0, "{errors}");
    assert!(k["keys_experiment"].as_u64().expect("keys") >= 30, "{errors}");
    assert_ne!(errors["verdict"], "rejected", "{errors}");
    assert!(errors["p_value"].as_f64().expect("P(worse)") > 0.05, "{errors}");
    assert_eq!(latency["verdict"], "accepted", "{latency}");
    assert!(latency["p_within"].as_f64().expect("P(within)") <= 0.05, "{latency}");
    assert_eq!(v["outcome"], "accepted", "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let errs = crate::report::schema_errors(&v);
    assert!(errs.is_empty(), "result.json breaks its schema: {errs:?}");
}
