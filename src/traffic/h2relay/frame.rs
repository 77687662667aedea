//! HTTP/2 frames (RFC 9113 §4, §6) as far as the relay needs them: the
//! nine-byte frame header, the settings it reads and filters, and the few
//! frames it writes itself. Payloads it forwards are never rebuilt.

use std::borrow::Cow;

use bytes::{Buf, BytesMut};

pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEADER_LEN: usize = 9;
/// The smallest `SETTINGS_MAX_FRAME_SIZE`, and the default.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
const MAX_FRAME_LIMIT: u32 = (1 << 24) - 1;
pub(super) const MAX_WINDOW: u32 = (1 << 31) - 1;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
pub(super) mod code {
    pub(crate) const NO_ERROR: u32 = 0x0;
    pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
    pub(crate) const INTERNAL_ERROR: u32 = 0x2;
    pub(crate) const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub(crate) const STREAM_CLOSED: u32 = 0x5;
    pub(crate) const FRAME_SIZE_ERROR: u32 = 0x6;
    pub(crate) const REFUSED_STREAM: u32 = 0x7;
    pub(crate) const CANCEL: u32 = 0x8;
    pub(crate) const COMPRESSION_ERROR: u32 = 0x9;
    pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// Setting identifiers (RFC 9113 §6.5.2, RFC 8441 §3).
pub(super) mod setting {
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

/// The frame header at the start of `b` (at least nine bytes).
pub(super) fn parse_head(b: &[u8]) -> Head {
    Head {
        len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        // The reserved bit is ignored on receipt (§4.1).
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    }
}

pub(super) fn write_head(
    out: &mut Vec<u8>,
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
) {
    let l = len as u32;
    out.extend_from_slice(&[(l >> 16) as u8, (l >> 8) as u8, l as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub(super) fn rst_stream(out: &mut Vec<u8>, stream: u32, error: u32) {
    write_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&error.to_be_bytes());
}

pub(super) fn goaway(out: &mut Vec<u8>, last_stream: u32, error: u32) {
    write_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
}

pub(super) fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// A header block as HEADERS plus as many CONTINUATION frames as
/// `max_frame` needs.
pub(super) fn header_block(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        write_head(out, 0, HEADERS, flags | END_HEADERS, stream);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        write_head(out, chunk.len(), kind, flags, stream);
        out.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}

/// The header block fragment of a HEADERS payload, without padding and
/// priority fields; `None` if the padding is longer than the payload.
pub(super) fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if flags & PRIORITY_FLAG != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// Whether a DATA payload's padding fits in it.
pub(super) fn data_padding_ok(flags: u8, payload: &[u8]) -> bool {
    flags & PADDED == 0
        || payload.first().is_some_and(|&pad| usize::from(pad) < payload.len())
}

/// A DATA payload without its padding (checked by [`data_padding_ok`]).
pub(super) fn data_body(flags: u8, payload: &[u8]) -> &[u8] {
    if flags & PADDED == 0 {
        return payload;
    }
    let pad = payload.first().map_or(0, |&p| usize::from(p));
    payload.get(1..payload.len().saturating_sub(pad)).unwrap_or_default()
}

/// One setting of a SETTINGS payload (a multiple of six bytes).
pub(super) fn settings(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload.chunks_exact(6).map(|c| {
        (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    })
}

/// The connection error a SETTINGS value is (§6.5.2), if any.
pub(super) fn check_setting(id: u16, value: u32) -> Option<u32> {
    match id {
        setting::ENABLE_PUSH if value > 1 => Some(code::PROTOCOL_ERROR),
        setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
            Some(code::FLOW_CONTROL_ERROR)
        }
        setting::MAX_FRAME_SIZE
            if !(DEFAULT_MAX_FRAME as u32..=MAX_FRAME_LIMIT).contains(&value) =>
        {
            Some(code::PROTOCOL_ERROR)
        }
        _ => None,
    }
}

/// Hands every complete frame at the start of `buf` to `handle` (its
/// head and payload), then drops them from `buf`; stops at the first
/// error, or with `FRAME_SIZE_ERROR` at a frame longer than `max_len`.
pub(super) fn each(
    buf: &mut BytesMut,
    max_len: usize,
    mut handle: impl FnMut(Head, &[u8]) -> Result<(), u32>,
) -> Result<(), u32> {
    let mut at = 0;
    let result = loop {
        if buf.len() - at < HEADER_LEN {
            break Ok(());
        }
        let h = parse_head(&buf[at..]);
        if h.len > max_len {
            break Err(code::FRAME_SIZE_ERROR);
        }
        let end = at + HEADER_LEN + h.len;
        if buf.len() < end {
            break Ok(());
        }
        if let Err(c) = handle(h, &buf[at + HEADER_LEN..end]) {
            break Err(c);
        }
        at = end;
    };
    buf.advance(at);
    result
}

/// The frame order rules of both peers: SETTINGS first (§3.4: it
/// follows the preface), and nothing between a HEADERS frame and the
/// CONTINUATION frames it announced (§6.10).
pub(super) fn in_order(
    settings_seen: bool,
    continuation_due: bool,
    h: Head,
) -> Result<(), u32> {
    let first_ok = settings_seen || (h.kind == SETTINGS && h.flags & ACK == 0);
    if !first_ok || (continuation_due && h.kind != CONTINUATION) {
        return Err(code::PROTOCOL_ERROR);
    }
    Ok(())
}

/// A complete header block: its stream, END_STREAM, and the block.
pub(super) struct Block<'p> {
    pub(super) stream: u32,
    pub(super) end_stream: bool,
    pub(super) bytes: Cow<'p, [u8]>,
}

/// A header block still waiting for its CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// Assembles header blocks from HEADERS and CONTINUATION frames.
#[derive(Default)]
pub(super) struct Blocks {
    pending: Option<Pending>,
}

impl Blocks {
    /// A HEADERS frame announced CONTINUATION that has not ended yet.
    pub(super) fn continuation_due(&self) -> bool {
        self.pending.is_some()
    }

    /// A HEADERS or CONTINUATION frame: the complete block, or `None`
    /// while CONTINUATION is due. A block beyond `limit` bytes is a
    /// CONTINUATION flood (`ENHANCE_YOUR_CALM`).
    pub(super) fn feed<'p>(
        &mut self,
        h: Head,
        payload: &'p [u8],
        limit: usize,
    ) -> Result<Option<Block<'p>>, u32> {
        if h.kind == HEADERS {
            let fragment =
                headers_fragment(h.flags, payload).ok_or(code::PROTOCOL_ERROR)?;
            let end_stream = h.flags & END_STREAM != 0;
            if h.flags & END_HEADERS != 0 {
                let bytes = Cow::Borrowed(fragment);
                return Ok(Some(Block { stream: h.stream, end_stream, bytes }));
            }
            self.pending =
                Some(Pending { stream: h.stream, end_stream, block: fragment.to_vec() });
            return Ok(None);
        }
        let mut p = self.pending.take().ok_or(code::PROTOCOL_ERROR)?;
        if p.stream != h.stream {
            return Err(code::PROTOCOL_ERROR);
        }
        p.block.extend_from_slice(payload);
        if p.block.len() > limit {
            return Err(code::ENHANCE_YOUR_CALM);
        }
        if h.flags & END_HEADERS != 0 {
            let (stream, end_stream, bytes) =
                (p.stream, p.end_stream, Cow::Owned(p.block));
            return Ok(Some(Block { stream, end_stream, bytes }));
        }
        self.pending = Some(p);
        Ok(None)
    }
}

/// Checks a PING frame and writes its acknowledgement to `out` (a PING
/// that is itself one needs none).
pub(super) fn answer_ping(h: Head, payload: &[u8], out: &mut Vec<u8>) -> Result<(), u32> {
    if h.stream != 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if h.len != 8 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    if h.flags & ACK == 0 {
        write_head(out, 8, PING, ACK, 0);
        out.extend_from_slice(payload);
    }
    Ok(())
}

/// A payload's first four bytes as a big-endian number.
fn be32(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
}

/// Checks an RST_STREAM frame: its error code.
pub(super) fn read_rst_stream(h: Head, payload: &[u8]) -> Result<u32, u32> {
    if h.stream == 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if h.len != 4 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    Ok(be32(payload))
}

/// Checks a WINDOW_UPDATE frame: its increment (0 is the caller's to
/// refuse: a stream or a connection error depending on the stream).
pub(super) fn read_window_update(h: Head, payload: &[u8]) -> Result<u32, u32> {
    if h.len != 4 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    Ok(be32(payload) & 0x7fff_ffff)
}

/// Checks a GOAWAY frame: its last stream id.
pub(super) fn read_goaway(h: Head, payload: &[u8]) -> Result<u32, u32> {
    if h.stream != 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if h.len < 8 {
        return Err(code::FRAME_SIZE_ERROR);
    }
    Ok(be32(payload) & 0x7fff_ffff)
}

/// What a SETTINGS frame says that matters to the relay as a sender.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) max_streams: Option<u32>,
    pub(super) initial_window: Option<u32>,
    pub(super) max_frame: Option<usize>,
}

/// Checks a SETTINGS frame: `Ok(None)` for an acknowledgement, what it
/// sets otherwise, `Err` with a connection error's code.
pub(super) fn read_settings(h: Head, payload: &[u8]) -> Result<Option<Settings>, u32> {
    if h.stream != 0 {
        return Err(code::PROTOCOL_ERROR);
    }
    if h.flags & ACK != 0 {
        return if h.len == 0 { Ok(None) } else { Err(code::FRAME_SIZE_ERROR) };
    }
    if !h.len.is_multiple_of(6) {
        return Err(code::FRAME_SIZE_ERROR);
    }
    let mut set = Settings::default();
    for (id, value) in settings(payload) {
        if let Some(c) = check_setting(id, value) {
            return Err(c);
        }
        match id {
            setting::MAX_CONCURRENT_STREAMS => set.max_streams = Some(value),
            setting::INITIAL_WINDOW_SIZE => set.initial_window = Some(value),
            setting::MAX_FRAME_SIZE => set.max_frame = Some(value as usize),
            _ => {}
        }
    }
    Ok(Some(set))
}

/// Writes a SETTINGS frame of `pairs`.
pub(super) fn write_settings(out: &mut Vec<u8>, pairs: &[(u16, u32)]) {
    write_head(out, pairs.len() * 6, SETTINGS, 0, 0);
    for (id, value) in pairs {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_heads_round_trip_and_ignore_the_reserved_bit() {
        let mut out = Vec::new();
        write_head(&mut out, 70_000, HEADERS, END_HEADERS, 7);
        assert_eq!(out.len(), HEADER_LEN);
        let h = parse_head(&out);
        assert_eq!(h, Head { len: 70_000, kind: HEADERS, flags: END_HEADERS, stream: 7 });
        out[5] |= 0x80;
        assert_eq!(parse_head(&out).stream, 7);
    }

    #[test]
    fn large_header_blocks_continue_in_continuation_frames() {
        let block = vec![0x82u8; 40_000];
        let mut out = Vec::new();
        header_block(&mut out, 3, &block, true, DEFAULT_MAX_FRAME);
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut total = 0;
        while at < out.len() {
            let h = parse_head(&out[at..]);
            kinds.push((h.kind, h.flags));
            total += h.len;
            at += HEADER_LEN + h.len;
        }
        assert_eq!(total, block.len());
        assert_eq!(
            kinds,
            vec![(HEADERS, END_STREAM), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
        );
    }

    #[test]
    fn padding_and_priority_are_removed_and_bad_padding_refused() {
        // pad length 2, priority (5 bytes), fragment "ab", padding.
        let payload = [2, 0, 0, 0, 1, 16, b'a', b'b', 0, 0];
        assert_eq!(headers_fragment(PADDED | PRIORITY_FLAG, &payload), Some(&b"ab"[..]));
        assert_eq!(headers_fragment(PADDED, &[9, 1, 2]), None);
        assert_eq!(headers_fragment(PRIORITY_FLAG, &[0, 0]), None);
        assert!(data_padding_ok(PADDED, &[1, b'x', 0]));
        assert!(!data_padding_ok(PADDED, &[3, b'x', 0]));
        assert!(!data_padding_ok(PADDED, &[]));
        assert_eq!(data_body(PADDED, &[1, b'x', 0]), b"x");
        assert_eq!(data_body(0, &[1, b'x', 0]), &[1, b'x', 0]);
    }

    #[test]
    fn settings_values_out_of_range_are_connection_errors() {
        assert_eq!(check_setting(setting::ENABLE_PUSH, 2), Some(code::PROTOCOL_ERROR));
        assert_eq!(
            check_setting(setting::INITIAL_WINDOW_SIZE, 1 << 31),
            Some(code::FLOW_CONTROL_ERROR)
        );
        assert_eq!(
            check_setting(setting::MAX_FRAME_SIZE, 100),
            Some(code::PROTOCOL_ERROR)
        );
        assert_eq!(
            check_setting(setting::MAX_FRAME_SIZE, 1 << 24),
            Some(code::PROTOCOL_ERROR)
        );
        assert_eq!(check_setting(setting::MAX_FRAME_SIZE, 1 << 20), None);
        let mut out = Vec::new();
        write_settings(&mut out, &[(setting::MAX_FRAME_SIZE, 20_000), (0x99, 7)]);
        let h = parse_head(&out);
        let set = read_settings(h, &out[HEADER_LEN..]).expect("valid");
        assert_eq!(
            set,
            Some(Settings { max_frame: Some(20_000), ..Settings::default() })
        );
        let rst = Head { len: 4, kind: RST_STREAM, flags: 0, stream: 3 };
        assert_eq!(read_rst_stream(rst, &[0, 0, 0, 8]), Ok(code::CANCEL));
        assert_eq!(
            read_rst_stream(Head { stream: 0, ..rst }, &[0; 4]),
            Err(code::PROTOCOL_ERROR)
        );
        assert_eq!(
            read_rst_stream(Head { len: 5, ..rst }, &[0; 5]),
            Err(code::FRAME_SIZE_ERROR)
        );
        let wu = Head { len: 4, kind: WINDOW_UPDATE, flags: 0, stream: 0 };
        assert_eq!(
            read_window_update(wu, &[0x80, 0, 1, 0]),
            Ok(256),
            "reserved bit ignored"
        );
        assert_eq!(
            read_window_update(Head { len: 3, ..wu }, &[0; 3]),
            Err(code::FRAME_SIZE_ERROR)
        );
        let ack = Head { len: 0, kind: SETTINGS, flags: ACK, stream: 0 };
        assert_eq!(read_settings(ack, &[]), Ok(None));
        let bad = Head { len: 5, kind: SETTINGS, flags: 0, stream: 0 };
        assert_eq!(read_settings(bad, &[0; 5]), Err(code::FRAME_SIZE_ERROR));
        out.clear();
        write_settings(&mut out, &[(setting::ENABLE_PUSH, 0), (0x99, 7)]);
        assert_eq!(
            settings(&out[HEADER_LEN..]).collect::<Vec<_>>(),
            vec![(setting::ENABLE_PUSH, 0), (0x99, 7)]
        );
    }
}
