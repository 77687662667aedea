//! Upstream connections owned by one client connection: HTTP/1.1
//! (`http://` pools) and HTTP/2 with prior knowledge (`h2c://` pools, e.g.
//! gRPC), plus dedicated connections for upgrade handshakes (WebSocket).
//!
//! Each client connection keeps its own small set of idle upstream
//! connections (hyper's low-level `client::conn`), so the hot path takes no
//! shared pool lock, clones no client and, on a current-thread worker, never
//! hops threads. An HTTP/1 client sends its requests one at a time, so it
//! ends up with exactly one upstream connection per upstream address;
//! HTTP/2 clients may open a few more for concurrent streams.
//!
//! Stale connections: a reused connection that turns out closed before the
//! request was written is replaced by a fresh one; an idempotent request
//! without a body whose reused connection fails before a complete response
//! head (the upstream closed an idle keep-alive connection while the
//! request was on its way) is sent once more on a fresh connection. An
//! upstream's `Connection: close` ends the connection after its response
//! (hyper), and `Keep-Alive: timeout=N` retires it before the upstream
//! would.
//!
//! `https://` targets carry a TLS connector ([`super::tls`]); the TLS
//! handshake happens once per upstream connection, so reuse keeps it off
//! the per-request path. They offer `h2` and `http/1.1` by ALPN: an upstream
//! that picks `h2` (gRPC over TLS) gets HTTP/2 from then on, learned from
//! the first connection; upgrade handshakes offer only `http/1.1`.
//!
//! Requests arrive here in the shape the client sent them; [`for_h1`] and
//! [`for_h2`] fit them to the connection's protocol once it is known.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::IdleBody;

/// Idle upstream connections kept per client connection; more concurrent
/// (HTTP/2) streams get connections that close after their response.
const MAX_IDLE: usize = 4;

/// A connection the upstream announced `Keep-Alive: timeout=N` for is not
/// reused later than this much before N runs out.
pub(crate) const KEEP_ALIVE_MARGIN: Duration = Duration::from_millis(500);

/// Request bodies sent upstream: the client's (idle-bounded) or none.
pub(crate) type UpBody = Either<IdleBody<Incoming>, Empty<Bytes>>;

/// Why a request could not be forwarded upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr} (server name {name}) failed: {source}")]
    Tls { addr: String, name: String, source: std::io::Error },
    #[error("{addr} stopped offering HTTP/2 by ALPN; retry")]
    AlpnChanged { addr: String },
    #[error("{proto} handshake with {addr} failed: {source}")]
    Handshake { proto: &'static str, addr: String, source: hyper::Error },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// One upstream address, ready for `connect`.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) authority: Authority,
    /// `host:port` with the scheme's default port filled in.
    connect_to: String,
    /// HTTP/2 with prior knowledge (`h2c://`).
    pub(crate) h2: bool,
    /// Set for `https://` targets.
    tls: Option<super::tls::UpstreamTls>,
    /// An `https://` target whose server chose `h2` by ALPN.
    alpn_h2: AtomicBool,
}

impl Target {
    /// A plain-TCP target (`h2`: HTTP/2 with prior knowledge).
    #[cfg(test)]
    pub(crate) fn new(authority: Authority, h2: bool) -> Target {
        Target::with_tls(authority, h2, None)
    }

    /// A target reached over TLS when `tls` is set (default port 443).
    pub(crate) fn with_tls(
        authority: Authority,
        h2: bool,
        tls: Option<super::tls::UpstreamTls>,
    ) -> Target {
        let connect_to = match (authority.port_u16(), &tls) {
            (Some(_), _) => authority.as_str().to_string(),
            (None, None) => format!("{}:80", authority.host()),
            (None, Some(_)) => format!("{}:443", authority.host()),
        };
        Target { authority, connect_to, h2, tls, alpn_h2: AtomicBool::new(false) }
    }

    /// Plain `http://`: HTTP/1.1 over TCP, no TLS.
    pub(crate) fn is_plain_h1(&self) -> bool {
        !self.h2 && self.tls.is_none()
    }

    /// Plain `h2c://`: HTTP/2 with prior knowledge over TCP, no TLS.
    pub(crate) fn is_plain_h2c(&self) -> bool {
        self.h2 && self.tls.is_none()
    }

    /// HTTP/2 upstream: `h2c://`, or TLS where the server chose `h2`.
    pub(crate) fn speaks_h2(&self) -> bool {
        self.h2 || self.alpn_h2.load(Ordering::Relaxed)
    }
}

/// A fresh upstream connection, in the protocol it ended up speaking.
enum Fresh {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// Origin form and HTTP/1.1 towards the upstream (HTTP/1 clients already
/// sent origin form; HTTP/2 clients' `:authority` is in `Host` by now).
pub(crate) fn for_h1(req: &mut Request<UpBody>) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq =
            req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// HTTP/2 needs `:scheme` and `:authority`: absolute form, with the
/// client's `Host` as `:authority` and no `Host` header (RFC 9113 §8.3.1:
/// a `Host` that differs from `:authority` makes the request malformed).
fn for_h2(req: &mut Request<UpBody>, target: &Target) {
    let pq =
        req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .unwrap_or_else(|| target.authority.clone());
    let scheme = if target.tls.is_some() { "https" } else { "http" };
    if let Ok(uri) =
        Uri::builder().scheme(scheme).authority(authority).path_and_query(pq).build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

struct Idle {
    authority: Authority,
    sender: http1::SendRequest<UpBody>,
    /// From the upstream's `Keep-Alive: timeout=N`.
    retire_at: Option<Instant>,
}

/// The upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct UpstreamConns {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Vec<(Authority, http2::SendRequest<UpBody>)>>,
}

/// RFC 9110 §9.2.2 idempotent methods (TRACE left out: never forwarded
/// twice on purpose).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The request without its body, for a second attempt.
fn head_copy(req: &Request<UpBody>) -> Request<UpBody> {
    let mut r = Request::new(Either::Right(Empty::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// The reused connection died before a complete response head arrived:
/// the upstream closed it (idle timeout, `close` after N requests) while
/// the request was on its way.
fn died_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        cur = err.source();
    }
    false
}

/// `Keep-Alive: timeout=N` of a response, in seconds.
fn keep_alive_timeout(resp: &Response<Incoming>) -> Option<u64> {
    let v = resp.headers().get(super::headers::KEEP_ALIVE)?;
    super::headers::keep_alive_timeout(v.as_bytes())
}

impl UpstreamConns {
    /// Sends `req` (origin-form URI, `Host` set) to `target`, reusing an
    /// idle connection when there is one. `sequential` says the client
    /// connection sends one request at a time (HTTP/1), so a connection
    /// still finishing the previous response body is worth waiting for.
    /// `retryable`: idempotent and without a body, so it may be sent twice.
    pub(crate) async fn send(
        &self,
        target: &Target,
        mut req: Request<UpBody>,
        connect_timeout: Duration,
        sequential: bool,
        retryable: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if target.speaks_h2() {
            return self.send_h2(target, req, connect_timeout, retryable).await;
        }
        for_h1(&mut req);
        if let Some(mut sender) = self.take(&target.authority, sequential) {
            if sequential && !sender.is_ready() {
                // Err means closed: fall through to a fresh connection.
                let _ = sender.ready().await;
            }
            if sender.is_ready() {
                let copy = retryable.then(|| head_copy(&req));
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(&target.authority, sender, &resp);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        // Never written (the upstream closed the idle
                        // connection): safe to send on a fresh one.
                        Some(back) => req = back,
                        None => {
                            let e = e.into_error();
                            match copy {
                                Some(c) if died_before_response(&e) => {
                                    tracing::debug!(error = %e, "retrying on a fresh upstream connection");
                                    req = c;
                                }
                                _ => return Err(e.into()),
                            }
                        }
                    },
                }
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is a large future and
        // rare; inline it would make every request's future that large
        // (and every move of it a copy of that size).
        match Box::pin(connect(target, connect_timeout, false)).await? {
            Fresh::H1(mut sender) => {
                let resp = sender.send_request(req).await?;
                self.put(&target.authority, sender, &resp);
                Ok(resp)
            }
            // The upstream chose HTTP/2 by ALPN just now; later requests go
            // straight to `send_h2`.
            Fresh::H2(mut sender) => {
                self.keep_h2(target, &sender);
                for_h2(&mut req, target);
                Ok(sender.send_request(req).await?)
            }
        }
    }

    /// Sends an upgrade handshake on a connection of its own (it becomes
    /// the tunnel when the upstream answers 101).
    pub(crate) async fn send_upgrade(
        &self,
        target: &Target,
        req: Request<UpBody>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match Box::pin(connect(target, connect_timeout, true)).await? {
            Fresh::H1(mut sender) => Ok(sender.send_request(req).await?),
            // Not offered (`h1_only`); a server that picks it anyway broke
            // ALPN.
            Fresh::H2(_) => {
                Err(UpstreamError::AlpnChanged { addr: target.connect_to.clone() })
            }
        }
    }

    async fn send_h2(
        &self,
        target: &Target,
        mut req: Request<UpBody>,
        connect_timeout: Duration,
        retryable: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        for_h2(&mut req, target);
        let reused = {
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            h2.retain(|(_, s)| !s.is_closed());
            h2.iter().find(|(a, _)| *a == target.authority).map(|(_, s)| s.clone())
        };
        let req = match reused {
            Some(mut sender) => {
                let copy = retryable.then(|| head_copy(&req));
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match (e.take_message(), copy) {
                        (Some(back), _) => back,
                        (None, Some(c)) if died_before_response(e.error()) => c,
                        (None, _) => return Err(e.into_error().into()),
                    },
                }
            }
            None => req,
        };
        let mut sender = match Box::pin(connect(target, connect_timeout, false)).await? {
            Fresh::H2(sender) => sender,
            // A TLS upstream that now picks HTTP/1.1: this request was
            // shaped for HTTP/2, the next ones go to HTTP/1.1.
            Fresh::H1(_) => {
                return Err(UpstreamError::AlpnChanged {
                    addr: target.connect_to.clone(),
                })
            }
        };
        self.keep_h2(target, &sender);
        Ok(sender.send_request(req).await?)
    }

    /// Makes `sender` the HTTP/2 connection to `target` for later requests.
    fn keep_h2(&self, target: &Target, sender: &http2::SendRequest<UpBody>) {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|(a, _)| *a != target.authority);
        h2.push((target.authority.clone(), sender.clone()));
    }

    fn take(
        &self,
        authority: &Authority,
        sequential: bool,
    ) -> Option<http1::SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| {
            !i.sender.is_closed()
                && i.retire_at.is_none_or(|t| Instant::now() + KEEP_ALIVE_MARGIN < t)
        });
        let pos = idle.iter().position(|i| {
            i.authority == *authority && (sequential || i.sender.is_ready())
        })?;
        Some(idle.swap_remove(pos).sender)
    }

    fn put(
        &self,
        authority: &Authority,
        sender: http1::SendRequest<UpBody>,
        resp: &Response<Incoming>,
    ) {
        // Counted from the response head: a little early, which is the
        // safe side.
        let retire_at =
            keep_alive_timeout(resp).map(|n| Instant::now() + Duration::from_secs(n));
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { authority: authority.clone(), sender, retire_at });
        }
    }
}

pub(crate) async fn tcp(
    target: &Target,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let addr = &target.connect_to;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect { addr: addr.clone(), source })
        }
        Err(_) => {
            let source = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            );
            return Err(UpstreamError::Connect { addr: addr.clone(), source });
        }
    };
    // Small request/response exchanges: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A new connection to `target`: HTTP/1.1, or HTTP/2 for `h2c://` and for
/// TLS upstreams that choose `h2` by ALPN (never when `upgrades`).
async fn connect(
    target: &Target,
    timeout: Duration,
    upgrades: bool,
) -> Result<Fresh, UpstreamError> {
    let stream = tcp(target, timeout).await?;
    let addr = &target.connect_to;
    let Some(tls) = &target.tls else {
        return Ok(if target.h2 {
            Fresh::H2(handshake_h2(TokioIo::new(stream), addr).await?)
        } else {
            Fresh::H1(handshake_h1(TokioIo::new(stream), addr, upgrades).await?)
        });
    };
    let stream = tls.connect(stream, timeout, upgrades).await.map_err(|source| {
        UpstreamError::Tls { addr: addr.clone(), name: tls.name(), source }
    })?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
    if !upgrades {
        target.alpn_h2.store(h2, Ordering::Relaxed);
    }
    Ok(if h2 {
        Fresh::H2(handshake_h2(TokioIo::new(stream), addr).await?)
    } else {
        Fresh::H1(handshake_h1(TokioIo::new(stream), addr, upgrades).await?)
    })
}

/// HTTP/1.1 over an established (plain or TLS) upstream connection.
async fn handshake_h1<I>(
    io: I,
    addr: &str,
    upgrades: bool,
) -> Result<http1::SendRequest<UpBody>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(|source| {
        UpstreamError::Handshake { proto: "HTTP/1.1", addr: addr.to_string(), source }
    })?;
    // Runs on the client connection's runtime (its worker thread) and ends
    // when the sender is dropped or the upstream closes.
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
    }
    Ok(sender)
}

/// HTTP/2 over an established (plain: prior knowledge, or TLS) connection.
async fn handshake_h2<I>(
    io: I,
    addr: &str,
) -> Result<http2::SendRequest<UpBody>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake {
            proto: "HTTP/2",
            addr: addr.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_port_80_when_the_upstream_url_has_none() {
        let t = Target::new(Authority::from_static("example.test"), false);
        assert_eq!(t.connect_to, "example.test:80");
        let t = Target::new(Authority::from_static("127.0.0.1:9000"), true);
        assert_eq!(t.connect_to, "127.0.0.1:9000");
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
