//! A stream's body on its way to one peer of the relay: the bytes that
//! wait for that peer's flow-control windows, then how the body ends
//! (END_STREAM or trailers). Both hops use it: request bodies toward the
//! upstream ([`super::mux`]), response bodies toward the client.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::frame;

/// What ends a body after its queued bytes.
pub(super) enum End {
    Data,
    /// An encoded trailer section.
    Trailers(Vec<u8>),
}

/// What a body may be written within.
pub(super) struct Room<'a> {
    /// The peer's window for the stream.
    pub(super) stream: &'a mut i64,
    /// The peer's window for the connection.
    pub(super) conn: &'a mut i64,
    /// The peer's MAX_FRAME_SIZE.
    pub(super) max_frame: usize,
    /// Stop once the output holds this much.
    pub(super) out_limit: usize,
}

#[derive(Default)]
pub(super) struct Body {
    queue: VecDeque<Bytes>,
    end: Option<End>,
    /// The end went out.
    pub(super) ended: bool,
}

impl Body {
    /// A body that ended before it began (a request without one).
    pub(super) fn ended() -> Body {
        Body { ended: true, ..Body::default() }
    }

    pub(super) fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.queue.push_back(data);
        }
    }

    pub(super) fn end(&mut self, end: End) {
        self.end = Some(end);
    }

    /// Something waits to be written.
    pub(super) fn waiting(&self) -> bool {
        !self.queue.is_empty() || self.end.is_some()
    }

    /// Its end arrived and waits behind queued bytes or the windows.
    pub(super) fn end_waiting(&self) -> bool {
        self.end.is_some()
    }

    /// Writes DATA frames of stream `id` to `out` as far as `room`
    /// allows, then the end once every byte before it is out (END_STREAM
    /// on the last DATA frame when it can). Returns the bytes written.
    pub(super) fn write(&mut self, out: &mut Vec<u8>, id: u32, room: Room<'_>) -> u32 {
        let mut written = 0u32;
        while out.len() < room.out_limit {
            let only = self.queue.len() == 1;
            let Some(front) = self.queue.front_mut() else { break };
            let window = (*room.stream).min(*room.conn).max(0) as usize;
            let n = front.len().min(window).min(room.max_frame);
            if n == 0 {
                break;
            }
            let last = n == front.len() && only && matches!(self.end, Some(End::Data));
            let flags = if last { frame::END_STREAM } else { 0 };
            frame::write_head(out, n, frame::DATA, flags, id);
            out.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.queue.pop_front();
            }
            *room.stream -= n as i64;
            *room.conn -= n as i64;
            written += n as u32;
            if last {
                self.end = None;
                self.ended = true;
            }
        }
        if self.queue.is_empty() {
            match self.end.take() {
                Some(End::Data) => {
                    frame::write_head(out, 0, frame::DATA, frame::END_STREAM, id);
                    self.ended = true;
                }
                Some(End::Trailers(block)) => {
                    frame::header_block(out, id, &block, true, room.max_frame);
                    self.ended = true;
                }
                None => {}
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room<'a>(stream: &'a mut i64, conn: &'a mut i64) -> Room<'a> {
        Room { stream, conn, max_frame: 16_384, out_limit: usize::MAX }
    }

    /// (kind, flags, payload length) of every frame in `out`.
    fn frames(out: &[u8]) -> Vec<(u8, u8, usize)> {
        let mut at = 0;
        let mut all = Vec::new();
        while at < out.len() {
            let h = frame::parse_head(&out[at..]);
            all.push((h.kind, h.flags, h.len));
            at += frame::HEADER_LEN + h.len;
        }
        all
    }

    #[test]
    fn a_body_goes_out_within_the_windows_and_ends_on_its_last_frame() {
        let mut b = Body::default();
        b.push(Bytes::from(vec![1u8; 40_000]));
        b.end(End::Data);
        let (mut stream, mut conn) = (30_000i64, 100_000i64);
        let mut out = Vec::new();
        assert_eq!(b.write(&mut out, 1, room(&mut stream, &mut conn)), 30_000);
        assert_eq!(frames(&out), vec![(0, 0, 16_384), (0, 0, 13_616)]);
        assert!(!b.ended && b.waiting());
        stream += 20_000;
        out.clear();
        assert_eq!(b.write(&mut out, 1, room(&mut stream, &mut conn)), 10_000);
        assert_eq!(frames(&out), vec![(0, frame::END_STREAM, 10_000)]);
        assert!(b.ended && !b.waiting());
        assert_eq!((stream, conn), (10_000, 60_000));
    }

    #[test]
    fn trailers_and_empty_ends_wait_for_the_bytes_before_them() {
        let mut b = Body::default();
        b.push(Bytes::from_static(b"abc"));
        b.end(End::Trailers(vec![0x88]));
        let (mut stream, mut conn) = (0i64, 10i64);
        let mut out = Vec::new();
        assert_eq!(b.write(&mut out, 3, room(&mut stream, &mut conn)), 0);
        assert!(out.is_empty() && b.end_waiting());
        stream = 10;
        b.write(&mut out, 3, room(&mut stream, &mut conn));
        let headers_end = frame::END_STREAM | frame::END_HEADERS;
        assert_eq!(frames(&out), vec![(0, 0, 3), (frame::HEADERS, headers_end, 1)]);
        let mut empty = Body::default();
        empty.end(End::Data);
        out.clear();
        empty.write(&mut out, 5, room(&mut stream, &mut conn));
        assert_eq!(frames(&out), vec![(0, frame::END_STREAM, 0)]);
    }

    #[test]
    fn writing_stops_at_the_output_limit() {
        let mut b = Body::default();
        b.push(Bytes::from(vec![0u8; 50_000]));
        let (mut stream, mut conn) = (1i64 << 20, 1i64 << 20);
        let mut out = vec![0u8; 10];
        let room = Room {
            stream: &mut stream,
            conn: &mut conn,
            max_frame: 16_384,
            out_limit: 10,
        };
        assert_eq!(b.write(&mut out, 1, room), 0);
        assert!(b.waiting());
    }
}
