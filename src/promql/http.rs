//! One bounded HTTP GET against Prometheus: URL building, query-string
//! encoding, auth headers, and a timeout that covers connect, response and
//! body, so an unreachable or stuck server is an error, never a hang.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{api, PromConfig, PromError};

/// GETs `path` (below the configured base URL) with `params` as the query
/// string and returns the body of a 2xx answer. `query` only labels errors.
pub async fn get(
    cfg: &PromConfig,
    path: &str,
    params: &[(&str, String)],
    query: &str,
) -> Result<Bytes, PromError> {
    let uri = build_uri(&cfg.url, path, params)?;
    let mut req = http::Request::get(uri).header(http::header::USER_AGENT, "chaos");
    if let Some(auth) = authorization(cfg) {
        req = req.header(http::header::AUTHORIZATION, auth);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| PromError::InvalidUrl {
        url: cfg.url.clone(),
        reason: format!("cannot build a request: {e}"),
    })?;

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeout));
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);

    let exchange = async {
        let resp = client.request(req).await.map_err(|e| PromError::Unreachable {
            url: cfg.url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let body =
            resp.into_body().collect().await.map_err(|e| PromError::Unreachable {
                url: cfg.url.clone(),
                reason: format!("reading the answer: {}", error_chain(&e)),
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
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "https is not supported by the built-in client; reach Prometheus over \
                 http on loopback or through a local TLS-terminating sidecar",
            ))
        }
        _ => return Err(invalid("expected http://host:port")),
    }
    let authority = parsed.authority().ok_or_else(|| invalid("no host"))?;
    if parsed.query().is_some() {
        return Err(invalid("the base URL must not have a query string"));
    }
    let prefix = parsed.path().trim_end_matches('/');
    let mut s = format!("http://{authority}{prefix}{path}");
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
    fn refuses_https_and_non_urls_with_a_reason() {
        let e = build_uri("https://prom:9090", "/-/ready", &[]).unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
        assert!(build_uri("prom:9090", "/-/ready", &[]).is_err());
    }

    #[test]
    fn prefers_the_bearer_token_over_basic_auth() {
        let mut cfg = PromConfig {
            url: "http://x".into(),
            timeout: std::time::Duration::from_secs(1),
            step: std::time::Duration::from_secs(1),
            bearer_token: Some("tok".into()),
            basic_auth: Some(("u".into(), "p".into())),
        };
        assert_eq!(authorization(&cfg).unwrap(), "Bearer tok");
        cfg.bearer_token = None;
        assert_eq!(authorization(&cfg).unwrap(), "Basic dTpw");
    }
}
