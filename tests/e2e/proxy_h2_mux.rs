//! End-to-end tests of the HTTP/2 relay's shared upstream connections
//! (`src/traffic/h2relay/mux.rs`), over real loopback sockets: streams of
//! many client connections on one upstream connection with their own
//! stream ids, more connections when the upstream's MAX_CONCURRENT_STREAMS
//! is reached, per-hop flow control (a client that stops reading does not
//! stall the others; large bodies both ways), requests the upstream did
//! not process sent again, GOAWAY rotation, and a client's reset reaching
//! the upstream on the upstream's own stream id.
//!
//! Tests that count upstream connections run the proxy on a
//! current-thread runtime: the relay keeps one pool per thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chaos::cohort::Cohort;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

use crate::proxy_h2::{
    code, config, echo_upstream, exchange, frame, get_fields, h2_client, key_for, start,
    Raw, RST_STREAM, T,
};

/// A hyper h2c upstream that counts its connections. It answers with the
/// request's path, then `body: N` (the request body's length); `/slow`
/// waits 400 ms first. `max_streams` is its MAX_CONCURRENT_STREAMS;
/// `goaway_after` closes each connection gracefully (GOAWAY) after that
/// many requests.
async fn counting_upstream(
    max_streams: Option<u32>,
    goaway_after: Option<usize>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    crate::support::accept_loop(l, move |s| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let served = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(tokio::sync::Notify::new());
            let (served2, done2) = (served.clone(), done.clone());
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (served, done) = (served2.clone(), done2.clone());
                async move {
                    let path = req.uri().path().to_string();
                    if path == "/slow" {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    let len = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    if goaway_after
                        .is_some_and(|n| served.fetch_add(1, Ordering::SeqCst) + 1 == n)
                    {
                        done.notify_one();
                    }
                    let body = format!("{path}\nbody: {len}");
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                }
            });
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Some(m) = max_streams {
                b.max_concurrent_streams(m);
            }
            let conn = b.serve_connection(TokioIo::new(s), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = done.notified() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    });
    (addr, conns)
}

fn get(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .header("x-user-id", key_for(Cohort::Control))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Eight client connections with five concurrent streams each (all of
/// them stream ids 1 to 9) share one upstream connection, and every
/// response is its own request's.
#[tokio::test(flavor = "current_thread")]
async fn client_connections_share_one_upstream_connection() {
    let (up, conns) = counting_upstream(None, None).await;
    let (h, rec) = start(config(up, true)).await;
    let addr = h.local_addr();
    let mut clients = Vec::new();
    for c in 0..8 {
        let sender = h2_client(addr).await;
        clients.push(async move {
            let calls = (0..5).map(|i| {
                let mut s = sender.clone();
                async move {
                    let path = format!("/c{c}/r{i}");
                    let seen = exchange(&mut s, get(addr, &path)).await;
                    (path, seen)
                }
            });
            futures_util::future::join_all(calls).await
        });
    }
    let all: Vec<_> =
        futures_util::future::join_all(clients).await.into_iter().flatten().collect();
    assert_eq!(all.len(), 40);
    for (path, seen) in &all {
        assert_eq!(seen.status, 200, "{path}");
        assert_eq!(seen.body, format!("{path}\nbody: 0"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one upstream connection for 8 clients");
    assert_eq!(h.fast_path_requests(), 40);
    assert_eq!(rec.snapshot(Cohort::Control).total, 40);
    h.shutdown().await;
}

/// An upstream that allows two concurrent streams: six concurrent slow
/// requests take three upstream connections (its limit, learnt from the
/// first connection's SETTINGS, holds for the new ones too), and none is
/// refused or failed.
#[tokio::test(flavor = "current_thread")]
async fn streams_beyond_the_upstream_limit_open_more_connections() {
    let (up, conns) = counting_upstream(Some(2), None).await;
    let (h, _rec) = start(config(up, true)).await;
    let addr = h.local_addr();
    let mut first = h2_client(addr).await;
    assert_eq!(exchange(&mut first, get(addr, "/warm")).await.status, 200);
    let started = std::time::Instant::now();
    let calls = (0..6).map(|_| {
        let mut s = first.clone();
        async move { exchange(&mut s, get(addr, "/slow")).await.status }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, vec![200; 6]);
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    // Three at a time would take 1.2 s at least.
    assert!(started.elapsed() < Duration::from_millis(1150), "{:?}", started.elapsed());
    h.shutdown().await;
}

/// Per-hop flow control: a client that stops reading a 64 MiB response
/// holds only its own stream; another client's requests on the same
/// upstream connection go on.
#[tokio::test(flavor = "current_thread")]
async fn a_client_that_stops_reading_does_not_stall_the_others() {
    let up = echo_upstream().await;
    let (h, _rec) = start(config(up, true)).await;
    let addr = h.local_addr();
    let mut stalled = Raw::open(addr).await;
    // The largest windows: only the relay's own flow control holds back.
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    stalled.send(&frame(4, 0, 0, &settings)).await;
    stalled.send(&frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes())).await;
    let block = stalled.block(&get_fields("/big"));
    stalled.send(&frame(1, 0x5, 1, &block)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = h2_client(addr).await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        let seen = exchange(&mut other, get(addr, &format!("/n{i}"))).await;
        assert_eq!(seen.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    h.shutdown().await;
}

/// Bodies larger than every window on the way, both ways, arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_both_hops_whole() {
    let up = echo_upstream().await;
    let (h, _rec) = start(config(up, true)).await;
    let addr = h.local_addr();
    let mut c = h2_client(addr).await;
    let upload = http::Request::post(format!("http://{addr}/upload"))
        .body(Full::new(Bytes::from(vec![b'u'; 3 * 1024 * 1024 + 7])))
        .expect("request");
    let seen = exchange(&mut c, upload).await;
    assert!(
        seen.body.contains(&format!("body: {}", 3 * 1024 * 1024 + 7)),
        "{}",
        seen.body
    );
    c.ready().await.expect("ready");
    let resp = timeout(T, c.send_request(get(addr, "/big")))
        .await
        .expect("in time")
        .expect("response");
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(f) = timeout(T, body.frame()).await.expect("in time") {
        if let Ok(d) = f.expect("frame").into_data() {
            assert!(d.iter().all(|&b| b == b'b'));
            total += d.len();
        }
    }
    assert_eq!(total, 64 * 1024 * 1024);
    h.shutdown().await;
}

/// An upstream that closes every connection gracefully after three
/// requests: sixty requests over four client connections all succeed, on
/// ten or more upstream connections.
#[tokio::test(flavor = "current_thread")]
async fn upstream_goaway_rotates_connections_without_errors() {
    let (up, conns) = counting_upstream(None, Some(3)).await;
    let (h, rec) = start(config(up, true)).await;
    let addr = h.local_addr();
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut sender = h2_client(addr).await;
        clients.push(async move {
            let mut statuses = Vec::new();
            for i in 0..15 {
                statuses.push(
                    exchange(&mut sender, get(addr, &format!("/{c}/{i}"))).await.status,
                );
            }
            statuses
        });
    }
    let statuses: Vec<u16> =
        futures_util::future::join_all(clients).await.into_iter().flatten().collect();
    assert_eq!(statuses, vec![200; 60]);
    // Streams already in flight when a GOAWAY comes still finish on its
    // connection, so a connection may serve a few more than three.
    assert!(conns.load(Ordering::SeqCst) >= 10, "{}", conns.load(Ordering::SeqCst));
    assert_eq!(rec.snapshot(Cohort::Control).total, 60);
    h.shutdown().await;
}

// ---- a raw upstream ----

/// What the raw upstream does with a request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Action {
    /// 200 with body `ok`.
    Respond,
    /// GOAWAY with last stream id 0: the request was not processed.
    GoAway,
    /// RST_STREAM REFUSED_STREAM.
    Refuse,
    /// Nothing.
    Hold,
}

#[derive(Default, Debug)]
struct UpLog {
    connections: usize,
    /// (connection, stream id, :path) of every request.
    requests: Vec<(usize, u32, String)>,
    /// (connection, stream id, error code) of every RST_STREAM.
    resets: Vec<(usize, u32, u32)>,
}

/// An HTTP/2 upstream on raw frames; `script(connection, nth request on
/// it, path)` says what it does with each request.
async fn raw_upstream(
    script: fn(usize, usize, &str) -> Action,
) -> (SocketAddr, Arc<Mutex<UpLog>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(UpLog::default()));
    let logged = log.clone();
    crate::support::accept_loop(l, move |mut s| {
        let log = logged.clone();
        async move {
            let conn = {
                let mut l = log.lock().expect("log");
                l.connections += 1;
                l.connections - 1
            };
            let mut preface = [0u8; 24];
            if s.read_exact(&mut preface).await.is_err() {
                return;
            }
            let mut r = Raw {
                s,
                buf: Vec::new(),
                enc: loona_hpack::Encoder::new(),
                dec: loona_hpack::Decoder::new(),
            };
            r.send(&frame(4, 0, 0, &[])).await;
            let mut nth = 0;
            while let Some((kind, flags, stream, payload)) = r.next().await {
                match kind {
                    1 => {
                        let fields = r.dec.decode(&payload).expect("valid HPACK");
                        let path = fields
                            .iter()
                            .find(|(n, _)| n == b":path")
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        log.lock().expect("log").requests.push((
                            conn,
                            stream,
                            path.clone(),
                        ));
                        match script(conn, nth, &path) {
                            Action::Respond => {
                                let block = r.block(&[(":status", "200")]);
                                r.send(&frame(1, 0x4, stream, &block)).await;
                                r.send(&frame(0, 0x1, stream, b"ok")).await;
                            }
                            Action::GoAway => {
                                let mut p = 0u32.to_be_bytes().to_vec();
                                p.extend_from_slice(&0u32.to_be_bytes());
                                r.send(&frame(7, 0, 0, &p)).await;
                            }
                            Action::Refuse => {
                                r.send(&frame(3, 0, stream, &7u32.to_be_bytes())).await;
                            }
                            Action::Hold => {}
                        }
                        nth += 1;
                    }
                    3 => log.lock().expect("log").resets.push((
                        conn,
                        stream,
                        code(&payload, 0),
                    )),
                    4 if flags & 1 == 0 => r.send(&frame(4, 1, 0, &[])).await,
                    _ => {}
                }
            }
        }
    });
    (addr, log)
}

fn post_fields(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "POST"), (":scheme", "http"), (":authority", "svc"), (":path", path)]
}

/// Requests the upstream did not process are sent again on another
/// stream: one above a GOAWAY's last stream id (on a new connection), one
/// reset with REFUSED_STREAM (on the same connection). A request with a
/// body is not (its body is not kept): the client gets REFUSED_STREAM and
/// may retry it itself.
#[tokio::test(flavor = "current_thread")]
async fn requests_the_upstream_did_not_process_are_sent_again() {
    fn script(conn: usize, nth: usize, _path: &str) -> Action {
        match (conn, nth) {
            (0, _) => Action::GoAway,
            (_, 1) | (_, 3) => Action::Refuse,
            _ => Action::Respond,
        }
    }
    let (up, log) = raw_upstream(script).await;
    let (h, rec) = start(config(up, true)).await;
    let mut c = Raw::open(h.local_addr()).await;
    let key = key_for(Cohort::Control);
    let mut fields = get_fields("/one");
    fields.push(("x-user-id", &key));
    let block = c.block(&fields);
    c.send(&frame(1, 0x5, 1, &block)).await;
    assert_eq!(c.status(1).await, "200");
    let mut fields = get_fields("/two");
    fields.push(("x-user-id", &key));
    let block = c.block(&fields);
    c.send(&frame(1, 0x5, 3, &block)).await;
    assert_eq!(c.status(3).await, "200");
    let mut fields = post_fields("/three");
    fields.push(("x-user-id", &key));
    let block = c.block(&fields);
    c.send(&frame(1, 0x4, 5, &block)).await;
    c.send(&frame(0, 0x1, 5, b"body")).await;
    let (_, payload) = c.until(RST_STREAM, 5).await.expect("stream 5 reset");
    assert_eq!(code(&payload, 0), 7, "REFUSED_STREAM");
    {
        let log = log.lock().expect("log");
        let paths: Vec<(usize, &str)> =
            log.requests.iter().map(|(c, _, p)| (*c, p.as_str())).collect();
        assert_eq!(
            paths,
            vec![(0, "/one"), (1, "/one"), (1, "/two"), (1, "/two"), (1, "/three")],
            "{log:?}"
        );
        assert_eq!(log.connections, 2);
    }
    // Each answered request counts once; the refused one not at all.
    assert_eq!(rec.snapshot(Cohort::Control).total, 2);
    h.shutdown().await;
}

/// Two client connections' stream 1 become streams 1 and 3 of one
/// upstream connection, and a client's RST_STREAM reaches the upstream as
/// RST_STREAM CANCEL on the upstream's stream id.
#[tokio::test(flavor = "current_thread")]
async fn stream_ids_are_remapped_and_resets_reach_the_upstream() {
    fn script(_: usize, _: usize, _: &str) -> Action {
        Action::Hold
    }
    let (up, log) = raw_upstream(script).await;
    let (h, _rec) = start(config(up, true)).await;
    let seen = |n: usize| {
        let log = log.clone();
        async move {
            for _ in 0..200 {
                if log.lock().expect("log").requests.len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the upstream did not see {n} requests");
        }
    };
    let mut a = Raw::open(h.local_addr()).await;
    let block = a.block(&get_fields("/a"));
    a.send(&frame(1, 0x5, 1, &block)).await;
    seen(1).await;
    let mut b = Raw::open(h.local_addr()).await;
    let block = b.block(&get_fields("/b"));
    b.send(&frame(1, 0x5, 1, &block)).await;
    seen(2).await;
    a.send(&frame(3, 0, 1, &8u32.to_be_bytes())).await;
    for _ in 0..200 {
        if !log.lock().expect("log").resets.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ids, resets) = {
        let log = log.lock().expect("log");
        let ids: Vec<(usize, u32, String)> = log.requests.clone();
        (ids, log.resets.clone())
    };
    let want = [(0, 1, "/a"), (0, 3, "/b")].map(|(c, s, p)| (c, s, p.to_string()));
    assert_eq!(ids, want);
    assert_eq!(resets, vec![(0, 1, 8)], "CANCEL on the upstream's stream 1");
    h.shutdown().await;
}
