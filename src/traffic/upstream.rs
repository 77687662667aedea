//! Upstream HTTP/1.1 connections owned by one client connection.
//!
//! Each client connection keeps its own small set of idle upstream
//! connections (hyper's low-level `client::conn::http1`), so the hot path
//! takes no shared pool lock, clones no client and, on a current-thread
//! worker, never hops threads. An HTTP/1 client sends its requests one at a
//! time, so it ends up with exactly one upstream connection per upstream
//! address; HTTP/2 clients may open a few more for concurrent streams.
//! A reused connection that turns out closed before the request was
//! written is replaced by a fresh one, transparently. `https://` targets
//! carry a TLS connector ([`super::tls`]); the TLS handshake happens once
//! per upstream connection, so reuse keeps it off the per-request path.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle upstream connections kept per client connection; more concurrent
/// (HTTP/2) streams get connections that close after their response.
const MAX_IDLE: usize = 4;

/// Why a request could not be forwarded upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr} (server name {name}) failed: {source}")]
    Tls { addr: String, name: String, source: std::io::Error },
    #[error("HTTP/1.1 handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: hyper::Error },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// One upstream address, ready for `connect`.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) authority: Authority,
    /// `host:port` with the scheme's default port filled in.
    connect_to: String,
    /// Set for `https://` targets.
    tls: Option<super::tls::UpstreamTls>,
}

impl Target {
    /// A plain-HTTP target.
    #[cfg(test)]
    pub(crate) fn new(authority: Authority) -> Target {
        Target::with_tls(authority, None)
    }

    /// A target reached over TLS when `tls` is set (default port 443).
    pub(crate) fn with_tls(
        authority: Authority,
        tls: Option<super::tls::UpstreamTls>,
    ) -> Target {
        let connect_to = match (authority.port_u16(), &tls) {
            (Some(_), _) => authority.as_str().to_string(),
            (None, None) => format!("{}:80", authority.host()),
            (None, Some(_)) => format!("{}:443", authority.host()),
        };
        Target { authority, connect_to, tls }
    }
}

struct Idle {
    authority: Authority,
    sender: SendRequest<Incoming>,
}

/// The upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct UpstreamConns {
    idle: Mutex<Vec<Idle>>,
}

impl UpstreamConns {
    /// Sends `req` (origin-form URI, `Host` set) to `target`, reusing an
    /// idle connection when there is one. `sequential` says the client
    /// connection sends one request at a time (HTTP/1), so a connection
    /// still finishing the previous response body is worth waiting for.
    pub(crate) async fn send(
        &self,
        target: &Target,
        mut req: Request<Incoming>,
        connect_timeout: Duration,
        sequential: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Some(mut sender) = self.take(&target.authority, sequential) {
            if sequential && !sender.is_ready() {
                // Err means closed: fall through to a fresh connection.
                let _ = sender.ready().await;
            }
            if sender.is_ready() {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(&target.authority, sender);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        // Never written (the upstream closed the idle
                        // connection): safe to retry on a fresh one.
                        Some(back) => req = back,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
        }
        let mut sender = connect(target, connect_timeout).await?;
        let resp = sender.send_request(req).await?;
        self.put(&target.authority, sender);
        Ok(resp)
    }

    fn take(
        &self,
        authority: &Authority,
        sequential: bool,
    ) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| !i.sender.is_closed());
        let pos = idle.iter().position(|i| {
            i.authority == *authority && (sequential || i.sender.is_ready())
        })?;
        Some(idle.swap_remove(pos).sender)
    }

    fn put(&self, authority: &Authority, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { authority: authority.clone(), sender });
        }
    }
}

async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<SendRequest<Incoming>, UpstreamError> {
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
    match &target.tls {
        None => handshake(TokioIo::new(stream), addr).await,
        Some(tls) => {
            let stream = tls.connect(stream, timeout).await.map_err(|source| {
                UpstreamError::Tls { addr: addr.clone(), name: tls.name(), source }
            })?;
            handshake(TokioIo::new(stream), addr).await
        }
    }
}

/// HTTP/1.1 over an established (plain or TLS) upstream connection.
async fn handshake<I>(io: I, addr: &str) -> Result<SendRequest<Incoming>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake { addr: addr.to_string(), source })?;
    // Runs on the client connection's runtime (its worker thread) and ends
    // when the sender is dropped or the upstream closes.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_port_80_when_the_upstream_url_has_none() {
        let t = Target::new(Authority::from_static("example.test"));
        assert_eq!(t.connect_to, "example.test:80");
        let t = Target::new(Authority::from_static("127.0.0.1:9000"));
        assert_eq!(t.connect_to, "127.0.0.1:9000");
    }
}
