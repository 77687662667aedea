//! Request and response header rules of the proxy that do not depend on
//! cohorts: hop-by-hop stripping (RFC 9110 §7.6.1, including the headers a
//! message names in `Connection`/`Proxy-Connection`), the `Host` checks,
//! and recognising an HTTP/1.1 upgrade (WebSocket) handshake.
//!
//! Everything here only allocates when the message actually carries the
//! header in question, so the common request pays a few hash lookups.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, UPGRADE};
use http::{HeaderMap, Version};

/// `Keep-Alive` (RFC 7230 appendix A.1.2).
pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The pre-standard `Proxy-Connection` some clients still send.
pub(crate) const PROXY_CONNECTION: HeaderName =
    HeaderName::from_static("proxy-connection");
/// Underscore spelling of the cohort header: CGI/WSGI-style servers map `-`
/// and `_` to the same variable, so it is as good as `x-chaos-cohort` for
/// spoofing a cohort and is never forwarded.
pub(crate) const COHORT_HEADER_UNDERSCORE: HeaderName =
    HeaderName::from_static("x_chaos_cohort");

/// Always connection-scoped. `TE` is handled apart (`TE: trailers` is kept,
/// so trailers survive), and `Trailer` is end to end (RFC 9110 §6.6.2).
pub(crate) const HOP_BY_HOP: [HeaderName; 5] =
    [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, http::header::TRANSFER_ENCODING, UPGRADE];

/// Whether a `Connection`-style header lists `token` (case-insensitive).
fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// An HTTP/1.1 upgrade handshake: `Connection: upgrade` plus `Upgrade`.
pub(crate) fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && lists_token(headers, &CONNECTION, "upgrade")
}

/// `Connection` tokens that need no header lookup of their own: options
/// (`close`) or headers that are always removed (or, for `upgrade`, kept
/// by the caller's rule).
fn is_handled_token(t: &[u8]) -> bool {
    t.is_empty()
        || t.eq_ignore_ascii_case(b"keep-alive")
        || t.eq_ignore_ascii_case(b"close")
        || t.eq_ignore_ascii_case(b"upgrade")
}

/// Removes hop-by-hop headers before a message is forwarded: the fixed
/// set, every header named in `Connection` or `Proxy-Connection`, and `TE`
/// unless it is exactly `trailers`. With `upgrade` the handshake's
/// `Upgrade` header survives and `Connection: upgrade` is set again.
/// `keep` names headers that are never removed even when listed (the
/// proxy's own cohort header).
pub(crate) fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    upgrade: bool,
    keep: &HeaderName,
) {
    for name in [&CONNECTION, &PROXY_CONNECTION] {
        if !headers.contains_key(name) {
            continue;
        }
        // Nearly every `Connection` lists only `keep-alive`, `close` or
        // `upgrade`, which are handled below anyway: no list, no allocation.
        let named: Vec<HeaderName> = headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !is_handled_token(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            if n != *keep && !(upgrade && n == UPGRADE) {
                headers.remove(&n);
            }
        }
    }
    let upgrade_value = if upgrade { headers.remove(UPGRADE) } else { None };
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if let Some(te) = headers.get(TE) {
        if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers")
            || headers.get_all(TE).iter().count() > 1
        {
            headers.remove(TE);
        }
    }
    if let Some(v) = upgrade_value {
        headers.insert(UPGRADE, v);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `Keep-Alive: timeout=N, max=M` -> N (the value read like
/// `HeaderValue::to_str`: visible ASCII and tabs only).
pub(crate) fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    if !value.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
        return None;
    }
    let v = std::str::from_utf8(value).ok()?;
    v.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("timeout").then(|| n.trim().parse().ok())?
    })
}

/// Why a request head is refused with 400 before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    #[error("HTTP/1.1 request without a Host header")]
    Missing,
    #[error("request with more than one Host header")]
    Duplicate,
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; HTTP/1.0
/// may omit it, and HTTP/2 carries `:authority` instead.
pub(crate) fn check_host(version: Version, headers: &HeaderMap) -> Result<(), HostError> {
    let mut all = headers.get_all(HOST).iter();
    match (all.next(), all.next()) {
        (Some(_), Some(_)) => Err(HostError::Duplicate),
        (None, _) if version == Version::HTTP_11 => Err(HostError::Missing),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_headers_named_in_connection_and_proxy_connection() {
        let keep = HeaderName::from_static("x-chaos-cohort");
        let mut h = map(&[
            ("connection", "close, X-Secret , x-chaos-cohort"),
            ("proxy-connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-chaos-cohort", "control"),
            ("x-kept", "3"),
            ("te", "gzip"),
            ("trailer", "x-sum"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h, false, &keep);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["trailer", "x-chaos-cohort", "x-kept"]);
    }

    #[test]
    fn keeps_te_trailers_and_the_upgrade_handshake() {
        let keep = HeaderName::from_static("x-chaos-cohort");
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        assert!(!is_upgrade(Version::HTTP_10, &h));
        strip_hop_by_hop(&mut h, true, &keep);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("te").unwrap(), "trailers");
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, false, &keep);
        assert!(h.is_empty());
    }

    #[test]
    fn host_must_be_there_once_in_http_1_1() {
        assert_eq!(check_host(Version::HTTP_11, &map(&[])), Err(HostError::Missing));
        assert_eq!(check_host(Version::HTTP_10, &map(&[])), Ok(()));
        assert_eq!(check_host(Version::HTTP_2, &map(&[])), Ok(()));
        let two = map(&[("host", "a"), ("host", "b")]);
        assert_eq!(check_host(Version::HTTP_11, &two), Err(HostError::Duplicate));
        assert_eq!(check_host(Version::HTTP_11, &map(&[("host", "a")])), Ok(()));
    }
}
