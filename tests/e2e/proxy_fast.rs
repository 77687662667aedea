//! End-to-end tests of the proxy's HTTP/1.1 fast path over real loopback
//! sockets: which requests it takes, the hand-over of a connection to the
//! general path (with the cohort drawn once), response framings from raw
//! upstreams (chunked with trailers, until-close, none, 1xx), and upstream
//! framing tricks that must never reach the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chaos::cohort::Cohort;
use chaos::metrics::Recorder;
use chaos::traffic::{CohortKey, HttpFault, Proxy, ProxyConfig, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(20);

fn config(up: SocketAddr, experiment: f64, control: f64, key: CohortKey) -> ProxyConfig {
    crate::support::proxy_config(&format!("http://{up}"), key, experiment, control)
}

async fn start(cfg: ProxyConfig) -> (ProxyHandle, Arc<Recorder>) {
    let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 10_000));
    let h = Proxy::start(cfg, rec.clone()).await.unwrap();
    (h, rec)
}

/// A raw upstream: reads one request head at a time and answers it with
/// `answer(path)` verbatim (so tests control every framing byte); an
/// answer ending in `<close>` closes the connection after it.
async fn raw_upstream(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let mut resp = answer(&path);
                        if path == "/echo" {
                            let body = head.to_ascii_lowercase();
                            resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .into_bytes();
                        }
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_millis(800)).await;
                        }
                        let close = resp.ends_with(b"<close>");
                        if close {
                            resp.truncate(resp.len() - 7);
                        }
                        if s.write_all(&resp).await.is_err() || close {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Reads one response (head plus `Content-Length` or chunked body) off a
/// keep-alive connection, as text.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    read_message(s, buf, false).await
}

/// Reads one response; `head_only`: a response to HEAD (no body whatever
/// its `Content-Length` says).
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> String {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let total = if head_only {
                Some(end + 4)
            } else if let Some(n) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
            {
                Some(end + 4 + n)
            } else if head.contains("transfer-encoding: chunked") {
                buf.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| p + 5).or_else(
                    || {
                        // Trailers: the body ends at the first empty line after
                        // the last chunk.
                        let last = buf.windows(5).position(|w| w == b"\r\n0\r\n")?;
                        buf[last + 5..]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|p| last + 5 + p + 4)
                    },
                )
            } else {
                Some(end + 4)
            };
            if let Some(total) = total.filter(|t| *t <= buf.len()) {
                let text = String::from_utf8_lossy(&buf[..total]).to_string();
                buf.drain(..total);
                return text;
            }
        }
        let n = tokio::time::timeout(T, s.read(&mut chunk)).await.unwrap().unwrap();
        if n == 0 {
            let text = String::from_utf8_lossy(buf).to_string();
            buf.clear();
            return text;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn exchange(s: &mut TcpStream, buf: &mut Vec<u8>, request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(s, buf).await
}

fn answers(path: &str) -> Vec<u8> {
    match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                       5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
            .to_vec(),
        "/until-close" => b"HTTP/1.1 200 OK\r\n\r\nstreamed until close<close>".to_vec(),
        "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        "/hints" => b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            .to_vec(),
        "/two-lengths" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 40\r\n\r\nok".to_vec()
        }
        "/gzip-te" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec()
        }
        "/smuggle" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\
                       content-length: 8\r\n\r\nsmuggled"
            .to_vec(),
        "/bad-chunk" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec()
        }
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_gets_take_the_fast_path_and_a_post_hands_the_connection_over() {
    let up = raw_upstream(answers).await;
    let (h, rec) =
        start(config(up, 0.0, 1.0, CohortKey::Header("x-user-id".into()))).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();

    let get = "GET /echo HTTP/1.1\r\nhost: svc\r\nx-user-id: u1\r\n\
               x-chaos-cohort: experiment\r\nx-forwarded-for: 6.6.6.6\r\n\r\n";
    let text = exchange(&mut s, &mut buf, get).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // What the upstream saw: our cohort, not the client's; our forwarding.
    assert!(text.contains("x-chaos-cohort: control\r\n"), "{text}");
    assert!(text.contains("baggage: chaos.cohort=control\r\n"), "{text}");
    assert!(text.contains("x-forwarded-for: 127.0.0.1\r\n"), "{text}");
    assert!(!text.contains("6.6.6.6") && !text.contains("experiment"), "{text}");
    s.write_all(b"HEAD / HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
    let text = read_message(&mut s, &mut buf, true).await;
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"), "{text}");
    assert_eq!(h.fast_path_requests(), 2);

    // A POST with a body: the connection moves to the general path, which
    // serves it and everything after it on this connection.
    let post = "POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\n\r\nbody";
    let text = exchange(&mut s, &mut buf, post).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("post /echo http/1.1"), "{text}");
    let text = exchange(&mut s, &mut buf, get).await;
    assert!(text.contains("x-chaos-cohort: control\r\n"), "{text}");
    assert_eq!(h.fast_path_requests(), 2, "the general path kept the connection");
    assert_eq!(rec.snapshot(Cohort::Control).total, 4);

    // Pipelined plain requests on a fresh connection: answered in order.
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /no-content HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let first = read_response(&mut s, &mut buf).await;
    let second = read_response(&mut s, &mut buf).await;
    assert!(first.starts_with("HTTP/1.1 200") && first.ends_with("ok"), "{first}");
    assert!(second.starts_with("HTTP/1.1 204"), "{second}");
    assert_eq!(h.fast_path_requests(), 4);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_reach_the_client_re_encoded() {
    let up = raw_upstream(answers).await;
    let (h, _) = start(config(up, 0.0, 0.0, CohortKey::Header("x-user-id".into()))).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();

    // Chunked with an extension and a trailer: re-encoded; the trailer is
    // dropped, as the general path does for a client without `TE: trailers`
    // (a request with `TE` goes to the general path).
    let text =
        exchange(&mut s, &mut buf, "GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.contains("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{text:?}");
    assert!(!text.contains("ext=1"), "{text:?}");
    // 1xx ahead of the final response; 204 without a body.
    let text = exchange(&mut s, &mut buf, "GET /hints HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 103"), "{text}");
    let text = read_response(&mut s, &mut buf).await;
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
    let text =
        exchange(&mut s, &mut buf, "GET /no-content HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
    assert_eq!(h.fast_path_requests(), 3);
    // Until close: the body arrives, then the client connection closes.
    let text =
        exchange(&mut s, &mut buf, "GET /until-close HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(text.to_ascii_lowercase().contains("connection: close\r\n"), "{text}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await.unwrap();
    let all = format!(
        "{text}{}{}",
        String::from_utf8_lossy(&buf),
        String::from_utf8_lossy(&rest)
    );
    assert!(all.ends_with("\r\n\r\nstreamed until close"), "{all:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framing_tricks_never_reach_the_client() {
    let up = raw_upstream(answers).await;
    let (h, rec) =
        start(config(up, 0.0, 1.0, CohortKey::Header("x-user-id".into()))).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/two-lengths", "/gzip-te"] {
        let text = exchange(
            &mut s,
            &mut buf,
            &format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n"),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 502"), "{path}: {text}");
    }
    // Bytes after a Content-Length body are dropped with the upstream
    // connection: the next answer on this client connection is the real one.
    let text =
        exchange(&mut s, &mut buf, "GET /smuggle HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    let text = exchange(&mut s, &mut buf, "GET /echo HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(!text.contains("smuggled") && text.contains("get /echo"), "{text}");
    // A bare LF in a chunk size line: the client connection is cut after
    // the head; nothing of the body is forwarded.
    s.write_all(b"GET /bad-chunk HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await.unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("hello"), "{text:?}");
    let snap = rec.snapshot(Cohort::Control);
    assert_eq!(snap.status_counts.get(&502), Some(&2), "{:?}", snap.status_counts);
    assert_eq!(h.fast_path_requests(), 5);
    h.shutdown().await;
}

/// With a fault only the general path applies (malformed) enabled,
/// experiment requests leave the fast path for the fault layer; the cohort
/// drawn on the fast path goes along, so keyless requests are not drawn
/// twice (which would make a quarter of them experiment requests with a
/// 50/50 split, not half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulted_experiment_requests_take_the_general_path_with_their_draw() {
    let up = raw_upstream(answers).await;
    let (h, rec) =
        start(config(up, 0.5, 0.5, CohortKey::Header("x-user-id".into()))).await;
    h.set_faults(vec![HttpFault::parse_spec("kind=malformed,mode=truncate").unwrap()]);
    let n = 400;
    let mut faulted = 0;
    for _ in 0..n {
        // One keyless request per connection: each is drawn at random.
        let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
        let mut buf = Vec::new();
        let text = exchange(&mut s, &mut buf, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        if text.contains("x-chaos-cohort: experiment") {
            assert!(text.contains("x-chaos-fault: malformed-truncate"), "{text}");
            faulted += 1;
        } else {
            assert!(text.contains("x-chaos-cohort: control"), "{text}");
            assert!(text.ends_with("\r\n\r\nok"), "{text}");
        }
    }
    let exp = rec.snapshot(Cohort::Experiment).total;
    let ctl = rec.snapshot(Cohort::Control).total;
    assert_eq!((exp + ctl) as usize, n);
    assert_eq!(exp as usize, faulted);
    // Binomial(400, 0.5): 200 ± 10 (sd); drawn twice it would be ~100.
    assert!((150..=250).contains(&faulted), "{faulted} of {n} faulted");
    assert_eq!(h.fast_path_requests() as usize, n - faulted);
    h.shutdown().await;
}

/// Latency, error, abort and reset faults are applied on the fast path
/// itself, with the general path's labels, counts and recording: the
/// experiment cohort's connections stay on it during a fault window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_error_faults_apply_on_the_fast_path() {
    use chaos::metrics::labels::FaultKindLabel;
    let up = raw_upstream(answers).await;
    let (h, rec) = start(config(up, 1.0, 0.0, CohortKey::ClientIp)).await;
    h.set_faults(vec![
        HttpFault::parse_spec("kind=latency,delay=40ms").unwrap(),
        HttpFault::parse_spec("kind=error,status=502,probability=50%").unwrap(),
    ]);
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    let (mut errors, n) = (0, 40);
    for _ in 0..n {
        let t0 = std::time::Instant::now();
        let text = exchange(&mut s, &mut buf, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(t0.elapsed() >= Duration::from_millis(40), "{:?}", t0.elapsed());
        assert!(text.contains("x-chaos-cohort: experiment"), "{text}");
        if text.starts_with("HTTP/1.1 502") {
            assert!(text.contains("x-chaos-fault: latency,error\r\n"), "{text}");
            errors += 1;
        } else {
            assert!(
                text.contains("x-chaos-fault: latency\r\n") && text.ends_with("ok"),
                "{text}"
            );
        }
    }
    assert!((5..=35).contains(&errors), "{errors} of {n}");
    assert_eq!(
        h.fast_path_requests(),
        n as u64,
        "the connection stayed on the fast path"
    );
    assert_eq!(rec.faults_injected(FaultKindLabel::Latency), n as u64);
    assert_eq!(rec.faults_injected(FaultKindLabel::Error), errors as u64);
    let snap = rec.snapshot(Cohort::Experiment);
    assert_eq!(snap.status_counts.get(&502), Some(&(errors as u64)));
    assert!(snap.samples.iter().all(|x| x.latency_ms >= 40.0));

    // Abort: FIN without a response; reset: RST. Both recorded unanswered.
    for (spec, reset) in [("kind=abort", false), ("kind=reset", true)] {
        h.set_faults(vec![HttpFault::parse_spec(spec).unwrap()]);
        let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(T, s.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty(), "{spec}: {rest:?}");
        match r {
            Err(e) => {
                assert!(reset && e.kind() == std::io::ErrorKind::ConnectionReset, "{e}")
            }
            Ok(_) => assert!(!reset, "{spec}: closed without RST"),
        }
    }
    assert_eq!(rec.snapshot(Cohort::Experiment).status_counts.get(&0), Some(&2));
    assert_eq!(rec.faults_injected(FaultKindLabel::Abort), 1);
    assert_eq!(rec.faults_injected(FaultKindLabel::Reset), 1);
    h.shutdown().await;
}

/// A client that leaves before the response head is recorded as a request
/// without a response, as on the general path, and is not charged the
/// upstream's later status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_response_is_recorded_without_a_status() {
    let up = raw_upstream(answers).await;
    let (h, rec) = start(config(up, 0.0, 1.0, CohortKey::ClientIp)).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = rec.snapshot(Cohort::Control);
    assert_eq!(snap.total, 1);
    assert_eq!(snap.status_counts.get(&0), Some(&1), "{:?}", snap.status_counts);
    assert_eq!(snap.errors, 1);
    assert_eq!(h.fast_path_requests(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fast_path_serves_everything_on_the_general_path() {
    let up = raw_upstream(answers).await;
    let mut cfg = config(up, 0.0, 0.0, CohortKey::ClientIp);
    cfg.fast_path = false;
    let (h, _) = start(cfg).await;
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    let text =
        exchange(&mut s, &mut buf, "GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(text.contains("hello") && text.contains(" world"), "{text}");
    assert_eq!(h.fast_path_requests(), 0);
    h.shutdown().await;
}

/// A response as comparable parts: the status line, the header lines
/// (lower-cased, sorted, `date` left out: hyper adds it) and, for echo
/// answers, the upstream-seen head as sorted lines.
fn comparable(text: &str) -> (String, Vec<String>, Vec<String>) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<String> =
        lines.map(str::to_ascii_lowercase).filter(|l| !l.starts_with("date:")).collect();
    headers.sort();
    let mut seen: Vec<String> = body.lines().map(str::to_string).collect();
    seen.sort();
    (status, headers, seen)
}

/// The fast path forwards what the general path forwards: the same request
/// head reaches the upstream and the same response head reaches the client,
/// for a set of plain requests (cohort by cookie, so both draw alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_forwards_what_the_general_path_forwards() {
    let up = raw_upstream(answers).await;
    let key = || CohortKey::Cookie("sid".into());
    let (fast, _) = start(config(up, 0.4, 0.4, key())).await;
    let mut cfg = config(up, 0.4, 0.4, key());
    cfg.fast_path = false;
    let (general, _) = start(cfg).await;
    let cases: Vec<(&str, String)> = (0..6)
        .flat_map(|i| {
            let sid = format!("cookie: theme=dark; sid=user-{i}\r\n");
            [
                ("GET /echo?q=1", format!("{sid}accept: */*\r\n")),
                (
                    "GET /echo",
                    format!("{sid}accept: a\r\naccept: b\r\nconnection: keep-alive\r\n"),
                ),
                (
                    "GET /echo",
                    format!(
                        "{sid}x-chaos-cohort: experiment\r\nx-forwarded-for: 6.6.6.6\r\n\
                         forwarded: for=6.6.6.6\r\nx-forwarded-proto: https\r\n"
                    ),
                ),
                ("GET /chunked", sid.clone()),
                ("GET /no-content", sid.clone()),
                ("HEAD /echo", sid.clone()),
            ]
        })
        .collect();
    for (line, headers) in &cases {
        let request = format!("{line} HTTP/1.1\r\nhost: svc\r\n{headers}\r\n");
        let head_only = line.starts_with("HEAD");
        let mut answers = Vec::new();
        for proxy in [&fast, &general] {
            let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
            let mut buf = Vec::new();
            s.write_all(request.as_bytes()).await.unwrap();
            answers.push(comparable(&read_message(&mut s, &mut buf, head_only).await));
        }
        assert_eq!(answers[0], answers[1], "{request}");
    }
    assert_eq!(fast.fast_path_requests() as usize, cases.len());
    assert_eq!(general.fast_path_requests(), 0);
    fast.shutdown().await;
    general.shutdown().await;
}
