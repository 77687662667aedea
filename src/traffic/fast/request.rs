//! Client request heads on the fast path: which requests it takes, and the
//! head it sends upstream for them.
//!
//! It takes only the plain case: an HTTP/1.1 `GET` or `HEAD` in origin form
//! with exactly one `Host`, no body framing at all (`Content-Length`,
//! `Transfer-Encoding`), `Connection` at most `keep-alive`/`close`, and none
//! of the headers whose rules live in the general path (`Upgrade`, `TE`,
//! `Expect`, `Trailer`, `Keep-Alive`, `Proxy-Connection`, `baggage`, the
//! underscore cohort header, forwarding headers from a trusted peer), and an
//! experiment request only while every enabled fault is one the fast path
//! applies itself (latency, error, abort, reset). Every
//! other request, and every head `httparse` refuses or that exceeds the
//! size limit, goes to the general (hyper) path unchanged, which answers
//! 400/431 or forwards it under the full rules.

use super::super::config::ForwardedMode;
use super::super::forwarded::PeerForwarding;
use super::super::server::{cookie_in, Assignment};
use crate::cohort::{Cohort, COHORT_HEADER};

/// Most header lines the fast path parses; more go to the general path.
const MAX_HEADERS: usize = 64;

/// Per-proxy rules the planner needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) max_header_bytes: usize,
    /// The cohort key's header name (`header:NAME`), lower case.
    pub(crate) key_header: Option<&'a str>,
    /// The cohort key's cookie name (`cookie:NAME`).
    pub(crate) key_cookie: Option<&'a str>,
    pub(crate) forwarded: ForwardedMode,
    /// Which HTTP faults are enabled (they apply to experiment requests).
    pub(crate) faults: FaultMode,
}

/// The enabled HTTP faults, as far as the fast path is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultMode {
    None,
    /// Only kinds the fast path applies itself: latency, error, abort, reset.
    Fast,
    /// Some kind only the general path applies (malformed, grpc).
    General,
}

/// What to do with the bytes at the start of the client's buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Plan {
    /// The head is not complete yet.
    Partial,
    /// Forward it: the upstream head is in `out`.
    Forward(Forward),
    /// Hand the connection to the general path, with the cohort already
    /// drawn for this request (so it is not drawn twice).
    General(Option<Assignment>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Forward {
    /// Bytes of the request head in the client's buffer.
    pub(crate) len: usize,
    pub(crate) head_request: bool,
    /// The client sent `Connection: close`.
    pub(crate) close: bool,
    pub(crate) assignment: Assignment,
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Headers whose handling only the general path has.
fn needs_general(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
        "expect",
        "trailer",
        "keep-alive",
        "proxy-connection",
        "baggage",
        "x_chaos_cohort",
    ]
    .iter()
    .any(|h| is(name, h))
}

fn is_forwarding(name: &str) -> bool {
    is(name, "x-forwarded-for") || is(name, "x-forwarded-proto") || is(name, "forwarded")
}

/// Plans the request at the start of `buf`. `assign` draws the cohort from
/// the request's key bytes (`None`: no key in the request). On
/// [`Plan::Forward`] the upstream request head is appended to `out`.
pub(crate) fn plan(
    buf: &[u8],
    rules: Rules<'_>,
    peer: &PeerForwarding,
    assign: impl FnOnce(Option<&[u8]>) -> Assignment,
    out: &mut Vec<u8>,
) -> Plan {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= rules.max_header_bytes => n,
        Ok(httparse::Status::Partial) if buf.len() < rules.max_header_bytes => {
            return Plan::Partial
        }
        _ => return Plan::General(None),
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Plan::General(None);
    };
    let head_request = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Plan::General(None),
    };
    if !path.starts_with('/') {
        return Plan::General(None);
    }
    let headers = &*req.headers;
    let mut hosts = 0;
    let mut close = false;
    let mut forwarding = false;
    let mut key: Option<&[u8]> = None;
    for h in headers {
        if needs_general(h.name) {
            return Plan::General(None);
        }
        if is(h.name, "host") {
            hosts += 1;
        } else if is(h.name, "connection") {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                    return Plan::General(None);
                }
            }
        } else if is_forwarding(h.name) {
            forwarding = true;
        }
        if key.is_none() {
            if rules.key_header.is_some_and(|k| is(h.name, k)) {
                key = Some(h.value);
            } else if let Some(c) = rules.key_cookie.filter(|_| is(h.name, "cookie")) {
                key = cookie_in(h.value, c);
            }
        }
    }
    if hosts != 1 {
        // Missing or doubled: the general path answers 400.
        return Plan::General(None);
    }
    let assignment = assign(key);
    let experiment = assignment.cohort == Some(Cohort::Experiment);
    if (experiment && rules.faults == FaultMode::General)
        || (forwarding && rules.forwarded == ForwardedMode::Append && peer.trusted())
    {
        return Plan::General(Some(assignment));
    }
    let replace_forwarding = rules.forwarded != ForwardedMode::Off;

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        if is(h.name, "connection")
            || is(h.name, COHORT_HEADER)
            || (replace_forwarding && is_forwarding(h.name))
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    if let Some(c) = assignment.cohort {
        push_header(out, COHORT_HEADER.as_bytes(), c.as_str().as_bytes());
        push_header(out, b"baggage", super::super::baggage::member(c).as_bytes());
    }
    if replace_forwarding {
        let (xff, forwarded, proto) = peer.values();
        push_header(out, b"x-forwarded-for", xff);
        push_header(out, b"forwarded", forwarded);
        push_header(out, b"x-forwarded-proto", proto);
    }
    out.extend_from_slice(b"\r\n");
    Plan::Forward(Forward { len, head_request, close, assignment })
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn rules() -> Rules<'static> {
        Rules {
            max_header_bytes: 1024,
            key_header: Some("x-user-id"),
            key_cookie: None,
            forwarded: ForwardedMode::Append,
            faults: FaultMode::None,
        }
    }

    fn peer(trusted: bool) -> PeerForwarding {
        let addr: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let nets = if trusted { vec!["10.0.0.0/8".parse().unwrap()] } else { vec![] };
        PeerForwarding::new(addr, "http", &nets)
    }

    fn fixed(cohort: Option<Cohort>) -> impl FnOnce(Option<&[u8]>) -> Assignment {
        move |_| Assignment { cohort, key_position: Some(0.5) }
    }

    fn run(raw: &str, r: Rules<'_>, cohort: Option<Cohort>) -> (Plan, String) {
        let mut out = Vec::new();
        let p = plan(raw.as_bytes(), r, &peer(false), fixed(cohort), &mut out);
        (p, String::from_utf8(out).unwrap())
    }

    #[test]
    fn forwards_a_plain_get_with_cohort_and_forwarding_headers() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\n\
                   x-chaos-cohort: control\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\n\r\nNEXT";
        let (p, text) = run(raw, rules(), Some(Cohort::Experiment));
        let Plan::Forward(f) = p else { panic!("{p:?}") };
        assert_eq!(f.len, raw.len() - 4);
        assert!(!f.close && !f.head_request);
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\
             x-chaos-cohort: experiment\r\nbaggage: chaos.cohort=experiment\r\n\
             x-forwarded-for: 10.0.0.7\r\nforwarded: for=10.0.0.7;proto=http\r\n\
             x-forwarded-proto: http\r\n\r\n"
        );
        let (_, text) =
            run(raw, Rules { forwarded: ForwardedMode::Off, ..rules() }, None);
        assert!(text.contains("X-Forwarded-For: 6.6.6.6\r\n"), "{text}");
        assert!(!text.contains("x-chaos-cohort") && !text.contains("baggage"), "{text}");
    }

    #[test]
    fn sends_everything_else_to_the_general_path() {
        for raw in [
            "POST / HTTP/1.1\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nbaggage: k=v\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nx_chaos_cohort: control\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n",
        ] {
            let (p, out) = run(raw, rules(), None);
            assert_eq!(p, Plan::General(None), "{raw:?}");
            assert!(out.is_empty());
        }
        // Too big, complete or not.
        let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx: {}\r\n\r\n", "y".repeat(2000));
        assert_eq!(run(&big, rules(), None).0, Plan::General(None));
        assert_eq!(run(&big[..1500], rules(), None).0, Plan::General(None));
        assert_eq!(run(&big[..500], rules(), None).0, Plan::Partial);
    }

    #[test]
    fn experiment_requests_under_faults_and_trusted_forwarding_keep_their_draw() {
        let raw = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let r = Rules { faults: FaultMode::General, ..rules() };
        let (p, _) = run(raw, r, Some(Cohort::Experiment));
        assert!(
            matches!(p, Plan::General(Some(a)) if a.cohort == Some(Cohort::Experiment))
        );
        assert!(matches!(run(raw, r, Some(Cohort::Control)).0, Plan::Forward(_)));
        let raw = "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.2.3.4\r\n\r\n";
        let mut out = Vec::new();
        let p = plan(raw.as_bytes(), rules(), &peer(true), fixed(None), &mut out);
        assert!(matches!(p, Plan::General(Some(_))), "{p:?}");
    }

    const NAMES: [&str; 19] = [
        "host",
        "Host",
        "connection",
        "te",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "x-chaos-cohort",
        "x_chaos_cohort",
        "x-forwarded-for",
        "forwarded",
        "cookie",
        "x-user-id",
        "accept",
        "baggage",
        "keep-alive",
        "expect",
        "trailer",
        "proxy-connection",
    ];

    /// Header names the upstream head may carry at most this often.
    fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
        headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count()
    }

    proptest::proptest! {
        /// The fuzz target of the planner: random heads built from the
        /// headers that matter, plus arbitrary bytes. A forwarded head is
        /// always a well-formed HTTP/1.1 request with one Host, none of the
        /// hop-by-hop or framing headers, and our cohort header once at most.
        #[test]
        fn forwarded_heads_are_well_formed(
            method in proptest::sample::select(vec!["GET", "HEAD", "POST", "get"]),
            path in "/[a-z0-9?=&%.]{0,12}",
            version in proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
            headers in proptest::collection::vec(
                (proptest::sample::select(NAMES.to_vec()),
                 proptest::prop_oneof!["[ -~]{0,16}", proptest::strategy::Just("close".to_string()),
                                        proptest::strategy::Just("keep-alive".to_string())]),
                0..7),
            cohort in proptest::option::of(proptest::sample::select(
                vec![Cohort::Control, Cohort::Experiment])),
            faults in proptest::bool::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        ) {
            let mut raw = format!("{method} {path} {version}\r\n");
            for (n, v) in &headers {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let head_len = raw.len();
            let mut bytes = raw.into_bytes();
            bytes.extend_from_slice(&tail);
            let mode = if faults { FaultMode::General } else { FaultMode::Fast };
            let r = Rules { faults: mode, ..rules() };
            let mut out = Vec::new();
            let p = plan(&bytes, r, &peer(false), fixed(cohort), &mut out);
            let Plan::Forward(f) = p else {
                proptest::prop_assert!(out.is_empty());
                return Ok(());
            };
            proptest::prop_assert_eq!(f.len, head_len);
            proptest::prop_assert!(!(faults && cohort == Some(Cohort::Experiment)));
            let mut storage = [httparse::EMPTY_HEADER; 80];
            let mut req = httparse::Request::new(&mut storage);
            proptest::prop_assert_eq!(req.parse(&out), Ok(httparse::Status::Complete(out.len())));
            proptest::prop_assert_eq!(req.version, Some(1));
            proptest::prop_assert_eq!(req.method, Some(method));
            proptest::prop_assert_eq!(req.path, Some(path.as_str()));
            let hs = &*req.headers;
            proptest::prop_assert_eq!(count(hs, "host"), 1);
            for gone in ["connection", "te", "upgrade", "content-length", "transfer-encoding",
                         "keep-alive", "proxy-connection", "expect", "trailer", "x_chaos_cohort"] {
                proptest::prop_assert_eq!(count(hs, gone), 0, "{}", gone);
            }
            proptest::prop_assert_eq!(count(hs, "x-chaos-cohort"), usize::from(cohort.is_some()));
            proptest::prop_assert_eq!(count(hs, "baggage"), usize::from(cohort.is_some()));
            proptest::prop_assert_eq!(count(hs, "x-forwarded-for"), 1);
        }

        /// Arbitrary bytes never panic, and only a complete head is forwarded.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(
            proptest::prop_oneof![proptest::strategy::Just(b'\r'), proptest::strategy::Just(b'\n'),
                                  proptest::strategy::Just(b' '), proptest::strategy::Just(b':'),
                                  proptest::num::u8::ANY], 0..120)) {
            let mut prefixed = b"GET / HTTP/1.1\r\nhost: a\r\n".to_vec();
            prefixed.extend_from_slice(&bytes);
            for input in [&bytes[..], &prefixed[..]] {
                let mut out = Vec::new();
                if let Plan::Forward(f) = plan(input, rules(), &peer(false), fixed(None), &mut out) {
                    proptest::prop_assert!(f.len <= input.len());
                    // A head ends in an empty line. Its last header line may
                    // end in a bare LF (RFC 9112 §2.2 lets a recipient accept
                    // one, and httparse, like hyper, does): "#:\n\r\n".
                    let head = &input[..f.len];
                    proptest::prop_assert!(head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n"));
                }
            }
        }
    }

    #[test]
    fn finds_the_key_in_a_header_or_a_cookie() {
        let raw =
            "GET / HTTP/1.1\r\nhost: a\r\nX-User-Id: u1\r\ncookie: a=1; sid=s9\r\n\r\n";
        let mut seen = Vec::new();
        let mut out = Vec::new();
        plan(
            raw.as_bytes(),
            rules(),
            &peer(false),
            |k| {
                seen.push(k.map(<[u8]>::to_vec));
                Assignment { cohort: None, key_position: None }
            },
            &mut out,
        );
        let r = Rules { key_header: None, key_cookie: Some("sid"), ..rules() };
        plan(
            raw.as_bytes(),
            r,
            &peer(false),
            |k| {
                seen.push(k.map(<[u8]>::to_vec));
                Assignment { cohort: None, key_position: None }
            },
            &mut out,
        );
        assert_eq!(seen, [Some(b"u1".to_vec()), Some(b"s9".to_vec())]);
    }
}
