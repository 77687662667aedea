//! Upstream response heads on the fast path: parsed with `httparse`,
//! framed by RFC 9112 §6.3, and rewritten for the client in one pass
//! (hop-by-hop headers and the headers named in `Connection` removed, the
//! cohort header set, chunked bodies re-framed by [`super::chunked`]).

use std::io::Write;

use super::super::headers::HOP_BY_HOP;
use crate::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};

/// Most header lines accepted in an upstream response (hyper's default).
const MAX_HEADERS: usize = 100;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes after it.
    UntilClose,
}

/// A complete, rewritten response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    /// Bytes of the head in the upstream's buffer.
    pub(crate) len: usize,
    pub(crate) framing: Framing,
    /// The upstream connection cannot carry another request.
    pub(crate) upstream_close: bool,
    /// The upstream's `Keep-Alive: timeout=N`.
    pub(crate) keep_alive_secs: Option<u64>,
}

/// Why a response head is refused (the client gets 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("invalid response head: {0}")]
    Parse(String),
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("unsupported Transfer-Encoding {0:?} (only chunked)")]
    TransferEncoding(String),
}

/// What the client side asked for, needed to frame and rewrite a response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForClient<'a> {
    pub(crate) head_request: bool,
    pub(crate) cohort: Option<Cohort>,
    /// Ask the client to close after this response.
    pub(crate) close: bool,
    /// `x-chaos-fault` value (the faults applied), empty for none.
    pub(crate) faults: &'a str,
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Comma-separated tokens of a header value.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Parses the response head at the start of `buf`. `Ok(None)`: not complete
/// yet. On success the rewritten head is appended to `out`.
pub(crate) fn parse(
    buf: &[u8],
    client: ForClient<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<Head>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Parse(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let headers = &*resp.headers;
    if status == 101 {
        return Err(HeadError::UnaskedUpgrade);
    }

    // Headers named in Connection go, except our own cohort header.
    let mut upstream_close = resp.version != Some(1);
    let mut named: Vec<&[u8]> = Vec::new();
    let mut keep_alive_secs = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if is(h.name, "connection") || is(h.name, "proxy-connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(COHORT_HEADER.as_bytes())
                {
                    named.push(t);
                }
            }
        } else if is(h.name, "keep-alive") {
            keep_alive_secs = super::super::headers::keep_alive_timeout(h.value);
        } else if is(h.name, "content-length") {
            for t in v_list(h.value) {
                let n = parse_length(t).ok_or(HeadError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::ContentLength);
                }
                length = Some(n);
            }
        } else if is(h.name, "transfer-encoding") {
            for t in tokens(h.value) {
                if !t.eq_ignore_ascii_case(b"chunked") || chunked {
                    let v = String::from_utf8_lossy(h.value).into_owned();
                    return Err(HeadError::TransferEncoding(v));
                }
                chunked = true;
            }
        }
    }
    let no_body = client.head_request
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if chunked {
        // Both framings: a smuggling attempt or a broken upstream; the
        // chunked one wins (RFC 9112 §6.3) and the connection is not reused.
        upstream_close |= length.is_some();
        Framing::Chunked
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        upstream_close = true;
    }

    let reason = resp.reason.unwrap_or("");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for h in headers {
        let n = h.name;
        let hop = HOP_BY_HOP.iter().any(|h| is(n, h.as_str()))
            || (is(n, "te") && !h.value.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            || named.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes()))
            || (is(n, "content-length") && framing != Framing::Empty)
            || (is(n, COHORT_HEADER) && client.cohort.is_some())
            || (is(n, FAULT_HEADER) && !client.faults.is_empty());
        if hop {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if let Some(c) = client.cohort {
        let _ = write!(out, "{COHORT_HEADER}: {}\r\n", c.as_str());
    }
    if !client.faults.is_empty() {
        let _ = write!(out, "{FAULT_HEADER}: {}\r\n", client.faults);
    }
    let informational = (100..200).contains(&status);
    if !informational && (client.close || framing == Framing::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Head { status, len, framing, upstream_close, keep_alive_secs }))
}

/// Values of a list header (`Content-Length: 5, 5` is legal if all agree).
fn v_list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Digits only (no sign, no spaces inside), at most 19 of them.
fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ForClient<'static> {
        ForClient { head_request: false, cohort: None, close: false, faults: "" }
    }

    fn rewrite(raw: &str, c: ForClient<'_>) -> (Head, String) {
        let mut out = Vec::new();
        let head = parse(raw.as_bytes(), c, &mut out).unwrap().unwrap();
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers_and_sets_the_cohort() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\n\
                   Keep-Alive: timeout=5, max=100\r\nX-Public: 2\r\nx-chaos-cohort: spoof\r\n\
                   Upgrade: h2c\r\nContent-Length: 2\r\n\r\nok";
        let c = ForClient { cohort: Some(Cohort::Experiment), ..client() };
        let (head, text) = rewrite(raw, c);
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(head.len, raw.len() - 2);
        assert_eq!(head.keep_alive_secs, Some(5));
        assert!(!head.upstream_close);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nX-Public: 2\r\ncontent-length: 2\r\n\
             x-chaos-cohort: experiment\r\n\r\n"
        );
    }

    #[test]
    fn frames_by_rfc_9112() {
        let f = |raw: &str, c: ForClient<'_>| rewrite(raw, c).0;
        let get = client();
        let head = ForClient { head_request: true, ..client() };
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", head).framing,
            Framing::Empty
        );
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", get).framing, Framing::Empty);
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n", get).framing, Framing::Empty);
        assert_eq!(
            f("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n", get).framing,
            Framing::Empty
        );
        let h = f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", get);
        assert_eq!((h.framing, h.upstream_close), (Framing::Chunked, false));
        // Both framings: chunked wins, the connection is not reused.
        let h = f(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            get,
        );
        assert_eq!((h.framing, h.upstream_close), (Framing::Chunked, true));
        let h = f("HTTP/1.1 200 OK\r\n\r\n", get);
        assert_eq!((h.framing, h.upstream_close), (Framing::UntilClose, true));
        assert!(rewrite("HTTP/1.1 200 OK\r\n\r\n", get)
            .1
            .contains("connection: close\r\n"));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", get).framing,
            Framing::Length(7)
        );
        let h = f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", get);
        assert!(h.upstream_close);
        let h =
            f("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", get);
        assert!(h.upstream_close);
    }

    #[test]
    fn refuses_ambiguous_or_unsupported_heads() {
        let mut out = Vec::new();
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse(raw.as_bytes(), client(), &mut out).is_err(), "{raw:?}");
        }
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", client(), &mut out), Ok(None));
        assert!(out.is_empty());
    }

    fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
        headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count()
    }

    proptest::proptest! {
        /// The fuzz target of the response rewriter: random heads built from
        /// the headers that decide framing and hop-by-hop rules. Whatever is
        /// accepted comes out as a well-formed head with no hop-by-hop
        /// header, exactly the framing header its framing needs, and our
        /// cohort header once when there is a cohort.
        #[test]
        fn rewritten_heads_are_well_formed(
            status in proptest::sample::select(vec![100u16, 103, 200, 204, 206, 304, 404, 500, 101]),
            headers in proptest::collection::vec(
                (proptest::sample::select(vec!["content-length", "Content-Length",
                    "transfer-encoding", "connection", "keep-alive", "x-chaos-cohort",
                    "trailer", "upgrade", "te", "proxy-connection", "x-a"]),
                 proptest::prop_oneof!["[0-9]{1,3}", "[ -~]{0,12}",
                    proptest::strategy::Just("chunked".to_string()),
                    proptest::strategy::Just("close".to_string()),
                    proptest::strategy::Just("x-a, keep-alive".to_string())]),
                0..6),
            head_request in proptest::bool::ANY,
            cohort in proptest::option::of(proptest::strategy::Just(Cohort::Control)),
            close in proptest::bool::ANY,
        ) {
            let mut raw = format!("HTTP/1.1 {status} Whatever\r\n");
            for (n, v) in &headers {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let mut out = Vec::new();
            let c = ForClient { head_request, cohort, close, faults: "" };
            let Ok(Some(head)) = parse(raw.as_bytes(), c, &mut out) else {
                return Ok(());
            };
            proptest::prop_assert_eq!(head.len, raw.len());
            let mut storage = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut storage);
            proptest::prop_assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
            proptest::prop_assert_eq!(resp.code, Some(status));
            let hs = &*resp.headers;
            for gone in ["keep-alive", "upgrade", "proxy-connection"] {
                proptest::prop_assert_eq!(count(hs, gone), 0, "{}", gone);
            }
            proptest::prop_assert!(count(hs, "connection") <= 1);
            if cohort.is_some() {
                // Ours replaces the upstream's; without a cohort the
                // upstream's pass as they are (as on the general path).
                proptest::prop_assert_eq!(count(hs, "x-chaos-cohort"), 1);
            }
            match head.framing {
                Framing::Chunked => {
                    proptest::prop_assert_eq!(count(hs, "transfer-encoding"), 1);
                    proptest::prop_assert_eq!(count(hs, "content-length"), 0);
                }
                Framing::Length(n) => {
                    proptest::prop_assert_eq!(count(hs, "transfer-encoding"), 0);
                    let cl: Vec<_> = hs.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).collect();
                    proptest::prop_assert_eq!(cl.len(), 1);
                    let want = n.to_string();
                    proptest::prop_assert_eq!(cl[0].value, want.as_bytes());
                }
                Framing::UntilClose => {
                    proptest::prop_assert_eq!(count(hs, "transfer-encoding") + count(hs, "content-length"), 0);
                    proptest::prop_assert!(head.upstream_close);
                }
                Framing::Empty => proptest::prop_assert_eq!(count(hs, "transfer-encoding"), 0),
            }
        }

        /// Arbitrary bytes never panic and never claim more than given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..160),
                                       head_request in proptest::bool::ANY) {
            let mut prefixed = b"HTTP/1.1 200 OK\r\n".to_vec();
            prefixed.extend_from_slice(&bytes);
            for input in [&bytes[..], &prefixed[..]] {
                let mut out = Vec::new();
                let c = ForClient { head_request, cohort: None, close: false, faults: "" };
                if let Ok(Some(h)) = parse(input, c, &mut out) {
                    proptest::prop_assert!(h.len <= input.len());
                }
            }
        }
    }

    #[test]
    fn asks_the_client_to_close_when_it_asked_to() {
        let c = ForClient { close: true, ..client() };
        let text = rewrite("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", c).1;
        assert!(
            text.ends_with("content-length: 0\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
    }
}
