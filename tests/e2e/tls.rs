//! TLS end to end over real loopback sockets, with certificates made in
//! the test (rcgen): clients through TLS to the proxy (HTTP/1.1 and HTTP/2
//! chosen by ALPN), the proxy to an https upstream verified against a test
//! CA (SNI from the URL host; a wrong CA is a 502 that says why), the
//! `chaos proxy` flags through the binary, `[traffic]` TLS keys in
//! `chaos validate`, and `chaos promql` against a real Prometheus serving
//! HTTPS (`--web.config.file` with `tls_server_config`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chaos::cohort::{Cohort, COHORT_HEADER};
use chaos::metrics::Recorder;
use chaos::tls::ServerTlsFiles;
use chaos::traffic::{CohortKey, Proxy, ProxyConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::prometheus::{start_prometheus_with, PromTls};
use crate::support;

const T: Duration = Duration::from_secs(30);

/// A test CA, a server certificate it signed (for `localhost` and
/// 127.0.0.1) with its key, and an unrelated CA, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let ca_ok = ca("chaos test CA");
        let ca_other = ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf = params.signed_by(&key, &ca_ok).unwrap();
        let w = dir.path();
        std::fs::write(w.join("ca.pem"), ca_ok.pem()).unwrap();
        std::fs::write(w.join("other-ca.pem"), ca_other.pem()).unwrap();
        std::fs::write(w.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(w.join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn server_files(&self) -> ServerTlsFiles {
        ServerTlsFiles { cert: self.path("cert.pem"), key: self.path("key.pem") }
    }
}

type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// An HTTPS upstream with the test certificate: answers `secure` with the
/// HTTP version it was asked in (`x-seen-version`) and records the SNI name
/// of every TLS connection it accepts. `h2`: it offers `h2` by ALPN (and
/// then speaks it), else only `http/1.1`.
async fn https_upstream(pki: &Pki, h2: bool) -> (SocketAddr, Seen) {
    let mut cfg = (*chaos::tls::server_config(&pki.server_files()).unwrap()).clone();
    if !h2 {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                seen.lock().unwrap().push(sni);
                let svc = hyper::service::service_fn(
                    |req: http::Request<Incoming>| async move {
                        let mut resp =
                            http::Response::new(Full::new(Bytes::from_static(b"secure")));
                        let v = format!("{:?}", req.version());
                        resp.headers_mut().insert("x-seen-version", v.parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
            });
        }
    });
    (addr, seen)
}

/// A plain HTTP/1.1 upstream answering `plain`.
async fn plain_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"plain"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn proxy_config(upstream: &str) -> ProxyConfig {
    let key = CohortKey::Header("x-user-id".into());
    let mut cfg = crate::support::proxy_config(upstream, key, 0.5, 0.5);
    cfg.seed = 7;
    cfg
}

/// A TLS client connection to `addr` trusting `ca`, offering `alpn`;
/// returns the stream and the protocol the server chose.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let cfg = chaos::tls::client_config(Some(ca), alpn).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let proto = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, proto)
}

fn get(user: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get("/hello")
        .header("host", "localhost")
        .header("x-user-id", user)
        .body(Empty::new())
        .unwrap()
}

async fn body_text(resp: http::Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_proxy_over_tls_with_h2_or_http1_chosen_by_alpn() {
    tokio::time::timeout(T, async {
        let pki = Pki::new();
        let up = plain_upstream().await;
        let mut cfg = proxy_config(&format!("http://{up}"));
        cfg.tls = Some(pki.server_files());
        let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), 1000));
        let proxy = Proxy::start(cfg, recorder.clone()).await.unwrap();
        let addr = proxy.local_addr();

        // HTTP/2 via ALPN (no prior knowledge), two concurrent streams.
        let (tls, proto) =
            tls_connect(addr, &pki.path("ca.pem"), &[b"h2", b"http/1.1"]).await;
        assert_eq!(proto.as_deref(), Some(&b"h2"[..]), "the proxy must pick h2");
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let (a, b) = tokio::join!(h2.send_request(get("u1")), h2.send_request(get("u2")));
        for resp in [a.unwrap(), b.unwrap()] {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert!(resp.headers().contains_key(COHORT_HEADER), "cohort tagged");
            assert_eq!(body_text(resp).await, "plain");
        }

        // HTTP/1.1 via ALPN, keep-alive: three requests on one connection.
        let (tls, proto) = tls_connect(addr, &pki.path("ca.pem"), &[b"http/1.1"]).await;
        assert_eq!(proto.as_deref(), Some(&b"http/1.1"[..]));
        let (mut h1, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        for user in ["u3", "u4", "u5"] {
            h1.ready().await.unwrap();
            let resp = h1.send_request(get(user)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_11);
            assert_eq!(body_text(resp).await, "plain");
        }

        // Plain HTTP to the TLS port gets no HTTP answer.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
        assert!(!buf.starts_with(b"HTTP/1.1 200"), "plaintext must not be served");

        // Every TLS request was recorded in its cohort (50/50 split).
        let total = recorder.snapshot(Cohort::Control).total
            + recorder.snapshot(Cohort::Experiment).total;
        assert_eq!(total, 5);
        proxy.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// Over TLS too, an answer that ends the connection (a 431) reaches a
/// client that is still sending, and none of its writes fail: the proxy
/// drains the rest (lingering close) instead of closing with input
/// unread, which the kernel answers with a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_answer_that_ends_the_connection_survives_input_still_in_flight() {
    tokio::time::timeout(T, async {
        let pki = Pki::new();
        let up = plain_upstream().await;
        let mut cfg = proxy_config(&format!("http://{up}"));
        cfg.tls = Some(pki.server_files());
        cfg.max_header_bytes = 16 * 1024;
        let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), 1000));
        let proxy = Proxy::start(cfg, recorder).await.unwrap();

        // A small send buffer, so the client is still sending when the
        // proxy answers (512 KiB would otherwise fit in the buffers). Not
        // more: encrypting it in a debug build on a busy machine must stay
        // well inside the proxy's 500 ms of lingering.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(16 * 1024).unwrap();
        let tcp = socket.connect(proxy.local_addr()).await.unwrap();
        let tls_cfg =
            chaos::tls::client_config(Some(&pki.path("ca.pem")), &[b"http/1.1"]).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls =
            tokio_rustls::TlsConnector::from(tls_cfg).connect(name, tcp).await.unwrap();
        let (mut r, mut w) = tokio::io::split(tls);
        let head = format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-big: {}\r\n\r\n",
            512 << 10,
            "a".repeat(20 * 1024)
        );
        let writer = tokio::spawn(async move {
            let started = std::time::Instant::now();
            w.write_all(head.as_bytes()).await?;
            let body = vec![b'x'; 64 * 1024];
            for _ in 0..8 {
                w.write_all(&body).await?;
            }
            w.flush().await?;
            eprintln!("the client wrote its request in {:?}", started.elapsed());
            Ok::<_, std::io::Error>(w)
        });
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431"), "{read:?} after {text:?}");
        // The proxy ends with close_notify, or at least with end of stream:
        // never with a reset.
        if let Err(e) = &read {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e} after {text:?}");
        }
        let wrote = writer.await.unwrap();
        assert!(wrote.is_ok(), "a write failed: {:?}", wrote.err());
        proxy.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_verifies_https_upstreams_against_the_ca_and_sends_sni() {
    tokio::time::timeout(T, async {
        let pki = Pki::new();
        // The upstream offers h2 by ALPN: the proxy speaks HTTP/2 to it.
        let (up, seen) = https_upstream(&pki, true).await;
        let url = format!("https://localhost:{}", up.port());
        let client = reqwest::Client::new();

        // Trusted through --upstream-ca: forwarded, SNI is the URL host.
        let mut cfg = proxy_config(&url);
        cfg.upstream_ca = Some(pki.path("ca.pem"));
        let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), 1000));
        let proxy = Proxy::start(cfg, recorder).await.unwrap();
        for i in 0..3 {
            let r = client
                .get(format!("http://{}/x", proxy.local_addr()))
                .header("x-user-id", format!("k{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-seen-version"], "HTTP/2.0");
            assert_eq!(r.text().await.unwrap(), "secure");
        }
        let names = seen.lock().unwrap().clone();
        assert!(!names.is_empty());
        assert!(names.iter().all(|n| n.as_deref() == Some("localhost")), "{names:?}");
        proxy.shutdown().await;

        // A CA that did not sign the upstream's certificate, and the system
        // roots (which do not know the test CA): 502 saying why.
        for ca in [Some(pki.path("other-ca.pem")), None] {
            let mut cfg = proxy_config(&url);
            cfg.upstream_ca = ca.clone();
            let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), 1000));
            let proxy = Proxy::start(cfg, recorder).await.unwrap();
            let r = client
                .get(format!("http://{}/x", proxy.local_addr()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 502, "ca {ca:?}");
            let body = r.text().await.unwrap();
            assert!(
                body.contains("TLS handshake with localhost:")
                    && body.contains("server name localhost")
                    && body.contains("invalid peer certificate: UnknownIssuer"),
                "ca {ca:?}: {body}"
            );
            proxy.shutdown().await;
        }
    })
    .await
    .expect("test timed out");
}

/// Kills the child on drop, so a failing assertion leaves nothing behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_proxy_flags_terminate_and_originate_tls() {
    tokio::time::timeout(T, async {
        let pki = Pki::new();
        // An upstream offering only http/1.1 gets HTTP/1.1.
        let (up, seen) = https_upstream(&pki, false).await;
        let p = |n: &str| pki.path(n).display().to_string();
        let mut child = Child(
            Command::new(support::chaos_bin())
                .args(["proxy", "--listen", "127.0.0.1:0", "--workers", "1"])
                .args(["--upstream", &format!("https://localhost:{}", up.port())])
                .args(["--upstream-ca", &p("ca.pem")])
                .args(["--tls-cert", &p("cert.pem"), "--tls-key", &p("key.pem")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // "chaos proxy listening on 127.0.0.1:PORT" on stderr.
        let stderr =
            tokio::process::ChildStderr::from_std(child.0.stderr.take().unwrap())
                .unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let addr: SocketAddr = loop {
            let line = lines.next_line().await.unwrap().expect("proxy exited early");
            if let Some(a) = line.strip_prefix("chaos proxy listening on ") {
                break a.trim().parse().unwrap();
            }
        };
        let (tls, proto) =
            tls_connect(addr, &pki.path("ca.pem"), &[b"h2", b"http/1.1"]).await;
        assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let resp = h2.send_request(get("u1")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
        assert_eq!(body_text(resp).await, "secure");
        assert_eq!(
            seen.lock().unwrap().first().cloned().flatten().as_deref(),
            Some("localhost")
        );

        // Bad TLS files are invalid input (exit 2), named in the message.
        let out = support::chaos(&[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--tls-cert",
            &p("ca.pem"),
            "--tls-key",
            &p("missing-key.pem"),
        ]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing-key.pem") && err.contains("cannot open"), "{err}");
        let out = support::chaos(&[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--tls-cert",
            &p("other-ca.pem"),
            "--tls-key",
            &p("key.pem"),
        ]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("do not form a usable pair"), "{err}");
    })
    .await
    .expect("test timed out");
}

#[test]
fn validate_checks_the_tls_keys_of_traffic_and_prometheus_at_their_lines() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, traffic_tls: &str, prom_ca: &str| {
        let f = dir.path().join(name);
        std::fs::write(
            &f,
            format!(
                r#"[experiment]
name = "tls"
duration = "30s"

[traffic]
listen = "127.0.0.1:8443"
upstream = "https://api.internal"
{traffic_tls}

[prometheus]
url = "https://prom.internal:9090"
{prom_ca}

[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"
"#
            ),
        )
        .unwrap();
        f
    };
    let p = |n: &str| pki.path(n).display().to_string();
    let good = write(
        "good.toml",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nupstream_ca = \"{}\"",
            p("cert.pem"),
            p("key.pem"),
            p("ca.pem")
        ),
        &format!("ca_file = \"{}\"", p("ca.pem")),
    );
    let out = support::chaos(&["validate", good.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write(
        "bad.toml",
        &format!(
            "tls_cert = \"{}\"\nupstream_ca = \"/nonexistent/ca.pem\"",
            p("cert.pem")
        ),
        &format!("ca_file = \"{}\"", p("key.pem")),
    );
    let out = support::chaos(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "bad.toml:8:12: error: TLS needs both `tls_cert` and `tls_key`; `tls_key` is missing",
        "bad.toml:9:15: error: `upstream_ca`: /nonexistent/ca.pem: cannot open",
        "bad.toml:13:11: error: `ca_file`:",
        "no certificate in the file",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

fn chaos_promql(args: Vec<String>) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::chaos(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_promql_queries_a_prometheus_serving_https() {
    if !crate::prometheus::support_prometheus() {
        return;
    }
    let pki = Pki::new();
    // Nothing to scrape is needed: the queries below are constant vectors.
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let tls = PromTls {
        cert: &pki.path("cert.pem"),
        key: &pki.path("key.pem"),
        ca: &pki.path("ca.pem"),
    };
    let prom = tokio::time::timeout(
        Duration::from_secs(60),
        start_prometheus_with(target, Some(tls)),
    )
    .await
    .expect("prometheus start");
    assert!(prom.url.starts_with("https://"));
    let ca = pki.path("ca.pem").display().to_string();
    let url = prom.url.clone();

    // An instant query and a per-cohort (hypothesis-style) range query,
    // verified against the test CA.
    let (u, c) = (url.clone(), ca.clone());
    let out = tokio::task::spawn_blocking(move || {
        chaos_promql(vec![
            "promql".into(),
            "--url".into(),
            u,
            "--ca-file".into(),
            c,
            "vector(42)".into(),
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("42"), "{stdout}");

    let (u, c) = (url.clone(), ca.clone());
    let out = tokio::task::spawn_blocking(move || {
        chaos_promql(vec![
            "promql".into(),
            "--url".into(),
            u,
            "--ca-file".into(),
            c,
            "--last".into(),
            "20s".into(),
            "--step".into(),
            "2s".into(),
            "label_replace(vector(1), \"cohort\", \"$cohort\", \"\", \"\")".into(),
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("control") && stdout.contains("experiment"), "{stdout}");

    // The wrong CA: unreachable (exit 5) with the TLS reason.
    let (u, c) = (url.clone(), pki.path("other-ca.pem").display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        chaos_promql(vec![
            "promql".into(),
            "--url".into(),
            u,
            "--ca-file".into(),
            c,
            "vector(1)".into(),
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    drop(prom);
}
