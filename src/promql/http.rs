//! One bounded HTTP GET against Prometheus: URL building, query-string
//! encoding, auth headers, plain HTTP or HTTPS (rustls; CA bundle from
//! `ca_file` or the system trust store, SNI from the URL's host), and a
//! timeout that covers connect, TLS handshake, response and body, so an
//! unreachable or stuck server is an error, never a hang.

use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{api, PromConfig, PromError};
use crate::tls::{client_config, server_name, ALPN_HTTP11};

/// GETs `path` (below the configured base URL) with `params` as the query
/// string and returns the body of a 2xx answer. `query` only labels errors.
pub async fn get(
    cfg: &PromConfig,
    path: &str,
    params: &[(&str, String)],
    query: &str,
) -> Result<Bytes, PromError> {
    let uri = build_uri(&cfg.url, path, params)?;
    let invalid = |reason: String| PromError::InvalidUrl { url: cfg.url.clone(), reason };
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or_else(|| invalid("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // Built before the clock starts: a bad CA file is a configuration
    // error, not a slow server.
    let tls = if https {
        let connector =
            connector(cfg.ca_file.clone()).map_err(|e| invalid(e.to_string()))?;
        let name = server_name(&host).map_err(|e| invalid(e.to_string()))?;
        Some((connector, name))
    } else {
        None
    };
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let origin = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = http::Request::get(origin)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "chaos");
    if let Some(auth) = authorization(cfg) {
        req = req.header(http::header::AUTHORIZATION, auth);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| PromError::InvalidUrl {
        url: cfg.url.clone(),
        reason: format!("cannot build a request: {e}"),
    })?;

    let unreachable =
        |reason: String| PromError::Unreachable { url: cfg.url.clone(), reason };
    let exchange = async {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((bare, port))
            .await
            .map_err(|e| unreachable(format!("tcp connect error: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (resp, _conn) = match tls {
            None => send(TokioIo::new(stream), req).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
                send(TokioIo::new(stream), req).await
            }
        }
        .map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| {
            unreachable(format!("reading the answer: {}", error_chain(&e)))
        })?;
        Ok::<_, PromError>((status, body.to_bytes()))
    };
    let (status, body) =
        tokio::time::timeout(cfg.timeout, exchange).await.map_err(|_| {
            PromError::Timeout {
                url: cfg.url.clone(),
                query: query.to_string(),
                timeout: cfg.timeout,
            }
        })??;
    if !status.is_success() {
        let message = api::error_message(&body).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_string()
            } else {
                text.chars().take(300).collect()
            }
        });
        return Err(PromError::Status {
            url: cfg.url.clone(),
            query: query.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    Ok(body)
}

/// Ends the connection task when the exchange is over (or timed out), so a
/// server stuck mid-body leaves nothing running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// HTTP/1.1 over an established connection; the connection task lives as
/// long as the returned guard.
async fn send<I>(
    io: I,
    req: http::Request<Empty<Bytes>>,
) -> Result<(http::Response<Incoming>, AbortOnDrop), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let guard = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await?;
    Ok((resp, guard))
}

/// One TLS client configuration per CA file (or the system roots) for the
/// life of the process: guardrails query every few seconds, and re-reading
/// a CA bundle each time would be waste.
fn connector(ca_file: Option<PathBuf>) -> Result<TlsConnector, crate::tls::TlsError> {
    type Cache = Mutex<Vec<(Option<PathBuf>, TlsConnector)>>;
    static CACHE: Cache = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = cache.iter().find(|(k, _)| *k == ca_file) {
        return Ok(c.clone());
    }
    let c = TlsConnector::from(client_config(ca_file.as_deref(), &[ALPN_HTTP11])?);
    cache.push((ca_file, c.clone()));
    Ok(c)
}

/// `base` + `path` + `?k=v&...`, keeping a path prefix in `base`.
fn build_uri(
    base: &str,
    path: &str,
    params: &[(&str, String)],
) -> Result<http::Uri, PromError> {
    let invalid = |reason: &str| PromError::InvalidUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let parsed: http::Uri =
        base.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = match parsed.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err(invalid("expected http://host:port or https://host[:port]")),
    };
    let authority = parsed.authority().ok_or_else(|| invalid("no host"))?;
    if parsed.query().is_some() {
        return Err(invalid("the base URL must not have a query string"));
    }
    let prefix = parsed.path().trim_end_matches('/');
    let mut s = format!("{scheme}://{authority}{prefix}{path}");
    for (i, (k, v)) in params.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(&percent_encode(k));
        s.push('=');
        s.push_str(&percent_encode(v));
    }
    s.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Authorization` header value; a bearer token wins over basic auth
/// when a file sets both (documented in docs/prometheus.md).
fn authorization(cfg: &PromConfig) -> Option<String> {
    if let Some(token) = &cfg.bearer_token {
        return Some(format!("Bearer {token}"));
    }
    cfg.basic_auth.as_ref().map(|(user, pass)| {
        format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
    })
}

/// Standard base64 with padding (RFC 4648), for basic auth only.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `outer: inner: innermost`, since hyper's top-level message alone
/// ("client error (Connect)") does not say what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64_like_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pa ss"), "dXNlcjpwYSBzcw==");
    }

    #[test]
    fn builds_query_urls_below_a_path_prefix_with_encoded_promql() {
        let q = r#"sum(rate(x{cohort="control"}[30s]))"#.to_string();
        let uri =
            build_uri("http://127.0.0.1:9090/prom/", "/api/v1/query", &[("query", q)])
                .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:9090/prom/api/v1/query?query=sum%28rate%28x%7Bcohort%3D\
             %22control%22%7D%5B30s%5D%29%29"
        );
    }

    #[test]
    fn keeps_https_and_refuses_non_urls_with_a_reason() {
        let uri = build_uri("https://prom:9090/", "/-/ready", &[]).unwrap();
        assert_eq!(uri.to_string(), "https://prom:9090/-/ready");
        let e = build_uri("prom:9090", "/-/ready", &[]).unwrap_err();
        assert!(e.to_string().contains("expected http://"), "{e}");
        assert!(build_uri("ftp://prom:9090", "/", &[]).is_err());
    }

    #[test]
    fn prefers_the_bearer_token_over_basic_auth() {
        let mut cfg = PromConfig {
            url: "http://x".into(),
            timeout: std::time::Duration::from_secs(1),
            step: std::time::Duration::from_secs(1),
            bearer_token: Some("tok".into()),
            basic_auth: Some(("u".into(), "p".into())),
            ca_file: None,
        };
        assert_eq!(authorization(&cfg).unwrap(), "Bearer tok");
        cfg.bearer_token = None;
        assert_eq!(authorization(&cfg).unwrap(), "Basic dTpw");
    }
}
