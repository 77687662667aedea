//! End-to-end tests of the proxy on production paths (issue 13, items
//! 1-10): WebSocket upgrades, h2c/gRPC upstreams with trailers, forwarding
//! headers, hop-by-hop rules, HTTP/1.1 trailers, retries on stale upstream
//! connections, Host checks, client framing errors, timeouts and header
//! limits. Everything runs over real loopback sockets; framing cases use
//! raw-socket clients or upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};
use chaos::metrics::Recorder;
use chaos::traffic::{
    assign_position, CohortKey, ForwardedMode, HttpFault, Proxy, ProxyConfig, ProxyHandle,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);

fn config_for(upstream_url: String, experiment: f64, control: f64) -> ProxyConfig {
    let key = CohortKey::Header("x-user-id".into());
    crate::support::proxy_config(&upstream_url, key, experiment, control)
}

fn config(up: SocketAddr, experiment: f64, control: f64) -> ProxyConfig {
    config_for(format!("http://{up}"), experiment, control)
}

async fn start(cfg: ProxyConfig) -> (ProxyHandle, Arc<Recorder>) {
    let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 10_000));
    let h = Proxy::start(cfg, rec.clone()).await.unwrap();
    (h, rec)
}

/// A `x-user-id` value that lands in `cohort` with a 50/50 split, seed 0.
fn key_for(cohort: Cohort) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| {
            let p = assign_position(k.as_bytes(), 0);
            (p < 0.5) == (cohort == Cohort::Experiment)
        })
        .unwrap()
}

use crate::support::accept_loop;

/// A hyper HTTP/1.1 upstream answering every request with the request's
/// headers, one `name: value` line each (the body is read first, and its
/// trailers are listed after a `--` line). `/conn` also sends a header it
/// names in `Connection`; `/trailers` answers chunked with trailers.
async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    accept_loop(l, |s| async move {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let mut text = String::new();
            for (k, v) in &parts.headers {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            let collected = body.collect().await;
            let req_trailers = collected.ok().and_then(|c| c.trailers().cloned());
            if let Some(t) = &req_trailers {
                text.push_str("--\n");
                for (k, v) in t {
                    text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
            }
            let resp = match parts.uri.path() {
                "/conn" => http::Response::builder()
                    .header("connection", "x-up-secret")
                    .header("x-up-secret", "1")
                    .header("x-up-public", "1"),
                "/trailers" => http::Response::builder()
                    .header("trailer", "x-resp-sum, x-seen-req-sum"),
                _ => http::Response::builder(),
            };
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-resp-sum", "7".parse().unwrap());
            let seen = req_trailers
                .as_ref()
                .and_then(|t| t.get("x-req-sum").cloned())
                .unwrap_or_else(|| "none".parse().unwrap());
            trailers.insert("x-seen-req-sum", seen);
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = if parts.uri.path()
                == "/trailers"
            {
                vec![Ok(Frame::data(Bytes::from(text))), Ok(Frame::trailers(trailers))]
            } else {
                vec![Ok(Frame::data(Bytes::from(text)))]
            };
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, Infallible>(resp.body(body).unwrap())
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    addr
}

/// Reads an HTTP/1.1 response off a raw socket until the server closes or
/// `until` appears, for at most `limit`.
async fn read_until(s: &mut TcpStream, until: &[u8], limit: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 16384];
    loop {
        if !until.is_empty() && buf.windows(until.len()).any(|w| w == until) {
            return buf;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    String::from_utf8_lossy(&read_until(&mut s, b"", T).await).to_string()
}

/// Item 1: WebSocket through the proxy, and faults on the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_both_ways_and_faults_hit_the_experiment_handshake() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    accept_loop(l, |s| async move {
        let mut seen_cohort = String::from("none");
        // The callback's signature is tungstenite's.
        #[allow(clippy::result_large_err)]
        let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  resp| {
            if let Some(c) = req.headers().get(COHORT_HEADER) {
                seen_cohort = c.to_str().unwrap_or("?").to_string();
            }
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else { return };
        // Server to client first, then echo.
        let _ = ws.send(Message::text(format!("hello {seen_cohort}"))).await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() || m.is_binary() {
                let _ = ws.send(m).await;
            } else if m.is_close() {
                return;
            }
        }
    });
    let (h, rec) = start(config(up, 0.5, 0.5)).await;
    let url = format!("ws://{}/chat", h.local_addr());
    let request = |key: &str| {
        let mut r = url.as_str().into_client_request().unwrap();
        r.headers_mut().insert("x-user-id", key.parse().unwrap());
        r
    };

    let control = key_for(Cohort::Control);
    let (mut ws, resp) = timeout(T, tokio_tungstenite::connect_async(request(&control)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()[COHORT_HEADER], "control");
    let hello = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(hello.into_text().unwrap(), "hello control");
    for i in 0..50 {
        let msg = format!("message {i} {}", "x".repeat(i * 100));
        ws.send(Message::text(msg.clone())).await.unwrap();
        let back = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back.into_text().unwrap(), msg);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let back = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(back.into_data().to_vec(), vec![0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();

    // An error fault answers the experiment handshake instead of upgrading.
    h.set_faults(vec![HttpFault::parse_spec("kind=error,status=503").unwrap()]);
    let experiment = key_for(Cohort::Experiment);
    let err = timeout(T, tokio_tungstenite::connect_async(request(&experiment)))
        .await
        .unwrap()
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()[FAULT_HEADER], "error");
        }
        other => panic!("expected an HTTP 503 handshake answer, got {other}"),
    }
    // ... while the control cohort still upgrades.
    let (mut ws, _) = timeout(T, tokio_tungstenite::connect_async(request(&control)))
        .await
        .unwrap()
        .unwrap();
    assert!(timeout(T, ws.next()).await.unwrap().unwrap().is_ok());
    ws.close(None).await.unwrap();

    // A latency fault delays the experiment handshake, then it works.
    h.set_faults(vec![HttpFault::parse_spec("kind=latency,delay=400ms").unwrap()]);
    let t0 = Instant::now();
    let (mut ws, resp) =
        timeout(T, tokio_tungstenite::connect_async(request(&experiment)))
            .await
            .unwrap()
            .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(400), "{:?}", t0.elapsed());
    assert_eq!(resp.headers()[FAULT_HEADER], "latency");
    let hello = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(hello.into_text().unwrap(), "hello experiment");
    ws.send(Message::text("ping")).await.unwrap();
    let back = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(back.into_text().unwrap(), "ping");
    ws.close(None).await.unwrap();

    let exp = rec.snapshot(Cohort::Experiment);
    assert_eq!(exp.status_counts.get(&503), Some(&1), "{:?}", exp.status_counts);
    assert_eq!(exp.status_counts.get(&101), Some(&1), "{:?}", exp.status_counts);
    assert_eq!(rec.snapshot(Cohort::Control).status_counts.get(&101), Some(&2));
    h.shutdown().await;
}

/// An h2c gRPC-style upstream: answers every call with one length-prefixed
/// message and `grpc-status: 0` in the trailers, and reports the cohort it
/// saw in `x-seen-cohort`.
async fn h2c_grpc_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    accept_loop(l, |s| async move {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let seen = req
                .headers()
                .get(COHORT_HEADER)
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_else(|| "none".into());
            let version = format!("{:?}", req.version());
            let got =
                req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            // Echo the request message back, gRPC framing included.
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "".parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(got)), Ok(Frame::trailers(trailers))];
            let resp = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("x-seen-cohort", seen)
                .header("x-seen-version", version)
                .body(StreamBody::new(futures_util::stream::iter(frames)))
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    addr
}

/// Item 2: HTTP/2 client -> proxy -> h2c upstream with trailers; the gRPC
/// fault answers the experiment cohort only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_an_h2c_upstream_with_trailers_and_the_grpc_fault_hits_only_experiment(
) {
    let up = h2c_grpc_upstream().await;
    let (h, rec) = start(config_for(format!("h2c://{up}"), 0.5, 0.5)).await;
    h.set_faults(vec![HttpFault::parse_spec(
        "kind=grpc,code=14,message=shed by chaos: 100%",
    )
    .unwrap()]);
    let stream = TcpStream::connect(h.local_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One gRPC message: uncompressed flag, length, payload.
    let msg = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let call = |key: String| {
        http::Request::post(format!("http://{}/echo.Echo/Say", h.local_addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-user-id", key)
            .body(Full::new(msg.clone()))
            .unwrap()
    };
    let control = key_for(Cohort::Control);
    let experiment = key_for(Cohort::Experiment);
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let resp = timeout(T, sender.send_request(call(control.clone())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-seen-cohort"], "control");
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), msg);

        sender.ready().await.unwrap();
        let resp = timeout(T, sender.send_request(call(experiment.clone())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "shed by chaos: 100%25");
        assert_eq!(resp.headers()[FAULT_HEADER], "grpc");
        let collected = resp.into_body().collect().await.unwrap();
        assert!(collected.to_bytes().is_empty(), "trailers-only response");
    }
    assert_eq!(rec.snapshot(Cohort::Control).total, 20);
    assert_eq!(rec.snapshot(Cohort::Experiment).total, 20);
    assert_eq!(rec.faults_injected(chaos::metrics::labels::FaultKindLabel::Grpc), 20);

    // An HTTP/1.1 client reaches the same h2c upstream.
    let text = raw(
        h.local_addr(),
        format!(
            "POST /echo.Echo/Say HTTP/1.1\r\nhost: x\r\nx-user-id: {control}\r\n\
             content-type: application/grpc\r\ncontent-length: 10\r\nconnection: close\r\n\r\n\
             \x00\x00\x00\x00\x05hello"
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-seen-version: HTTP/2.0"), "{text}");
    h.shutdown().await;
}

/// A grpcio server (Python, Debian's python3-grpcio) on a loopback port;
/// killed by PID when dropped.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The system Python (Debian's python3-grpcio is installed for it, not
/// for whatever `python3` is first on PATH).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn grpcio_available() -> bool {
    std::process::Command::new(SYSTEM_PYTHON)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn grpc_peer() -> std::path::PathBuf {
    crate::support::repo_root().join("tests/fixtures/grpc_peer.py")
}

fn grpc_server() -> GrpcServer {
    use std::io::BufRead;
    let mut child = std::process::Command::new(SYSTEM_PYTHON)
        .arg(grpc_peer())
        .arg("serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = GrpcServer { child, port: 0 };
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    server.port = line.trim().parse().unwrap_or_else(|_| panic!("port line {line:?}"));
    server
}

/// Runs the grpcio client: `n` unary calls and one server-streaming call
/// through `addr` with `x-user-id: key`; its JSON report.
async fn grpc_calls(addr: SocketAddr, key: String, n: usize) -> serde_json::Value {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(SYSTEM_PYTHON)
            .arg(grpc_peer())
            .args(["call", &addr.to_string(), &key, &n.to_string()])
            .output()
            .unwrap()
    });
    let out = timeout(Duration::from_secs(60), run).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Item 2 against a real gRPC stack on both sides: grpcio client ->
/// proxy (h2c from the client) -> grpcio server (h2c upstream). Unary and
/// server-streaming calls keep their messages and trailing metadata; the
/// `grpc` fault fails experiment calls with UNAVAILABLE and its message,
/// as gRPC itself decodes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_and_server_talk_through_the_proxy_and_see_the_grpc_fault() {
    if !crate::support::require_capability(
        grpcio_available(),
        "python3-grpcio (scripts/install-deps.sh)",
    ) {
        return;
    }
    let server = grpc_server();
    let up: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let (h, rec) = start(config_for(format!("h2c://{up}"), 0.5, 0.5)).await;
    // Without a fault, gRPC's own HTTP/2 client goes through the relay.
    let relayed = grpc_calls(h.local_addr(), key_for(Cohort::Experiment), 5).await;
    for c in relayed["unary"].as_array().unwrap() {
        assert_eq!(c["code"], "OK", "{c}");
        assert_eq!(c["trailing"]["x-seen-cohort"], "experiment", "{c}");
        assert_eq!(c["initial"][COHORT_HEADER], "experiment", "{c}");
    }
    assert_eq!(relayed["stream"]["messages"], serde_json::json!(["n-0", "n-1", "n-2"]));
    assert_eq!(relayed["stream"]["trailing"]["x-count-trailer"], "3");
    assert_eq!(h.fast_path_requests(), 6, "5 unary calls and 1 stream, relayed");
    assert_eq!(rec.snapshot(Cohort::Experiment).total, 6);
    h.set_faults(vec![HttpFault::parse_spec(
        "kind=grpc,code=14,message=shed by chaos: 100%",
    )
    .unwrap()]);

    let control = grpc_calls(h.local_addr(), key_for(Cohort::Control), 10).await;
    let unary = control["unary"].as_array().unwrap();
    assert_eq!(unary.len(), 10);
    for c in unary {
        assert_eq!(c["code"], "OK", "{c}");
        assert_eq!(c["echoed"], true, "{c}");
        assert_eq!(c["trailing"]["x-echo-trailer"], "kept", "{c}");
        assert_eq!(c["trailing"]["x-seen-cohort"], "control", "{c}");
        assert_eq!(c["initial"][COHORT_HEADER], "control", "{c}");
    }
    let stream = &control["stream"];
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["messages"], serde_json::json!(["n-0", "n-1", "n-2"]));
    assert_eq!(stream["trailing"]["x-count-trailer"], "3", "{stream}");

    let experiment = grpc_calls(h.local_addr(), key_for(Cohort::Experiment), 10).await;
    for c in experiment["unary"].as_array().unwrap() {
        assert_eq!(c["code"], "UNAVAILABLE", "{c}");
        assert_eq!(c["details"], "shed by chaos: 100%", "{c}");
    }
    assert_eq!(experiment["stream"]["code"], "UNAVAILABLE");
    // With the fault on, new connections take the general path.
    assert_eq!(h.fast_path_requests(), 6);
    assert_eq!(rec.snapshot(Cohort::Control).total, 11);
    assert_eq!(rec.snapshot(Cohort::Experiment).total, 6 + 11);
    assert_eq!(rec.faults_injected(chaos::metrics::labels::FaultKindLabel::Grpc), 11);
    h.shutdown().await;
}

/// Item 3: X-Forwarded-For / -Proto and Forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_append_for_trusted_peers_and_replace_spoofed_ones() {
    let up = echo_upstream().await;
    let spoof = b"GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 6.6.6.6\r\n\
                  x-forwarded-proto: https\r\nforwarded: for=6.6.6.6\r\nconnection: close\r\n\r\n";

    // Default: append, nobody trusted -> the client's list is replaced.
    let (h, _) = start(config(up, 0.0, 0.0)).await;
    let text = raw(h.local_addr(), spoof).await;
    assert!(text.contains("\nx-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(text.contains("\nx-forwarded-proto: http\n"), "{text}");
    assert!(text.contains("\nforwarded: for=127.0.0.1;proto=http\n"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");
    h.shutdown().await;

    // A trusted peer's list is kept and extended.
    let mut cfg = config(up, 0.0, 0.0);
    cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let (h, _) = start(cfg).await;
    let text = raw(h.local_addr(), spoof).await;
    assert!(text.contains("\nx-forwarded-for: 6.6.6.6, 127.0.0.1\n"), "{text}");
    assert!(text.contains("\nx-forwarded-proto: https\n"), "{text}");
    assert!(
        text.contains("\nforwarded: for=6.6.6.6, for=127.0.0.1;proto=http\n"),
        "{text}"
    );
    h.shutdown().await;

    // replace ignores trust; off forwards the client's headers untouched.
    let mut cfg = config(up, 0.0, 0.0);
    cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.forwarded = ForwardedMode::Replace;
    let (h, _) = start(cfg).await;
    let text = raw(h.local_addr(), spoof).await;
    assert!(text.contains("\nx-forwarded-for: 127.0.0.1\n"), "{text}");
    h.shutdown().await;
    let mut cfg = config(up, 0.0, 0.0);
    cfg.forwarded = ForwardedMode::Off;
    let (h, _) = start(cfg).await;
    let text = raw(h.local_addr(), spoof).await;
    assert!(text.contains("\nx-forwarded-for: 6.6.6.6\n"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    h.shutdown().await;
}

/// Item 4: headers named in Connection / Proxy-Connection, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_are_stripped_in_both_directions() {
    let up = echo_upstream().await;
    let (h, _) = start(config(up, 0.0, 0.0)).await;
    let text = raw(
        h.local_addr(),
        b"GET /conn HTTP/1.1\r\nhost: x\r\nconnection: X-Secret, close\r\nx-secret: 1\r\n\
          proxy-connection: x-other\r\nx-other: 2\r\nx-public: 3\r\nkeep-alive: timeout=5\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    // Request side: what the upstream saw.
    assert!(body.contains("x-public: 3"), "{body}");
    for gone in ["x-secret", "x-other", "proxy-connection", "keep-alive"] {
        assert!(!body.contains(gone), "{gone} reached the upstream: {body}");
    }
    // Response side: what the client got.
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-up-public: 1"), "{head}");
    assert!(!head.contains("x-up-secret"), "{head}");
    h.shutdown().await;
}

/// Item 5: HTTP/1.1 trailers in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_trailers_pass_through_in_both_directions() {
    let up = echo_upstream().await;
    let (h, _) = start(config(up, 0.0, 0.0)).await;
    let text = raw(
        h.local_addr(),
        b"POST /trailers HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
          trailer: x-req-sum\r\nte: trailers\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-req-sum: 42\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("trailer: x-resp-sum, x-seen-req-sum"), "{head}");
    // The upstream saw the request trailer (and TE: trailers) ...
    assert!(body.contains("te: trailers"), "{body}");
    assert!(body.contains("--\nx-req-sum: 42\n"), "{body}");
    // ... and the client gets the response trailers after the last chunk.
    let tail = body.rsplit_once("\r\n0\r\n").map(|(_, t)| t).unwrap_or("");
    assert!(tail.contains("x-resp-sum: 7\r\n"), "{body:?}");
    assert!(tail.contains("x-seen-req-sum: 42\r\n"), "{body:?}");
    h.shutdown().await;
}

/// A raw HTTP/1.1 upstream answering `ok`; `close_every` closes the
/// connection right after every Nth response (no `Connection: close`),
/// `idle_close` closes a connection idle that long. Counts connections.
async fn closing_upstream(
    close_every: Option<usize>,
    idle_close: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    accept_loop(l, move |mut s| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut served = 0usize;
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    served += 1;
                    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(resp).await.is_err() {
                        return;
                    }
                    if close_every.is_some_and(|n| served.is_multiple_of(n)) {
                        return;
                    }
                }
                let read = match idle_close {
                    Some(d) => match timeout(d, s.read(&mut chunk)).await {
                        Ok(r) => r,
                        Err(_) => return,
                    },
                    None => s.read(&mut chunk).await,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    });
    (addr, conns)
}

/// Item 6: no spurious 502s when the upstream closes pooled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_closing_pooled_connections_cause_no_errors() {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());

    // Closes after every 5th response: 2,000 GETs over 4 keep-alive loops.
    let (up, conns) = closing_upstream(Some(5), None).await;
    let (h, rec) = start(config(up, 0.5, 0.5)).await;
    let url = format!("http://{}/", h.local_addr());
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for i in 0..500 {
                let req = http::Request::get(&url)
                    .header("x-user-id", format!("{w}-{i}"))
                    .body(Empty::new())
                    .unwrap();
                let resp = timeout(T, client.request(req)).await.unwrap().unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                if status != 200 || body != "ok" {
                    bad.push((status, body));
                }
            }
            bad
        }));
    }
    for t in tasks {
        let bad = t.await.unwrap();
        assert!(bad.is_empty(), "{} failures, first {:?}", bad.len(), bad.first());
    }
    let errors =
        rec.snapshot(Cohort::Experiment).errors + rec.snapshot(Cohort::Control).errors;
    assert_eq!(errors, 0);
    assert!(conns.load(Ordering::Relaxed) >= 400, "the upstream did close connections");
    h.shutdown().await;

    // Closes connections idle for 30 ms while requests arrive 0-60 ms apart:
    // many requests race the close.
    let (up, conns) = closing_upstream(None, Some(Duration::from_millis(30))).await;
    let (h, rec) = start(config(up, 0.0, 0.0)).await;
    let url = format!("http://{}/", h.local_addr());
    let mut failures = 0;
    for i in 0..200u64 {
        let req = http::Request::get(&url).body(Empty::new()).unwrap();
        let resp = timeout(T, client.request(req)).await.unwrap().unwrap();
        if resp.status() != 200 {
            failures += 1;
        }
        let _ = resp.into_body().collect().await;
        // Spread around the upstream's idle limit, deterministic.
        let pause = (i * 37) % 61;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    assert_eq!(failures, 0);
    assert_eq!(rec.untouched_total(), 200);
    assert!(
        conns.load(Ordering::Relaxed) > 20,
        "the upstream did close idle connections"
    );
    h.shutdown().await;
}

/// Item 7: Host missing (HTTP/1.1) or doubled -> 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_host_or_with_two_hosts_get_400() {
    let up = echo_upstream().await;
    let (h, _) = start(config(up, 0.0, 0.0)).await;
    let a = h.local_addr();
    let text = raw(a, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let text =
        raw(a, b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n")
            .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // HTTP/1.0 may omit it; one Host is fine.
    let text = raw(a, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let text = raw(a, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("host: a\n"), "{text}");
    h.shutdown().await;
}

/// Item 8: client framing errors -> 400, not the cohort's 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_framing_errors_get_400_and_are_not_upstream_failures() {
    let up = echo_upstream().await;
    let (h, rec) = start(config(up, 1.0, 0.0)).await;
    let a = h.local_addr();
    let head = "POST / HTTP/1.1\r\nhost: x\r\nx-user-id: k\r\ntransfer-encoding: chunked\r\n\r\n";
    for body in
        ["zz\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n", "5\r\nhello\n0\r\n\r\n"]
    {
        let text = raw(a, format!("{head}{body}").as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{body:?}: {text}");
    }
    let snap = rec.snapshot(Cohort::Experiment);
    assert_eq!(snap.errors, 0, "{:?}", snap.status_counts);
    assert_eq!(snap.status_counts.get(&400), Some(&3), "{:?}", snap.status_counts);
    // A well-framed chunked body still goes through.
    let text = raw(a, format!("{head}5\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    h.shutdown().await;
}

/// Item 9: client header, idle keep-alive, request body and response body
/// timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_and_upstreams_hit_their_timeouts() {
    // An upstream that sends half a body, then stalls forever.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_up = l.local_addr().unwrap();
    accept_loop(l, |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    // An upstream that trickles a body: 10 pieces 150 ms apart, so the
    // whole body takes far longer than the idle timeout but no pause does.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trickle_up = l.local_addr().unwrap();
    accept_loop(l, |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await;
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = s.write_all(&[b'0' + i]).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let echo = echo_upstream().await;
    let short = Duration::from_millis(400);
    let cfg_with = |up: SocketAddr| {
        let mut cfg = config(up, 0.0, 0.0);
        cfg.timeouts.client_header = short;
        cfg.timeouts.idle = short;
        cfg.timeouts.request_body = short;
        cfg.timeouts.response_body = short;
        cfg
    };
    let (h, _) = start(cfg_with(echo)).await;
    let a = h.local_addr();
    let closed_within = |mut s: TcpStream, limit: Duration| async move {
        let t0 = Instant::now();
        let got = read_until(&mut s, b"", Duration::from_secs(10)).await;
        (t0.elapsed() <= limit, String::from_utf8_lossy(&got).to_string())
    };

    // Header read: half a head, then silence.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let (ok, text) = closed_within(s, Duration::from_secs(3)).await;
    assert!(ok, "a stalled request head kept the connection open: {text}");
    assert!(!text.contains(" 200 "), "{text}");

    // Idle keep-alive: a connection that never sends a byte ...
    let s = TcpStream::connect(a).await.unwrap();
    let (ok, text) = closed_within(s, Duration::from_secs(3)).await;
    assert!(ok && text.is_empty(), "a silent connection stayed open: {text}");
    // ... and one that goes quiet after a complete exchange.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (ok, text) = closed_within(s, Duration::from_secs(3)).await;
    assert!(ok && text.starts_with("HTTP/1.1 200"), "{text}");
    // A connection that is never quiet that long stays open, however long
    // it lives (the fast path re-arms its idle timer lazily).
    let mut s = TcpStream::connect(a).await.unwrap();
    for seq in 0..8 {
        s.write_all(
            format!("GET / HTTP/1.1\r\nhost: x\r\nx-seq: {seq}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let marker = format!("x-seq: {seq}\n");
        let got = read_until(&mut s, marker.as_bytes(), Duration::from_secs(3)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains(&marker), "request {seq} of a busy connection: {text}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Request body: 3 of 10 bytes, then silence -> 408.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let (ok, text) = closed_within(s, Duration::from_secs(3)).await;
    assert!(ok && text.starts_with("HTTP/1.1 408"), "{text}");
    h.shutdown().await;

    // Response body: the upstream stalls mid-body; the client is cut off
    // instead of hanging.
    let (h, rec) = start(cfg_with(stall_up)).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (ok, text) = closed_within(s, Duration::from_secs(3)).await;
    assert!(ok, "a stalled upstream body hung the client: {text}");
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("0123456789"), "{text}");
    assert_eq!(rec.untouched_total(), 1);
    h.shutdown().await;

    // A slow but steady body is not a stalled one: it arrives whole.
    let (h, _) = start(cfg_with(trickle_up)).await;
    let text =
        raw(h.local_addr(), b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n0123456789"),
        "{text}"
    );
    h.shutdown().await;
}

/// Item 10: oversized heads are refused; `x_chaos_cohort` never passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_sections_get_431_and_the_underscore_cohort_header_is_stripped()
{
    let up = echo_upstream().await;
    let mut cfg = config(up, 0.0, 0.0);
    cfg.max_header_bytes = 16 * 1024;
    let (h, _) = start(cfg).await;
    let a = h.local_addr();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let text = raw(a, big.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{}", &text[..text.len().min(200)]);
    let fits = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let text = raw(a, fits.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);

    let text = raw(
        a,
        b"GET / HTTP/1.1\r\nhost: x\r\nx_chaos_cohort: experiment\r\n\
          x-chaos-cohort: experiment\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(!body.contains("chaos_cohort") && !body.contains("chaos-cohort"), "{body}");
    h.shutdown().await;
}

/// An answer that ends the connection (here a 431) reaches a client that
/// is still sending, and none of its writes fail: the proxy shuts its
/// write side and drains the rest (lingering close) instead of closing
/// with input unread, which the kernel answers with a reset. On both
/// entries to the general path: a plain connection, and one the fast path
/// hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_the_connection_survives_input_still_in_flight() {
    let up = echo_upstream().await;
    for fast_path in [false, true] {
        let mut cfg = config(up, 0.0, 0.0);
        cfg.max_header_bytes = 16 * 1024;
        cfg.fast_path = fast_path;
        let (h, _) = start(cfg).await;
        // A small send buffer, so the client is still sending when the
        // proxy answers (2 MiB would otherwise fit in the buffers).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(16 * 1024).unwrap();
        let s = socket.connect(h.local_addr()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let head = format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-big: {}\r\n\r\n",
            2 << 20,
            "a".repeat(20 * 1024)
        );
        let writer = tokio::spawn(async move {
            w.write_all(head.as_bytes()).await?;
            let body = vec![b'x'; 64 * 1024];
            for _ in 0..32 {
                w.write_all(&body).await?;
            }
            Ok::<_, std::io::Error>(w)
        });
        let mut got = Vec::new();
        let read = timeout(T, r.read_to_end(&mut got)).await.expect("in time");
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "fast path {fast_path}: {read:?} after {text:?}");
        assert!(text.starts_with("HTTP/1.1 431"), "fast path {fast_path}: {text:?}");
        let wrote = timeout(T, writer).await.expect("in time").unwrap();
        assert!(wrote.is_ok(), "fast path {fast_path}: a write failed: {wrote:?}");
        h.shutdown().await;
    }
}
