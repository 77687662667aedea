//! End-to-end tests of the HTTP/2 relay (`src/traffic/h2relay.rs`): an
//! HTTP/2 client in front of an `h2c://` upstream, over real loopback
//! sockets. Parity with the general (hyper) path on what the upstream and
//! the client see, the hand-over to the general path when a fault is
//! enabled, raw-frame conformance cases (RFC 9113) and the timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chaos::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};
use chaos::metrics::Recorder;
use chaos::traffic::{
    assign_position, CohortKey, HttpFault, Proxy, ProxyConfig, ProxyHandle,
};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

pub(crate) const T: Duration = Duration::from_secs(20);

pub(crate) fn config(up: SocketAddr, fast_path: bool) -> ProxyConfig {
    let key = CohortKey::Header("x-user-id".into());
    let mut cfg = crate::support::proxy_config(&format!("h2c://{up}"), key, 0.5, 0.5);
    cfg.fast_path = fast_path;
    cfg
}

pub(crate) async fn start(cfg: ProxyConfig) -> (ProxyHandle, Arc<Recorder>) {
    let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 10_000));
    let h = Proxy::start(cfg, rec.clone()).await.expect("proxy starts");
    (h, rec)
}

/// A `x-user-id` value that lands in `cohort` with a 50/50 split, seed 0.
pub(crate) fn key_for(cohort: Cohort) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| {
            (assign_position(k.as_bytes(), 0) < 0.5) == (cohort == Cohort::Experiment)
        })
        .unwrap_or_default()
}

/// A hyper h2c upstream. Answers with the request head it saw (`:authority`
/// and every header, sorted, one `name: value` line each), then the request
/// body's length and trailers, and sends trailers of its own (HEAD gets
/// the head alone).
/// `/big` sends 64 MiB. `/slow`
/// answers after 3 s; `/stall` sends its head and part of a body, then
/// stops.
pub(crate) async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    crate::support::accept_loop(l, |s| async move {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            // Given a body (or trailers) for HEAD, hyper's server
            // sends it and the general path's HTTP/2 server then
            // resets the stream; real servers send neither.
            let head = req.method() == http::Method::HEAD;
            if path == "/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut lines = vec![format!(
                ":authority: {}",
                req.uri().authority().map(|a| a.as_str()).unwrap_or("-")
            )];
            for (n, v) in req.headers() {
                lines.push(format!("{n}: {}", v.to_str().unwrap_or("?")));
            }
            lines.sort();
            let body = req.into_body().collect().await.ok();
            let trailers = body.as_ref().and_then(|b| b.trailers().cloned());
            let len = body.map(|b| b.to_bytes().len()).unwrap_or(0);
            lines.push(format!("body: {len}"));
            for (n, v) in trailers.iter().flatten() {
                lines.push(format!("trailer {n}: {}", v.to_str().unwrap_or("?")));
            }
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(Bytes::from(lines.join("\n"))))];
            if path == "/big" {
                // 64 MiB, far more than the socket buffers on the way hold.
                let chunk = Bytes::from(vec![b'b'; 16 * 1024]);
                let big = futures_util::stream::iter(
                    (0..4096)
                        .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
                );
                let resp = http::Response::new(StreamBody::new(Box::pin(big)
                    as std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>));
                return Ok::<_, Infallible>(resp);
            }
            if path == "/stall" {
                let stalled = futures_util::stream::iter(frames)
                    .chain(futures_util::stream::pending());
                let resp = http::Response::new(StreamBody::new(Box::pin(stalled)
                    as std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>));
                return Ok::<_, Infallible>(resp);
            }
            let mut t = http::HeaderMap::new();
            t.insert("x-up-trailer", "kept".parse().expect("value"));
            if !head {
                frames.push(Ok(Frame::trailers(t)));
            }
            let resp = http::Response::builder()
                .header("x-up", "1")
                .body(StreamBody::new(Box::pin(futures_util::stream::iter(frames))
                    as std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>))
                .expect("response");
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    addr
}

use futures_util::StreamExt;

pub(crate) type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

pub(crate) async fn h2_client(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// What one exchange looked like from both ends.
#[derive(Debug, PartialEq)]
pub(crate) struct Seen {
    pub(crate) status: u16,
    /// Response headers without `date`.
    pub(crate) headers: Vec<String>,
    pub(crate) body: String,
    pub(crate) trailers: Vec<String>,
}

pub(crate) async fn exchange(
    sender: &mut Sender,
    req: http::Request<Full<Bytes>>,
) -> Seen {
    sender.ready().await.expect("ready");
    let resp =
        timeout(T, sender.send_request(req)).await.expect("in time").expect("response");
    let status = resp.status().as_u16();
    let mut headers: Vec<String> = resp
        .headers()
        .iter()
        .filter(|(n, _)| *n != "date")
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
        .collect();
    headers.sort();
    let body = resp.into_body().collect().await.expect("body");
    let trailers = body
        .trailers()
        .map(|t| {
            t.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?"))).collect()
        })
        .unwrap_or_default();
    Seen {
        status,
        headers,
        body: String::from_utf8_lossy(&body.to_bytes()).into(),
        trailers,
    }
}

/// The requests of the parity test: cohort keys, spoofed cohort and
/// forwarding headers, baggage, split cookies, a body.
fn requests(addr: SocketAddr) -> Vec<http::Request<Full<Bytes>>> {
    let mut out = Vec::new();
    for (i, key) in [key_for(Cohort::Control), key_for(Cohort::Experiment), "x".repeat(3)]
        .into_iter()
        .enumerate()
    {
        out.push(
            http::Request::get(format!("http://{addr}/a?i={i}"))
                .header("x-user-id", key.clone())
                .header(COHORT_HEADER, "experiment")
                .header("x_chaos_cohort", "control")
                .header("x-forwarded-for", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6")
                .header("baggage", "tenant=blue,chaos.cohort=experiment")
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("te", "trailers")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        );
        out.push(
            http::Request::post(format!("http://{addr}/upload"))
                .header("x-user-id", key.clone())
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'z'; 70_000])))
                .expect("request"),
        );
    }
    out
}

/// The relay and the general path, side by side on the same upstream:
/// the upstream sees the same request heads (cohort header and baggage
/// ours, spoofed ones gone, forwarding headers replaced, `:authority`
/// kept), the client the same responses and trailers, the recorder the
/// same cohorts; only the relay counts its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_shapes_requests_and_responses_like_the_general_path() {
    let up = echo_upstream().await;
    let (relay, relay_rec) = start(config(up, true)).await;
    let (general, general_rec) = start(config(up, false)).await;
    let mut via_relay = Vec::new();
    let mut via_general = Vec::new();
    let mut a = h2_client(relay.local_addr()).await;
    let mut b = h2_client(general.local_addr()).await;
    for (r, g) in
        requests(relay.local_addr()).into_iter().zip(requests(relay.local_addr()))
    {
        via_relay.push(exchange(&mut a, r).await);
        via_general.push(exchange(&mut b, g).await);
    }
    assert_eq!(via_relay, via_general);
    let first = &via_relay[0];
    assert_eq!(first.status, 200);
    assert!(first.headers.contains(&format!("{COHORT_HEADER}: control")), "{first:?}");
    assert!(first.body.contains(&format!("{COHORT_HEADER}: control")), "{}", first.body);
    assert!(!first.body.contains("x_chaos_cohort"), "{}", first.body);
    assert!(first.body.contains("x-forwarded-for: 127.0.0.1"), "{}", first.body);
    assert!(!first.body.contains("6.6.6.6"), "{}", first.body);
    assert!(
        first.body.contains("baggage: tenant=blue,chaos.cohort=control"),
        "{}",
        first.body
    );
    assert!(
        first.body.contains(&format!(":authority: {}", relay.local_addr())),
        "{}",
        first.body
    );
    assert!(first.body.contains("cookie: a=1"), "{}", first.body);
    assert_eq!(first.trailers, vec!["x-up-trailer: kept".to_string()]);
    assert!(via_relay[1].body.contains("body: 70000"), "{}", via_relay[1].body);
    assert!(via_relay[2].body.contains(&format!("{COHORT_HEADER}: experiment")));
    // A 50/50 split: every key is in a cohort ("xxx" in control).
    assert!(via_relay[4].body.contains(&format!("{COHORT_HEADER}: control")));
    // HEAD: the response ends with its head. (The general path resets
    // HEAD streams against this hyper upstream; see the upstream's note.)
    let head = http::Request::head(format!("http://{}/h", relay.local_addr()))
        .header("x-user-id", key_for(Cohort::Control))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let seen = exchange(&mut a, head).await;
    assert_eq!((seen.status, seen.body.as_str()), (200, ""));
    assert_eq!(relay.fast_path_requests(), 7);
    assert_eq!(general.fast_path_requests(), 0);
    assert_eq!(general_rec.snapshot(Cohort::Control).total, 4);
    assert_eq!(general_rec.snapshot(Cohort::Experiment).total, 2);
    assert_eq!(relay_rec.snapshot(Cohort::Control).total, 4 + 1);
    assert_eq!(relay_rec.snapshot(Cohort::Experiment).total, 2);
    relay.shutdown().await;
    general.shutdown().await;
}

/// While a fault is enabled the relay takes no new stream: the client's
/// next stream is refused (nothing processed, safe to retry) and its next
/// connection is served by the general path, where the fault applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_sends_new_streams_to_the_general_path() {
    let up = echo_upstream().await;
    let (h, rec) = start(config(up, true)).await;
    let experiment = key_for(Cohort::Experiment);
    let get = |key: &str| {
        http::Request::get(format!("http://{}/x", h.local_addr()))
            .header("x-user-id", key)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let mut first = h2_client(h.local_addr()).await;
    assert_eq!(exchange(&mut first, get(&experiment)).await.status, 200);
    assert_eq!(h.fast_path_requests(), 1);
    h.set_faults(vec![HttpFault::parse_spec("kind=error,status=503").expect("spec")]);
    let refused = async {
        first.ready().await?;
        first.send_request(get(&experiment)).await
    };
    let err = timeout(T, refused).await.expect("in time").expect_err("refused");
    // hyper reports the GOAWAY or the REFUSED_STREAM that follows it:
    // either way, nothing was processed.
    let why = format!("{err:?}");
    assert!(
        why.contains("REFUSED_STREAM") || why.contains("GoAway(b\"\", NO_ERROR"),
        "{why}"
    );
    let mut second = h2_client(h.local_addr()).await;
    let seen = exchange(&mut second, get(&experiment)).await;
    assert_eq!(seen.status, 503);
    assert!(seen.headers.contains(&format!("{FAULT_HEADER}: error")), "{seen:?}");
    assert_eq!(h.fast_path_requests(), 1);
    assert_eq!(rec.snapshot(Cohort::Experiment).total, 2);
    h.shutdown().await;
}

// ---- raw frames ----

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len() as u32;
    let mut f = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub(crate) struct Raw {
    pub(crate) s: TcpStream,
    pub(crate) buf: Vec<u8>,
    pub(crate) enc: loona_hpack::Encoder<'static>,
    pub(crate) dec: loona_hpack::Decoder<'static>,
}

impl Raw {
    pub(crate) async fn open(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(PREFACE).await.expect("write");
        s.write_all(&frame(4, 0, 0, &[])).await.expect("write");
        Raw::on(s)
    }

    /// A raw client on a connection the test opened itself.
    pub(crate) fn on(s: TcpStream) -> Raw {
        Raw {
            s,
            buf: Vec::new(),
            enc: loona_hpack::Encoder::new(),
            dec: loona_hpack::Decoder::new(),
        }
    }

    pub(crate) fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next frame (kind, flags, stream, payload); `None` on EOF.
    pub(crate) async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream =
                        u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = timeout(T, self.s.read(&mut chunk)).await.expect("in time").ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until one of `kind` on `stream` (ACKing SETTINGS on the way).
    pub(crate) async fn until(&mut self, kind: u8, stream: u32) -> Option<(u8, Vec<u8>)> {
        while let Some((k, flags, s, payload)) = self.next().await {
            if k == 4 && flags & 1 == 0 {
                self.send(&frame(4, 1, 0, &[])).await;
            }
            if k == kind && s == stream {
                return Some((flags, payload));
            }
        }
        None
    }

    pub(crate) async fn status(&mut self, stream: u32) -> String {
        let (_, block) = self.until(1, stream).await.expect("a HEADERS frame");
        let fields = self.dec.decode(&block).expect("valid HPACK");
        String::from_utf8_lossy(&fields[0].1).into()
    }
}

pub(crate) fn get_fields(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":scheme", "http"), (":authority", "svc"), (":path", path)]
}

pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const WINDOW_UPDATE: u8 = 8;

pub(crate) fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]])
}

/// RFC 9113 cases on raw sockets: a malformed request is reset alone
/// (PROTOCOL_ERROR) and the connection goes on; DATA on a stream the relay
/// answered is credited back; an oversized header section gets 431; a
/// CONTINUATION flood ends the connection (ENHANCE_YOUR_CALM); a
/// connection that does not start with SETTINGS ends (PROTOCOL_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_follow_rfc_9113() {
    let up = echo_upstream().await;
    let mut cfg = config(up, true);
    cfg.max_header_bytes = 8192;
    let (h, _rec) = start(cfg).await;

    let mut c = Raw::open(h.local_addr()).await;
    let mut bad = get_fields("/");
    bad.push(("Upper-Case", "x"));
    let block = c.block(&bad);
    c.send(&frame(1, 0x5, 1, &block)).await;
    let (_, payload) = c.until(RST_STREAM, 1).await.expect("stream 1 reset");
    assert_eq!(code(&payload, 0), 1, "PROTOCOL_ERROR");
    let mut conn_header = get_fields("/");
    conn_header.push(("connection", "close"));
    let block = c.block(&conn_header);
    c.send(&frame(1, 0x5, 3, &block)).await;
    let (_, payload) = c.until(RST_STREAM, 3).await.expect("stream 3 reset");
    assert_eq!(code(&payload, 0), 1);
    // The connection still serves.
    let block = c.block(&get_fields("/ok"));
    c.send(&frame(1, 0x5, 5, &block)).await;
    assert_eq!(c.status(5).await, "200");

    // 431, then DATA on that answered stream comes back as window credit.
    let big = "v".repeat(9000);
    let mut fields = get_fields("/big");
    fields.push(("x-big", &big));
    let block = c.block(&fields);
    c.send(&frame(1, 0x4, 7, &block)).await;
    assert_eq!(c.status(7).await, "431");
    // The relay credits DATA to the connection as it arrives, in steps of
    // 4 MiB (a quarter of its 16 MiB window): 4 MiB and more on the
    // answered stream come back as credit.
    let chunk = [b'd'; 16_384];
    for _ in 0..256 {
        c.send(&frame(0, 0, 7, &chunk)).await;
    }
    c.send(&frame(0, 0x1, 7, &chunk)).await;
    // (Not the WINDOW_UPDATE that opened the relay's own window.)
    let credit = loop {
        let (_, payload) = c.until(WINDOW_UPDATE, 0).await.expect("connection credit");
        if code(&payload, 0) != 16 * 1024 * 1024 - 65_535 {
            break code(&payload, 0);
        }
    };
    assert!(credit >= 4 * 1024 * 1024, "{credit}");

    // CONTINUATION flood.
    let block = c.block(&get_fields("/flood"));
    c.send(&frame(1, 0x1, 9, &block)).await;
    let junk = vec![0x40u8; 16_000];
    for _ in 0..8 {
        c.send(&frame(9, 0, 9, &junk)).await;
    }
    let (_, payload) = c.until(GOAWAY, 0).await.expect("GOAWAY");
    assert_eq!(code(&payload, 4), 0xb, "ENHANCE_YOUR_CALM");
    assert!(c.next().await.is_none() || c.next().await.is_none(), "then it closes");

    // A connection that opens with PING instead of SETTINGS.
    let mut s = TcpStream::connect(h.local_addr()).await.expect("connect");
    s.write_all(PREFACE).await.expect("write");
    s.write_all(&frame(6, 0, 0, &[0; 8])).await.expect("write");
    let mut r = Raw::on(s);
    let (_, payload) = r.until(GOAWAY, 0).await.expect("GOAWAY");
    assert_eq!(code(&payload, 4), 1, "PROTOCOL_ERROR");
    h.shutdown().await;
}

/// Lingering close: a client whose bytes are still arriving when the relay
/// ends its connection (here 2 MiB of DATA behind a PING that came before
/// SETTINGS) still reads the GOAWAY and then end of stream, and every one
/// of its writes succeeds. Closing with those bytes unread would make the
/// kernel send a reset, which fails the writes and can destroy the GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_survives_input_still_in_flight() {
    let up = echo_upstream().await;
    let (h, _rec) = start(config(up, true)).await;
    let mut s = TcpStream::connect(h.local_addr()).await.expect("connect");
    let mut burst = PREFACE.to_vec();
    burst.extend_from_slice(&frame(6, 0, 0, &[0; 8]));
    let chunk = vec![b'x'; 16_384];
    for _ in 0..128 {
        burst.extend_from_slice(&frame(0, 0, 1, &chunk));
    }
    let writer = tokio::spawn(async move {
        let r = s.write_all(&burst).await;
        (s, r)
    });
    let (s, written) = writer.await.expect("writer");
    written.expect("every write succeeds: the relay reads what it will not use");
    let mut r = Raw::on(s);
    let (_, payload) = r.until(GOAWAY, 0).await.expect("the GOAWAY arrives");
    assert_eq!(code(&payload, 4), 1, "PROTOCOL_ERROR");
    assert!(r.next().await.is_none(), "then end of stream, not a reset");
    h.shutdown().await;
}

/// The general path's timeouts on the relay: no response head within
/// the upstream timeout is a recorded 504; a response body that stalls
/// past the response-body timeout is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_upstreams_hit_their_timeouts() {
    let up = echo_upstream().await;
    let mut cfg = config(up, true);
    cfg.upstream_timeout = Duration::from_millis(400);
    cfg.timeouts.response_body = Duration::from_millis(400);
    let (h, rec) = start(cfg).await;
    let mut c = Raw::open(h.local_addr()).await;
    let key = key_for(Cohort::Control);
    let mut fields = get_fields("/slow");
    fields.push(("x-user-id", &key));
    let block = c.block(&fields);
    let started = std::time::Instant::now();
    c.send(&frame(1, 0x5, 1, &block)).await;
    assert_eq!(c.status(1).await, "504");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let snap = rec.snapshot(Cohort::Control);
    assert_eq!(snap.total, 1);

    let mut fields = get_fields("/stall");
    fields.push(("x-user-id", &key));
    let block = c.block(&fields);
    c.send(&frame(1, 0x5, 3, &block)).await;
    assert_eq!(c.status(3).await, "200");
    let (_, payload) = c.until(RST_STREAM, 3).await.expect("the stalled stream is reset");
    assert_eq!(code(&payload, 0), 2, "INTERNAL_ERROR");
    h.shutdown().await;
}

/// A client that stops reading a response loses its connection after the
/// response-body timeout, instead of holding it and its upstream forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let up = echo_upstream().await;
    let mut cfg = config(up, true);
    cfg.timeouts.response_body = Duration::from_millis(300);
    let (h, _rec) = start(cfg).await;
    let mut c = Raw::open(h.local_addr()).await;
    // The largest windows: only the socket buffers hold the body back.
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    c.send(&frame(4, 0, 0, &settings)).await;
    c.send(&frame(WINDOW_UPDATE, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes())).await;
    let block = c.block(&get_fields("/big"));
    c.send(&frame(1, 0x5, 1, &block)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Now read: what the buffers held, then the end of the connection.
    let mut total = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let r = timeout(Duration::from_secs(5), c.s.read(&mut chunk)).await;
        let Ok(r) = r else { panic!("no end of the connection after {total} bytes") };
        match r {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 64 * 1024 * 1024, "the whole body arrived ({total} bytes)");
    h.shutdown().await;
}

/// A client that sends its preface, SETTINGS and first request in one
/// write (as gRPC clients often do) is answered without sending more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_the_same_write_as_the_preface_is_answered() {
    let up = echo_upstream().await;
    let (h, _rec) = start(config(up, true)).await;
    let mut s = TcpStream::connect(h.local_addr()).await.expect("connect");
    let mut enc = loona_hpack::Encoder::new();
    let block = enc
        .encode(get_fields("/first").iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut all = PREFACE.to_vec();
    all.extend_from_slice(&frame(4, 0, 0, &[]));
    all.extend_from_slice(&frame(1, 0x5, 1, &block));
    s.write_all(&all).await.expect("write");
    let mut c = Raw { s, buf: Vec::new(), enc, dec: loona_hpack::Decoder::new() };
    // Read without writing anything (not even a SETTINGS ACK), so only
    // those first bytes can have produced the response.
    let block = loop {
        match c.next().await {
            Some((1, _, 1, block)) => break block,
            Some(_) => {}
            None => panic!("closed without a response"),
        }
    };
    let fields = c.dec.decode(&block).expect("valid HPACK");
    assert_eq!(fields[0].1, b"200");
    assert_eq!(h.fast_path_requests(), 1);
    h.shutdown().await;
}

/// CPU time (user + system) of process `pid` so far.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
    Duration::from_millis(ticks * 1000 / hz)
}

/// `chaos proxy` relays HTTP/2 with its workers polling briefly before
/// they sleep (the default for an h2c upstream), and an idle proxy then
/// sleeps: after a burst of requests it spends almost no CPU.
#[test]
fn the_cli_relay_polls_while_busy_and_sleeps_when_idle() {
    use std::io::{BufRead, BufReader};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo_upstream());
    let mut child = std::process::Command::new(crate::support::chaos_bin())
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("h2c://{up}"))
        .args(["--experiment-percent", "50", "--control-percent", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = crate::proxy::KillOnDrop(child.id());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..4 {
            senders.push(h2_client(addr).await);
        }
        for round in 0..50 {
            for (i, s) in senders.iter_mut().enumerate() {
                let req = http::Request::get(format!("http://{addr}/r{round}-{i}"))
                    .header("x-user-id", format!("u{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(exchange(s, req).await.status, 200);
            }
        }
        // Open connections, no requests: the workers must sleep.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = process_cpu(child.id());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = process_cpu(child.id()) - before;
        // Polling without end would be about 2 s per worker.
        assert!(idle < Duration::from_millis(100), "{idle:?} of CPU in 2 s idle");
        drop(senders);
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
