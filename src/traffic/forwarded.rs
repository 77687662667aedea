//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) on
//! requests going upstream. The peer's values are formatted once per client
//! connection ([`PeerForwarding::new`]); a request then only clones them,
//! and allocates only when a trusted peer's list has to be extended.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue, FORWARDED};
use http::HeaderMap;

use super::config::{ForwardedMode, IpNet};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName =
    HeaderName::from_static("x-forwarded-proto");

/// The forwarding headers one client connection contributes.
#[derive(Debug)]
pub(crate) struct PeerForwarding {
    /// The peer's address as an `X-Forwarded-For` element.
    xff: HeaderValue,
    /// `for=...;proto=...` (IPv6 quoted and bracketed, RFC 7239 §6).
    forwarded: HeaderValue,
    proto: HeaderValue,
    /// Whether the peer may speak for earlier hops.
    trusted: bool,
}

impl PeerForwarding {
    /// `proto` is `http` or `https` (the client side of this connection).
    pub(crate) fn new(peer: SocketAddr, proto: &'static str, trusted: &[IpNet]) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer.ip()),
            v4 => v4,
        };
        let forwarded = match ip {
            IpAddr::V4(a) => format!("for={a};proto={proto}"),
            IpAddr::V6(a) => format!("for=\"[{a}]\";proto={proto}"),
        };
        PeerForwarding {
            // Formatted IP addresses and the fixed parts are valid header
            // values; the fallbacks are unreachable in practice.
            xff: HeaderValue::from_str(&ip.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded: HeaderValue::from_str(&forwarded)
                .unwrap_or(HeaderValue::from_static("for=unknown")),
            proto: HeaderValue::from_static(proto),
            trusted: trusted.iter().any(|n| n.contains(ip)),
        }
    }

    /// Whether the peer may speak for earlier hops.
    pub(crate) fn trusted(&self) -> bool {
        self.trusted
    }

    /// `X-Forwarded-For`, `Forwarded` and `X-Forwarded-Proto` values of
    /// this peer.
    pub(crate) fn values(&self) -> (&[u8], &[u8], &[u8]) {
        (self.xff.as_bytes(), self.forwarded.as_bytes(), self.proto.as_bytes())
    }

    /// Rewrites the request's forwarding headers according to `mode`.
    pub(crate) fn apply(&self, mode: ForwardedMode, headers: &mut HeaderMap) {
        match mode {
            ForwardedMode::Off => {}
            ForwardedMode::Append if self.trusted => {
                append(headers, X_FORWARDED_FOR, &self.xff);
                append(headers, FORWARDED, &self.forwarded);
                if !headers.contains_key(X_FORWARDED_PROTO) {
                    headers.insert(X_FORWARDED_PROTO, self.proto.clone());
                }
            }
            ForwardedMode::Append | ForwardedMode::Replace => {
                headers.insert(X_FORWARDED_FOR, self.xff.clone());
                headers.insert(FORWARDED, self.forwarded.clone());
                headers.insert(X_FORWARDED_PROTO, self.proto.clone());
            }
        }
    }
}

/// Adds `ours` as the last element of a comma-separated list header,
/// folding several header lines into one.
fn append(headers: &mut HeaderMap, name: HeaderName, ours: &HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(&name) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        headers.insert(name, ours.clone());
        return;
    }
    joined.extend_from_slice(ours.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(name, v);
        }
        // The client's value held bytes a header may not: start over.
        Err(_) => {
            headers.insert(name, ours.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xff: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(x) = xff {
            h.insert(X_FORWARDED_FOR, HeaderValue::from_str(x).unwrap());
            h.insert(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        }
        h
    }

    #[test]
    fn appends_only_for_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let p = PeerForwarding::new(peer, "http", &trusted);
        let mut h = req(Some("203.0.113.9"));
        p.apply(ForwardedMode::Append, &mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.1.1.1");
        assert_eq!(h[FORWARDED], "for=1.1.1.1, for=10.1.1.1;proto=http");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");

        let stranger: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let p = PeerForwarding::new(stranger, "http", &trusted);
        let mut h = req(Some("203.0.113.9"));
        p.apply(ForwardedMode::Append, &mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");

        let p = PeerForwarding::new(peer, "http", &trusted);
        let mut h = req(Some("203.0.113.9"));
        p.apply(ForwardedMode::Replace, &mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1");
        let mut h = req(Some("203.0.113.9"));
        p.apply(ForwardedMode::Off, &mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9");
    }

    #[test]
    fn quotes_ipv6_in_forwarded() {
        let peer: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let p = PeerForwarding::new(peer, "https", &[]);
        let mut h = HeaderMap::new();
        p.apply(ForwardedMode::Append, &mut h);
        assert_eq!(h[FORWARDED], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
    }
}
