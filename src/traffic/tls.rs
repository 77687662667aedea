//! TLS at the proxy's two edges: terminating client connections
//! (`--tls-cert`/`--tls-key`, ALPN `h2`/`http/1.1`) and originating TLS to
//! `https://` upstreams (SNI and verification from the URL's host, trust
//! from `--upstream-ca` or the system store). The PEM loading and rustls
//! configurations live in [`crate::tls`]; this module owns the glue the
//! accept loop and the upstream connector call.
//!
//! Plain-TCP proxies never reach this code: the server serves a bare
//! `TcpStream` and plain targets carry no connector, so TLS costs nothing
//! on their hot path (the connection future is monomorphised per stream
//! type; there is no per-read branch).

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::config::{ProxyConfig, Upstream};
use super::upstream::Target;
use crate::tls::{
    client_config, server_config, server_name, TlsError, ALPN_H2, ALPN_HTTP11,
};

/// A client that completes no TLS handshake within this is dropped (a
/// slow or silent client must not hold a connection slot forever).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for client-facing TLS, if the proxy terminates TLS.
pub(crate) fn acceptor(cfg: &ProxyConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    cfg.tls.as_ref().map(|files| Ok(TlsAcceptor::from(server_config(files)?))).transpose()
}

/// Completes the server side of a client's TLS handshake, bounded in time.
pub(crate) async fn accept<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
) -> std::io::Result<server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

/// How one `https://` target is reached: the shared client configurations
/// and the name used for SNI and certificate verification.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    /// Offers `h2` and `http/1.1`: the upstream's ALPN choice decides.
    connector: TlsConnector,
    /// Offers only `http/1.1`, for upgrade handshakes (WebSocket).
    connector_h1: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("name", &self.name).finish()
    }
}

impl UpstreamTls {
    /// The server name, for error messages.
    pub(crate) fn name(&self) -> String {
        self.name.to_str().into_owned()
    }

    /// TLS over an established TCP connection, within `timeout`; `h1_only`
    /// offers only `http/1.1` by ALPN.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        timeout: Duration,
        h1_only: bool,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let connector = if h1_only { &self.connector_h1 } else { &self.connector };
        let handshake = connector.connect(self.name.clone(), stream);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout:?}"),
            )),
        }
    }
}

/// The upstream targets of every pool in `cfg`, in order: default,
/// control, experiment. One client configuration is shared by all https
/// targets, built only when there is one (so a plain-HTTP proxy never
/// reads the system trust store).
pub(crate) fn pool_targets(cfg: &ProxyConfig) -> Result<[Vec<Target>; 3], TlsError> {
    let pools = [&cfg.pools.default, &cfg.pools.control, &cfg.pools.experiment];
    let any_https =
        pools.iter().flat_map(|p| p.iter()).any(|u| u.url.scheme_str() == Some("https"));
    let connectors = if any_https {
        // HTTP/2 when the upstream picks it (gRPC over TLS), else HTTP/1.1;
        // upgrade handshakes need HTTP/1.1.
        let ca = cfg.upstream_ca.as_deref();
        let any = client_config(ca, &[ALPN_H2, ALPN_HTTP11])?;
        let h1 = client_config(ca, &[ALPN_HTTP11])?;
        Some((TlsConnector::from(any), TlsConnector::from(h1)))
    } else {
        None
    };
    let targets = |ups: &Vec<Upstream>| -> Result<Vec<Target>, TlsError> {
        let mut out = Vec::with_capacity(ups.len());
        for u in ups {
            let Some(authority) = u.url.authority().cloned() else { continue };
            let tls = match (&connectors, u.url.scheme_str()) {
                (Some((any, h1)), Some("https")) => Some(UpstreamTls {
                    connector: any.clone(),
                    connector_h1: h1.clone(),
                    name: server_name(authority.host())?,
                }),
                _ => None,
            };
            let h2 = u.url.scheme_str() == Some("h2c");
            out.push(Target::with_tls(authority, h2, tls));
        }
        Ok(out)
    };
    Ok([targets(pools[0])?, targets(pools[1])?, targets(pools[2])?])
}

/// Checks the TLS files of `cfg` (certificate/key pair, CA bundle) the
/// way [`super::Proxy::start`] will load them, so a command can refuse
/// bad files as invalid input before anything binds.
pub fn check(cfg: &ProxyConfig) -> Result<(), TlsError> {
    acceptor(cfg)?;
    pool_targets(cfg)?;
    Ok(())
}
