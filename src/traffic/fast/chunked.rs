//! A strict, incremental decoder for `Transfer-Encoding: chunked` response
//! bodies (RFC 9112 §7.1) that re-encodes what it decodes: the fast path
//! never forwards an upstream's chunk framing byte for byte, so a framing
//! trick the upstream (or something in front of it) plays cannot reach the
//! client. Chunk extensions are dropped; trailer fields are validated and
//! kept or dropped as the caller says (a client that did not send
//! `TE: trailers` does not get them, as on the general path, where hyper
//! sends trailers only then).
//!
//! Strict where parsers disagree: the size is hex digits only (at most 15,
//! so it fits in 60 bits), optional spaces/tabs only right before `;` or the
//! line end, every line ends in CRLF (a bare LF or CR is an error).

/// Longest chunk extension accepted (they are dropped anyway).
const MAX_EXTENSION: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;
const MAX_SIZE_DIGITS: u8 = 15;

/// Why an upstream's chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size too large")]
    TooLarge,
    #[error("chunk extension too long")]
    Extension,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("invalid trailer section")]
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a size line.
    Size {
        size: u64,
        digits: u8,
    },
    /// Spaces/tabs after the digits: only `;` or CR may follow.
    SizeSpace {
        size: u64,
    },
    /// Inside `;ext...` up to CR.
    Extension {
        size: u64,
        len: usize,
    },
    /// CR seen, LF expected.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// CR seen inside a trailer line.
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

/// Decodes one chunked body, fed in pieces.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    trailers: Vec<u8>,
    keep_trailers: bool,
}

impl ChunkedDecoder {
    /// A decoder for one body; `keep_trailers`: forward its trailer fields.
    pub(crate) fn new(keep_trailers: bool) -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            trailers: Vec::new(),
            keep_trailers,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Appends one chunk (size line, data, CRLF) to `out`.
fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

impl ChunkedDecoder {
    /// Whether the whole body (last chunk and trailers) has been decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as belongs to the body and appends the
    /// re-encoded chunks to `out`; returns how many bytes it consumed
    /// (fewer than `input.len()` only once the body is complete).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match (hex(b), b) {
                    (Some(d), _) if digits < MAX_SIZE_DIGITS => {
                        State::Size { size: size << 4 | d, digits: digits + 1 }
                    }
                    (Some(_), _) => return Err(ChunkError::TooLarge),
                    (None, _) if digits == 0 => return Err(ChunkError::Size),
                    (None, b' ' | b'\t') => State::SizeSpace { size },
                    (None, b';') => State::Extension { size, len: 0 },
                    (None, b'\r') => State::SizeLf { size },
                    (None, _) => return Err(ChunkError::Size),
                },
                State::SizeSpace { size } => match b {
                    b' ' | b'\t' => State::SizeSpace { size },
                    b';' => State::Extension { size, len: 0 },
                    b'\r' => State::SizeLf { size },
                    _ => return Err(ChunkError::Size),
                },
                State::Extension { size, len } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(ChunkError::Size),
                    _ if len >= MAX_EXTENSION => return Err(ChunkError::Extension),
                    _ => State::Extension { size, len: len + 1 },
                },
                State::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => State::TrailerStart,
                    (b'\n', left) => State::Data { left },
                    _ => return Err(ChunkError::Size),
                },
                State::Data { left } => {
                    let avail = (input.len() - i) as u64;
                    let take = left.min(avail) as usize;
                    encode_chunk(&input[i..i + take], out);
                    i += take;
                    let left = left - take as u64;
                    self.state =
                        if left == 0 { State::DataCr } else { State::Data { left } };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
                State::DataCr | State::DataLf => return Err(ChunkError::DataEnd),
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' | b' ' | b'\t' | b':' => return Err(ChunkError::Trailer),
                    _ => {
                        self.push_trailer(b)?;
                        State::TrailerLine
                    }
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' | 0 => return Err(ChunkError::Trailer),
                    _ => {
                        self.push_trailer(b)?;
                        State::TrailerLine
                    }
                },
                State::TrailerLf if b == b'\n' => {
                    self.push_trailer(b'\r')?;
                    self.push_trailer(b'\n')?;
                    State::TrailerStart
                }
                State::TrailerLf => return Err(ChunkError::Trailer),
                State::EndLf if b == b'\n' => {
                    if !trailer_lines_ok(&self.trailers) {
                        return Err(ChunkError::Trailer);
                    }
                    out.extend_from_slice(b"0\r\n");
                    if self.keep_trailers {
                        out.extend_from_slice(&self.trailers);
                    }
                    out.extend_from_slice(b"\r\n");
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::EndLf => return Err(ChunkError::Trailer),
                State::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= MAX_TRAILERS {
            return Err(ChunkError::Trailer);
        }
        self.trailers.push(b);
        Ok(())
    }
}

/// Every trailer line is `name: value` with a token name.
fn trailer_lines_ok(section: &[u8]) -> bool {
    section.split(|b| *b == b'\n').filter(|l| !l.is_empty()).all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|b| *b == b':') {
            Some(colon) if colon > 0 => line[..colon].iter().all(|b| is_token(*b)),
            _ => false,
        }
    })
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in `pieces`-sized parts; returns the re-encoded
    /// body and how much was consumed.
    fn run(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(true);
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece.max(1)) {
            let n = d.decode(part, &mut out)?;
            used += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, used, d.is_done()))
    }

    /// The data of a chunked body (assumes it is valid).
    fn data_of(encoded: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut rest = encoded;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                return data;
            }
            data.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }

    #[test]
    fn decodes_and_re_encodes_with_trailers_and_stops_at_the_end() {
        let body = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 7\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (out, used, done) = run(body, piece).unwrap();
            assert!(done);
            assert_eq!(used, body.len() - 4, "piece {piece}");
            assert_eq!(data_of(&out), b"hello world");
            assert!(out.ends_with(b"0\r\nx-sum: 7\r\n\r\n"), "{out:?}");
        }
        let mut d = ChunkedDecoder::new(false);
        let mut out = Vec::new();
        d.decode(body, &mut out).unwrap();
        assert!(d.is_done());
        assert!(out.ends_with(b"world\r\n0\r\n\r\n"), "{out:?}");
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"1000000000000000\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nx: y\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(run(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(run(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Accepted: spaces before the line end or `;`, upper-case hex.
        assert!(run(b"5 \r\nhello\r\nA\t;x\r\n0123456789\r\n0\r\n\r\n", 1).unwrap().2);
    }

    proptest! {
        /// Any data cut into any chunks, fed in any piece size, decodes to
        /// the same data and a valid encoding.
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..600),
                       cuts in proptest::collection::vec(1usize..97, 1..12),
                       piece in 1usize..50) {
            let mut enc = Vec::new();
            let mut rest = &data[..];
            let mut k = 0;
            while !rest.is_empty() {
                let n = cuts[k % cuts.len()].min(rest.len());
                encode_chunk(&rest[..n], &mut enc);
                rest = &rest[n..];
                k += 1;
            }
            enc.extend_from_slice(b"0\r\n\r\n");
            let (out, used, done) = run(&enc, piece).unwrap();
            prop_assert!(done);
            prop_assert_eq!(used, enc.len());
            prop_assert_eq!(data_of(&out), data);
        }

        /// The fuzz target: arbitrary bytes never panic, never consume more
        /// than given, and whatever is accepted as a complete body
        /// re-encodes to a body that decodes again to the same output.
        #[test]
        fn arbitrary_input_is_handled(input in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'5'), Just(b';'),
                        Just(b':'), Just(b'a'), Just(b' '), any::<u8>()], 0..200),
            piece in 1usize..20) {
            if let Ok((out, used, done)) = run(&input, piece) {
                prop_assert!(used <= input.len());
                if done {
                    // Fed whole, every chunk comes out as it went in.
                    let (again, used2, done2) = run(&out, out.len()).unwrap();
                    prop_assert!(done2);
                    prop_assert_eq!(used2, out.len());
                    prop_assert_eq!(again, out);
                }
            }
        }
    }
}
