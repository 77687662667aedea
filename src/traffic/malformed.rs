//! Damaging a response for the malformed-payload faults. Works on a
//! collected body (faulted responses are the only ones the proxy buffers)
//! and keeps Content-Length consistent, so the damage is in the payload,
//! not in the HTTP framing (abort/reset cover broken framing).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};

use super::assign::random_u64;
use super::fault::MalformedMode;

/// Size an oversized body is padded to.
pub const OVERSIZED_BYTES: usize = 8 * 1024 * 1024;

/// Applies `mode` to a response's headers and body, returning the new body.
pub fn damage(mode: MalformedMode, headers: &mut HeaderMap, body: Bytes) -> Bytes {
    let out = match mode {
        MalformedMode::Truncate => body.slice(..body.len() / 2),
        MalformedMode::FlipBytes => flip_bytes(&body),
        MalformedMode::JsonWrongType => json_wrong_type(&body),
        MalformedMode::WrongContentType => {
            let is_json = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            let wrong =
                if is_json { "text/html; charset=utf-8" } else { "application/json" };
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(wrong));
            body
        }
        MalformedMode::MissingContentType => {
            headers.remove(CONTENT_TYPE);
            body
        }
        MalformedMode::Oversized => {
            // Trailing whitespace keeps JSON parseable: the damage is size.
            let mut b = BytesMut::with_capacity(OVERSIZED_BYTES.max(body.len()));
            b.extend_from_slice(&body);
            b.resize(OVERSIZED_BYTES.max(body.len()), b' ');
            b.freeze()
        }
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    out
}

fn flip_bytes(body: &[u8]) -> Bytes {
    let mut b = body.to_vec();
    if b.is_empty() {
        return Bytes::from_static(b"\xff");
    }
    let len = b.len() as u64;
    let flips = (len / 64).max(1);
    for _ in 0..flips {
        let i = (random_u64() % len) as usize;
        b[i] = !b[i];
    }
    Bytes::from(b)
}

fn json_wrong_type(body: &[u8]) -> Bytes {
    use serde_json::Value;
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        // Not JSON: any consumer expecting some structure gets a number.
        return Bytes::from_static(b"0");
    };
    fn wrong(v: &Value) -> Value {
        match v {
            Value::String(_) => Value::from(12345),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Null => Value::from(0),
            Value::Array(_) | Value::Object(_) => Value::String("chaos".into()),
        }
    }
    // Mutate the first leaf, depth-first: the field a client most likely
    // reads first.
    fn first_leaf(v: &mut Value) -> bool {
        match v {
            Value::Object(m) => match m.iter_mut().next() {
                Some((_, child)) => {
                    if !first_leaf(child) {
                        *child = wrong(child);
                    }
                    true
                }
                None => false,
            },
            Value::Array(a) => match a.first_mut() {
                Some(child) => {
                    if !first_leaf(child) {
                        *child = wrong(child);
                    }
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
    if !first_leaf(&mut v) {
        v = wrong(&v);
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| b"0".to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    #[test]
    fn json_wrong_type_changes_the_first_field_type_only() {
        let mut h = json_headers();
        let out = damage(
            MalformedMode::JsonWrongType,
            &mut h,
            Bytes::from_static(br#"{"a":{"id":7},"b":"x"}"#),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"]["id"], serde_json::json!("7"));
        assert_eq!(v["b"], serde_json::json!("x"));
        assert_eq!(h[CONTENT_LENGTH], out.len().to_string().as_str());
    }

    #[test]
    fn every_mode_changes_the_body_or_its_content_type() {
        let body = Bytes::from_static(br#"{"name":"widget","price":10}"#);
        for mode in MalformedMode::ALL {
            let mut h = json_headers();
            let out = damage(mode, &mut h, body.clone());
            let ct = h.get(CONTENT_TYPE).cloned();
            assert!(
                out != body || ct != Some(HeaderValue::from_static("application/json")),
                "{mode:?} left the response intact"
            );
        }
    }

    #[test]
    fn truncation_and_oversize_keep_content_length_honest() {
        let body = Bytes::from(vec![b'a'; 100]);
        let mut h = HeaderMap::new();
        assert_eq!(damage(MalformedMode::Truncate, &mut h, body.clone()).len(), 50);
        assert_eq!(h[CONTENT_LENGTH], "50");
        let big = damage(MalformedMode::Oversized, &mut h, body);
        assert_eq!(big.len(), OVERSIZED_BYTES);
        assert_eq!(h[CONTENT_LENGTH], OVERSIZED_BYTES.to_string().as_str());
    }
}
