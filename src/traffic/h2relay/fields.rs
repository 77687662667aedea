//! Header blocks on the relay: decoding with a per-side HPACK decoder
//! ([`super::hpack`]), the RFC 9113 §8.2–8.3 checks every request, response
//! and trailer section must pass, and a stateless encoder (static table
//! and literals without indexing, no Huffman): every block the relay
//! writes stands alone, so the peers' dynamic table sizes never matter.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::hpack::Decoder;
#[cfg(test)]
use super::hpack::STATIC;

/// Why a header section is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// HPACK itself failed: the connection's decoder state is lost.
    Compression,
    /// Well-encoded but malformed (§8.1.1): a stream error.
    Malformed(&'static str),
}

/// A decoded request head.
#[derive(Debug, Default)]
pub(super) struct RequestHead {
    pub(super) method: Vec<u8>,
    pub(super) scheme: Option<Vec<u8>>,
    pub(super) authority: Option<Vec<u8>>,
    pub(super) path: Option<Vec<u8>>,
    pub(super) headers: HeaderMap,
    /// RFC 9113 §6.5.2 size: names, values and 32 bytes per field.
    pub(super) size: usize,
}

/// A decoded response head (`:status`) or trailer section (no status).
#[derive(Debug, Default)]
pub(super) struct ResponseHead {
    pub(super) status: Option<u16>,
    pub(super) headers: HeaderMap,
}

/// Header fields that make an HTTP/2 message malformed (§8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"proxy-connection"
            | b"keep-alive"
            | b"transfer-encoding"
            | b"upgrade"
    )
}

/// RFC 9110 token characters (what `http` accepts in a header name).
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// What §8.2 asks of a regular field, and what `http`'s header types
/// accept (a token name, a value of visible characters, spaces and tabs).
fn check_regular(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    if name.iter().any(u8::is_ascii_uppercase) {
        return Err("upper-case header name");
    }
    if connection_specific(name) {
        return Err("connection-specific header");
    }
    if name == b"te" && value != b"trailers" {
        return Err("te other than trailers");
    }
    if name.is_empty()
        || name.len() > u16::MAX as usize
        || !name.iter().all(|&b| TOKEN[b as usize])
    {
        return Err("invalid header name");
    }
    if !value.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t') {
        return Err("invalid header value");
    }
    Ok(())
}

/// Adds a regular field, checking what §8.2 asks of it.
fn regular(
    headers: &mut HeaderMap,
    name: &[u8],
    value: &[u8],
) -> Result<(), &'static str> {
    check_regular(name, value)?;
    let name = HeaderName::from_bytes(name).map_err(|_| "invalid header name")?;
    let value = HeaderValue::from_bytes(value).map_err(|_| "invalid header value")?;
    headers.append(name, value);
    Ok(())
}

/// Decodes one header section: each pseudo-header goes to `pseudo` (with
/// whether a regular field came before it), each regular field is checked
/// and added to `headers`. The first problem wins. Returns the §6.5.2 size.
fn section(
    decoder: &mut Decoder,
    block: &[u8],
    headers: &mut HeaderMap,
    mut pseudo: impl FnMut(&[u8], &[u8], bool) -> Option<&'static str>,
) -> Result<usize, Refused> {
    let mut size = 0;
    let mut problem: Option<&'static str> = None;
    let mut regular_seen = false;
    decoder
        .decode(block, |name, value| {
            size += name.len() + value.len() + 32;
            if problem.is_some() {
                return;
            }
            if name.first() == Some(&b':') {
                problem = pseudo(name, value, regular_seen);
                return;
            }
            regular_seen = true;
            problem = regular(headers, name, value).err();
        })
        .map_err(|_| Refused::Compression)?;
    match problem {
        Some(p) => Err(Refused::Malformed(p)),
        None => Ok(size),
    }
}

/// Decodes and checks a request header section.
pub(super) fn request(
    decoder: &mut Decoder,
    block: &[u8],
) -> Result<RequestHead, Refused> {
    let mut head = RequestHead::default();
    let mut method = false;
    let (method_value, scheme, authority, path) =
        (&mut head.method, &mut head.scheme, &mut head.authority, &mut head.path);
    head.size =
        section(decoder, block, &mut head.headers, |name, value, after_field| {
            let slot = match name {
                _ if after_field => return Some("pseudo-header after a field"),
                b":method" if !method => {
                    method = true;
                    *method_value = value.to_vec();
                    return None;
                }
                b":scheme" => &mut *scheme,
                b":authority" => &mut *authority,
                b":path" => &mut *path,
                _ => return Some("unknown or repeated pseudo-header"),
            };
            if slot.is_some() {
                return Some("repeated pseudo-header");
            }
            *slot = Some(value.to_vec());
            None
        })?;
    if !method || head.method.is_empty() {
        return Err(Refused::Malformed("no :method"));
    }
    if head.method == b"CONNECT" {
        // §8.5: only :method and :authority (extended CONNECT is not
        // offered, so no :protocol either).
        if head.scheme.is_some() || head.path.is_some() || head.authority.is_none() {
            return Err(Refused::Malformed(
                "CONNECT with :scheme/:path or no :authority",
            ));
        }
    } else {
        match (&head.scheme, &head.path) {
            (Some(_), Some(p)) if !p.is_empty() => {}
            _ => return Err(Refused::Malformed("missing :scheme or :path")),
        }
    }
    Ok(head)
}

/// Decodes and checks a response head (`trailers: false`) or a trailer
/// section of either direction (`trailers: true`, no pseudo-headers).
pub(super) fn response(
    decoder: &mut Decoder,
    block: &[u8],
    trailers: bool,
) -> Result<ResponseHead, Refused> {
    let mut head = ResponseHead::default();
    let status = &mut head.status;
    section(decoder, block, &mut head.headers, |name, value, after_field| {
        if trailers || after_field || status.is_some() {
            return Some("misplaced pseudo-header");
        }
        if name != b":status" {
            return Some("unknown pseudo-header");
        }
        match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
            Some(s @ 100..=999) if value.len() == 3 => {
                *status = Some(s);
                None
            }
            _ => Some("invalid :status"),
        }
    })?;
    if !trailers && head.status.is_none() {
        return Err(Refused::Malformed("no :status"));
    }
    Ok(head)
}

/// A response head or trailer section, checked like [`response`] and
/// encoded at once for the next hop (no header map on the way).
pub(super) struct EncodedResponse {
    pub(super) status: Option<u16>,
    pub(super) block: Vec<u8>,
}

/// Decodes, checks and re-encodes a response head (`trailers: false`) or
/// trailer section (`trailers: true`). A head is shaped as the general
/// path shapes it (`strip_hop_by_hop` and the cohort header): `te` is kept
/// only when it is a single `te: trailers`, and with `cohort` set, the
/// upstream's cohort header gives way to `cohort_header: cohort`.
pub(super) fn response_encoded(
    decoder: &mut Decoder,
    block: &[u8],
    trailers: bool,
    cohort: Option<(&[u8], &[u8])>,
) -> Result<EncodedResponse, Refused> {
    let mut out = Vec::with_capacity(block.len() * 2 + 64);
    let mut status = None;
    let mut problem: Option<&'static str> = None;
    let mut regular_seen = false;
    let mut te = 0usize;
    decoder
        .decode(block, |name, value| {
            if problem.is_some() {
                return;
            }
            if name.first() == Some(&b':') {
                if trailers || regular_seen || status.is_some() {
                    problem = Some("misplaced pseudo-header");
                } else if name != b":status" {
                    problem = Some("unknown pseudo-header");
                } else {
                    match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                        Some(s @ 100..=999) if value.len() == 3 => {
                            status = Some(s);
                            encode(&mut out, name, value);
                        }
                        _ => problem = Some("invalid :status"),
                    }
                }
                return;
            }
            regular_seen = true;
            if let Err(p) = check_regular(name, value) {
                problem = Some(p);
                return;
            }
            if trailers {
                encode(&mut out, name, value);
                return;
            }
            match cohort {
                _ if name == b"te" => te += 1,
                Some((cohort_name, _)) if name == cohort_name => {}
                _ => encode(&mut out, name, value),
            }
        })
        .map_err(|_| Refused::Compression)?;
    if let Some(p) = problem {
        return Err(Refused::Malformed(p));
    }
    if trailers {
        return Ok(EncodedResponse { status: None, block: out });
    }
    let Some(code) = status else { return Err(Refused::Malformed("no :status")) };
    if te == 1 {
        encode(&mut out, b"te", b"trailers");
    }
    if let (Some((n, v)), false) = (cohort, (100..200).contains(&code)) {
        encode(&mut out, n, v);
    }
    Ok(EncodedResponse { status, block: out })
}

/// HPACK static table entries the encoder indexes (RFC 7541 Appendix A):
/// full matches first, then names.
fn static_full(name: &[u8], value: &[u8]) -> Option<u8> {
    Some(match (name, value) {
        (b":method", b"GET") => 2,
        (b":method", b"POST") => 3,
        (b":path", b"/") => 4,
        (b":path", b"/index.html") => 5,
        (b":scheme", b"http") => 6,
        (b":scheme", b"https") => 7,
        (b":status", b"200") => 8,
        (b":status", b"204") => 9,
        (b":status", b"206") => 10,
        (b":status", b"304") => 11,
        (b":status", b"400") => 12,
        (b":status", b"404") => 13,
        (b":status", b"500") => 14,
        (b"accept-encoding", b"gzip, deflate") => 16,
        _ => return None,
    })
}

/// The first static table entry of `name` (Appendix A lists a name's
/// entries together). A match, not a scan: it runs for every field the
/// relay writes.
fn static_name(name: &[u8]) -> Option<u8> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix; `first` holds the
/// pattern bits above the prefix.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Encodes one field: indexed when the static table has it, otherwise a
/// literal without indexing (never touching the peer's dynamic table).
pub(super) fn encode(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if let Some(i) = static_full(name, value) {
        out.push(0x80 | i);
        return;
    }
    match static_name(name) {
        Some(i) => integer(out, 0x00, 4, usize::from(i)),
        None => {
            out.push(0x00);
            string(out, name);
        }
    }
    string(out, value);
}

/// Encodes every field of a header map.
pub(super) fn encode_map(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        encode(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            encode(&mut out, n.as_bytes(), v.as_bytes());
        }
        out
    }

    fn decode_all(b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        loona_hpack::Decoder::new().decode(b).expect("decodes")
    }

    #[test]
    fn static_names_are_the_first_entry_of_each_name_in_the_table() {
        for (i, (name, _)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(n, _)| n == name).expect("listed");
            assert_eq!(static_name(name), Some(first as u8 + 1), "{i}");
        }
        assert_eq!(static_name(b"x-custom"), None);
        assert_eq!(static_name(b""), None);
    }

    #[test]
    fn encoded_responses_are_shaped_like_the_general_path() {
        let upstream = block(&[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("x-chaos-cohort", "spoofed"),
            ("te", "trailers"),
            ("te", "trailers"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        let cohort = Some((&b"x-chaos-cohort"[..], &b"control"[..]));
        let r = response_encoded(&mut Decoder::new(4096), &upstream, false, cohort)
            .expect("valid");
        assert_eq!(r.status, Some(200));
        let got = decode_all(&r.block);
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            (":status", "200"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-chaos-cohort", "control"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(got, want);
        // Without a cohort the upstream's header passes; one te survives.
        let single =
            block(&[(":status", "204"), ("te", "trailers"), ("x-chaos-cohort", "u")]);
        let r = response_encoded(&mut Decoder::new(4096), &single, false, None)
            .expect("valid");
        let names: Vec<Vec<u8>> =
            decode_all(&r.block).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![b":status".to_vec(), b"x-chaos-cohort".to_vec(), b"te".to_vec()]
        );
        // Interim responses get no cohort header; trailers are not shaped.
        let interim = block(&[(":status", "103"), ("link", "</a>")]);
        let r = response_encoded(&mut Decoder::new(4096), &interim, false, cohort)
            .expect("ok");
        assert_eq!(decode_all(&r.block).len(), 2);
        let t = block(&[("grpc-status", "0"), ("x-chaos-cohort", "x")]);
        let r = response_encoded(&mut Decoder::new(4096), &t, true, cohort).expect("ok");
        assert_eq!((r.status, decode_all(&r.block).len()), (None, 2));
    }

    proptest! {
        /// The direct encoder accepts and refuses exactly what
        /// [`response`] does.
        #[test]
        fn encoded_responses_refuse_what_response_refuses(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just(":status".to_string()),
                    Just(":path".to_string()),
                    Just("te".to_string()),
                    Just("connection".to_string()),
                    "[a-zA-Z0-9 _:-]{0,6}",
                ], prop_oneof![Just("200".to_string()), Just("trailers".to_string()), "[ -~\t\x00\x7f]{0,4}"]),
                0..6,
            ),
            trailers in any::<bool>(),
        ) {
            let b: Vec<u8> = {
                let mut out = Vec::new();
                for (n, v) in &fields {
                    encode(&mut out, n.as_bytes(), v.as_bytes());
                }
                out
            };
            let via_map = response(&mut Decoder::new(4096), &b, trailers);
            let direct = response_encoded(&mut Decoder::new(4096), &b, trailers, None);
            match (via_map, direct) {
                (Ok(m), Ok(d)) => prop_assert_eq!(m.status, d.status),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|h| h.status), b.map(|h| h.status)),
            }
        }
    }

    #[test]
    fn the_encoder_round_trips_through_an_independent_decoder() {
        let long = "v".repeat(300);
        let fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "svc:8080"),
            (":path", "/a?b"),
            ("accept-encoding", "gzip, deflate"),
            ("x-custom", long.as_str()),
            ("cookie", "a=1"),
            ("", ""),
        ];
        let got = decode_all(&block(&fields));
        let want: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn requests_follow_the_pseudo_header_and_field_rules() {
        let ok =
            block(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("a", "1")]);
        let head = request(&mut Decoder::new(4096), &ok).expect("valid");
        assert_eq!(head.method, b"GET");
        assert_eq!(head.headers["a"], "1");
        for (fields, why) in [
            (vec![(":scheme", "http"), (":path", "/")], "no :method"),
            (vec![(":method", "GET"), (":path", "/")], "missing :scheme or :path"),
            (
                vec![(":method", "GET"), (":scheme", "http"), (":path", "")],
                "missing :scheme or :path",
            ),
            (
                vec![(":method", "GET"), ("a", "1"), (":scheme", "http"), (":path", "/")],
                "pseudo-header after a field",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                ],
                "unknown or repeated pseudo-header",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":path", "/"),
                    (":path", "/"),
                    (":scheme", "http"),
                ],
                "repeated pseudo-header",
            ),
            (
                vec![(":method", "GET"), (":status", "200")],
                "unknown or repeated pseudo-header",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    ("connection", "x"),
                ],
                "connection-specific header",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    ("te", "gzip"),
                ],
                "te other than trailers",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    ("Up", "x"),
                ],
                "upper-case header name",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    ("a", "x\ny"),
                ],
                "invalid header value",
            ),
            (
                vec![(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")],
                "CONNECT with :scheme/:path or no :authority",
            ),
        ] {
            let err = request(&mut Decoder::new(4096), &block(&fields)).unwrap_err();
            assert_eq!(err, Refused::Malformed(why), "{fields:?}");
        }
        let te = block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("te", "trailers"),
        ]);
        assert!(request(&mut Decoder::new(4096), &te).is_ok());
        assert_eq!(
            request(&mut Decoder::new(4096), &[0xff, 0xff, 0xff]).unwrap_err(),
            Refused::Compression
        );
    }

    #[test]
    fn responses_need_one_valid_status_and_trailers_none() {
        let mut d = Decoder::new(4096);
        let ok = response(&mut d, &block(&[(":status", "204"), ("x", "y")]), false)
            .expect("ok");
        assert_eq!(ok.status, Some(204));
        for fields in [
            vec![("x", "y")],
            vec![(":status", "20")],
            vec![(":status", "2000")],
            vec![(":status", "200"), (":status", "200")],
            vec![("x", "y"), (":status", "200")],
            vec![(":status", "200"), ("transfer-encoding", "chunked")],
        ] {
            assert!(response(&mut d, &block(&fields), false).is_err(), "{fields:?}");
        }
        assert!(response(&mut d, &block(&[("grpc-status", "0")]), true).is_ok());
        assert!(response(&mut d, &block(&[(":status", "200")]), true).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder or the checks, and a
        /// section that passes re-encodes into the same fields.
        #[test]
        fn any_block_is_refused_or_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::new(4096);
            if let Ok(head) = request(&mut d, &bytes) {
                let mut out = Vec::new();
                encode(&mut out, b":method", &head.method);
                encode_map(&mut out, &head.headers);
                let again = decode_all(&out);
                prop_assert_eq!(&again[0].1, &head.method);
                prop_assert_eq!(again.len(), 1 + head.headers.len());
            }
            let _ = response(&mut Decoder::new(4096), &bytes, false);
            let _ = response(&mut Decoder::new(4096), &bytes, true);
        }

        /// Any field list the encoder writes decodes to exactly that list.
        #[test]
        fn encoded_fields_decode_exactly(fields in proptest::collection::vec(
            ("[a-z:-]{0,12}|:method|:path|accept-encoding|cookie", "[ -~]{0,40}|GET|/|200"), 0..12)) {
            let mut out = Vec::new();
            for (n, v) in &fields {
                encode(&mut out, n.as_bytes(), v.as_bytes());
            }
            let want: Vec<(Vec<u8>, Vec<u8>)> =
                fields.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
            prop_assert_eq!(decode_all(&out), want);
        }
    }
}
