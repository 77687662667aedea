//! HPACK decoding (RFC 7541) for the relay: one decoder per connection
//! side, holding that side's dynamic table. Huffman strings go through the
//! vendored `h2` decoder ([`super::huffman`]). Differentially tested
//! against `loona-hpack` (a dev-dependency) on random encoder output and
//! on arbitrary bytes.

use std::collections::VecDeque;

use super::huffman;

/// RFC 7541 Appendix A.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The peer broke HPACK: a connection error (COMPRESSION_ERROR).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CompressionError;

/// One side's decoding context.
pub(crate) struct Decoder {
    /// Newest first.
    dynamic: VecDeque<Entry>,
    size: usize,
    max: usize,
    /// What our SETTINGS_HEADER_TABLE_SIZE allows (the default 4,096).
    allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);
/// Decoded fields, in order (tests).
#[cfg(test)]
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

impl Decoder {
    pub(crate) fn new(allowed: usize) -> Decoder {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            max: allowed,
            allowed,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes one complete header block, calling `field` for each field
    /// in order.
    pub(crate) fn decode(
        &mut self,
        mut b: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), CompressionError> {
        let mut at_start = true;
        while let Some(&first) = b.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut b, 7)?;
                let (n, v) = self.entry(index)?;
                field(n, v);
            } else if first & 0xe0 == 0x20 {
                // §4.2: size updates only at the start of a block.
                if !at_start {
                    return Err(CompressionError);
                }
                let max = integer(&mut b, 5)?;
                if max > self.allowed {
                    return Err(CompressionError);
                }
                self.max = max;
                self.evict(0);
                continue;
            } else {
                let (prefix, index_it) =
                    if first & 0x40 != 0 { (6, true) } else { (4, false) };
                let index = integer(&mut b, prefix)?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                name.clear();
                value.clear();
                let read = (|| {
                    if index == 0 {
                        string(&mut b, &mut name)?;
                    } else {
                        name.extend_from_slice(self.entry(index)?.0);
                    }
                    string(&mut b, &mut value)
                })();
                if read.is_ok() {
                    field(&name, &value);
                    if index_it {
                        self.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                read?;
            }
            at_start = false;
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), CompressionError> {
        match index {
            0 => Err(CompressionError),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .dynamic
                .get(index - 62)
                .map(|(n, v)| (&**n, &**v))
                .ok_or(CompressionError),
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // §4.4: an entry larger than the table empties it and is not added.
        self.evict(size.min(self.max + 1));
        if size <= self.max {
            self.dynamic.push_front((name.into(), value.into()));
            self.size += size;
        }
    }

    /// Evicts until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// §5.1 integer with an `n`-bit prefix, advancing `b`.
fn integer(b: &mut &[u8], n: u32) -> Result<usize, CompressionError> {
    let mask = (1u8 << n) - 1;
    let (&first, rest) = b.split_first().ok_or(CompressionError)?;
    *b = rest;
    let mut v = usize::from(first & mask);
    if v < usize::from(mask) {
        return Ok(v);
    }
    // Bounded: no index or length here needs more than 28 bits.
    for shift in (0..28).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(CompressionError)?;
        *b = rest;
        v += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CompressionError)
}

/// §5.2 string literal, appended to `out`.
fn string(b: &mut &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
    let huffman = b.first().is_some_and(|f| f & 0x80 != 0);
    let len = integer(b, 7)?;
    if len > b.len() {
        return Err(CompressionError);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    if huffman {
        huffman::decode(s, out).map_err(|_| CompressionError)
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(d: &mut Decoder, b: &[u8]) -> Result<Fields, CompressionError> {
        let mut out = Vec::new();
        d.decode(b, |n, v| out.push((n.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    #[test]
    fn decodes_the_rfc_examples_with_huffman_and_the_dynamic_table() {
        // RFC 7541 C.4: three requests, Huffman-coded, sharing one table.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b,
                0xa0, 0xab, 0x90, 0xf4, 0xff,
            ],
            &[0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9,
                0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut d = Decoder::new(4096);
        let got: Vec<_> =
            blocks.iter().map(|b| ours(&mut d, b).expect("valid")).collect();
        let pairs = |v: &[(Vec<u8>, Vec<u8>)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, x)| {
                    (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(x).into())
                })
                .collect()
        };
        assert_eq!(pairs(&got[1])[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(pairs(&got[2])[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(pairs(&got[2])[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn refuses_bad_indexes_late_size_updates_and_oversized_tables() {
        let mut d = Decoder::new(4096);
        assert!(ours(&mut d, &[0x80]).is_err());
        assert!(ours(&mut d, &[0xbe]).is_err());
        assert!(ours(&mut d, &[0x82, 0x20]).is_err());
        assert!(ours(&mut d, &[0x3f, 0xe2, 0x1f]).is_err());
        assert!(ours(&mut d, &[0x3f, 0xe1, 0x1f]).is_ok());
        assert!(ours(&mut d, &[0x20, 0x82]).is_ok());
        assert!(ours(&mut d, &[0x0f, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(ours(&mut d, &[0x00, 0x05, b'a']).is_err());
    }

    proptest! {
        /// Whatever loona-hpack's encoder writes (dynamic table included),
        /// both decoders read the same fields.
        #[test]
        fn agrees_with_loona_on_encoder_output(blocks in proptest::collection::vec(
            proptest::collection::vec(("[a-z-]{1,10}|:path|cookie|content-type", "[ -~]{0,30}"), 0..8), 1..6)) {
            let mut enc = loona_hpack::Encoder::new();
            let mut theirs = loona_hpack::Decoder::new();
            let mut mine = Decoder::new(4096);
            for fields in &blocks {
                let b = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
                let want = theirs.decode(&b).expect("loona decodes its own output");
                prop_assert_eq!(ours(&mut mine, &b).expect("ours decodes"), want);
            }
        }

        /// On arbitrary bytes ours never panics, and whatever both accept
        /// decodes the same.
        #[test]
        fn agrees_with_loona_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mine = ours(&mut Decoder::new(4096), &b);
            let mut l = loona_hpack::Decoder::new();
            l.set_max_allowed_table_size(4096);
            if let (Ok(m), Ok(t)) = (mine, l.decode(&b)) {
                prop_assert_eq!(m, t);
            }
        }
    }
}
