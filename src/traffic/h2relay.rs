//! The HTTP/2 relay: an HTTP/2 client connection (prior knowledge) in
//! front of an `h2c://` upstream is served by one loop that relays frames
//! between the client and its own upstream connection, instead of hyper's
//! HTTP/2 server and client (a task, a channel and a header map round trip
//! per stream, about twice HAProxy's CPU per request; docs/proxy.md).
//!
//! The two connections are one-to-one and stream ids are the same on both,
//! so flow control passes through end to end: DATA, WINDOW_UPDATE, PING,
//! RST_STREAM and GOAWAY frames are forwarded as they are, and SETTINGS
//! with what concerns only one hop removed (header table size, push,
//! extended CONNECT). Header sections are decoded (a per-side HPACK
//! decoder), checked against RFC 9113 §8.2–8.3, shaped by the general
//! path's own functions (hop-by-hop headers, forwarding headers, cohort
//! header and baggage, `:authority`) and re-encoded without the dynamic
//! table ([`fields`]). Timeouts are the general path's: upstream head,
//! request and response body idle, idle connection. A DATA frame the relay
//! does not forward is credited back to its sender's connection window,
//! and every answer the relay makes itself (400, 431, 502, 504, 408) is a
//! header-only response, so the windows of the two hops stay equal.
//!
//! It serves only while no HTTP fault is enabled. A stream that arrives
//! while one is gets REFUSED_STREAM after a GOAWAY: nothing was processed,
//! so the client retries it on a new connection, which the general path
//! serves with every fault. It runs only on a proxy without client TLS, in
//! edge mode, whose every pool is the same single `h2c://` target.

mod fields;
pub(crate) mod frame;
mod hpack;
mod huffman;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::header::{HeaderValue, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use self::fields::Refused;
use self::frame::{code, setting, Head, HEADER_LEN};
use super::fast::FaultMode;
use super::forwarded::PeerForwarding;
use super::headers::{check_host, strip_hop_by_hop};
use super::rewind::Rewind;
use super::server::{
    mark_cohort, record_request, serve_connection, stopped, Assignment, Pool, Shared,
    COHORT, DRAIN_TIMEOUT,
};
use super::upstream::Target;
use crate::cohort::{Cohort, COHORT_HEADER};

/// Output queued toward one side above which neither side is read.
const HIGH_WATER: usize = 1 << 20;
/// How much is read per system call.
const READ_CHUNK: usize = 64 * 1024;
/// How long a closing connection may take to flush its last frames.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a proxy with these pools can relay: every target is the same
/// plain `h2c://` upstream.
pub(super) fn eligible(default: &Pool, control: &Pool, experiment: &Pool) -> bool {
    let mut all = [default, control, experiment].into_iter().flat_map(|p| p.targets());
    let Some(first) = all.next() else { return false };
    first.is_plain_h2c()
        && all.all(|t| t.is_plain_h2c() && t.authority == first.authority)
}

/// Serves one plain-TCP client connection: relayed when it opens with the
/// HTTP/2 preface and the upstream answers, on the general path otherwise
/// (HTTP/1.1 clients, an unreachable upstream: it answers 502 per request).
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let fd = client.as_raw_fd();
    let mut cin = BytesMut::with_capacity(READ_CHUNK);
    let deadline = Instant::now() + shared.timeouts().client_header;
    // The preface, or the first byte that is not part of it.
    while cin.len() < frame::PREFACE.len() && frame::PREFACE.starts_with(&cin) {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout_at(deadline, client.read_buf(&mut cin)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    let target = shared.pool_for(None).pick();
    let relay = cin.starts_with(frame::PREFACE) && shared.fault_mode() == FaultMode::None;
    let upstream = match target {
        Some(t) if relay => super::upstream::tcp(t, shared.connect_timeout()).await.ok(),
        _ => None,
    };
    let (Some(target), Some(upstream)) = (target, upstream) else {
        let io = TokioIo::new(Rewind::new(cin.freeze(), client));
        serve_connection(shared, io, peer, fd, "http", shutdown, None).await;
        return;
    };
    let _ = upstream.set_nodelay(true);
    cin.advance(frame::PREFACE.len());
    let mut uout = Out::default();
    uout.buf.extend_from_slice(frame::PREFACE);
    let now = Instant::now();
    let mut relay = Relay {
        shared: &shared,
        forwarding: PeerForwarding::new(peer, "http", shared.trusted_proxies()),
        peer,
        target,
        client,
        upstream,
        cin,
        uin: BytesMut::with_capacity(READ_CHUNK),
        cout: Out::default(),
        uout,
        cdec: new_decoder(),
        udec: new_decoder(),
        streams: Vec::new(),
        last_client: 0,
        last_forwarded: 0,
        cpending: None,
        upending: None,
        client_may_send: frame::DEFAULT_MAX_FRAME,
        upstream_may_send: frame::DEFAULT_MAX_FRAME,
        client_settings_seen: false,
        upstream_settings_seen: false,
        draining: false,
        closing: None,
        shutdown_at: None,
        idle_since: now,
        client_blocked_since: None,
        wake: now + shared.timeouts().idle,
        scratch: Vec::with_capacity(1024),
    };
    relay.run(shutdown).await;
}

fn new_decoder() -> hpack::Decoder {
    // Both peers see the default 4,096-byte table: the relay removes
    // SETTINGS_HEADER_TABLE_SIZE from what it forwards.
    hpack::Decoder::new(4096)
}

/// Bytes queued for one side.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    pos: usize,
}

impl Out {
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes what the socket takes now: how many bytes, `Err` when the
    /// peer is gone.
    fn flush(&mut self, to: &TcpStream) -> std::io::Result<usize> {
        let start = self.pos;
        while self.pos < self.buf.len() {
            match to.try_write(&self.buf[self.pos..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let written = self.pos - start;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > HIGH_WATER {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(written)
    }
}

/// A complete header block: its stream, END_STREAM, and the block.
struct Block<'p> {
    stream: u32,
    end_stream: bool,
    bytes: Cow<'p, [u8]>,
}

/// A header block still waiting for its CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// A stream forwarded upstream and not finished on both sides.
struct Stream {
    id: u32,
    cohort: Option<Cohort>,
    /// Until the request is recorded.
    assignment: Option<Assignment>,
    arrived: Instant,
    client_done: bool,
    upstream_done: bool,
    /// The final response head went to the client.
    responded: bool,
    /// A HEAD request: its response ends with the head.
    head_request: bool,
    client_seen: Instant,
    upstream_seen: Instant,
}

/// A connection error (RFC 9113 §5.4.1) caused by one side.
enum Fatal {
    Client(u32),
    Upstream(u32),
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    /// A connection error this side caused.
    fn fatal(self, code: u32) -> Fatal {
        match self {
            Side::Client => Fatal::Client(code),
            Side::Upstream => Fatal::Upstream(code),
        }
    }
}

struct Relay<'a> {
    shared: &'a Shared,
    forwarding: PeerForwarding,
    peer: SocketAddr,
    target: &'a Target,
    client: TcpStream,
    upstream: TcpStream,
    cin: BytesMut,
    uin: BytesMut,
    cout: Out,
    uout: Out,
    cdec: hpack::Decoder,
    udec: hpack::Decoder,
    streams: Vec<Stream>,
    /// Highest stream id the client opened.
    last_client: u32,
    /// Highest stream id sent upstream.
    last_forwarded: u32,
    cpending: Option<Pending>,
    upending: Option<Pending>,
    /// Largest frame each side may send (the other side's MAX_FRAME_SIZE).
    client_may_send: usize,
    upstream_may_send: usize,
    client_settings_seen: bool,
    upstream_settings_seen: bool,
    /// No new streams: a GOAWAY went out or came in.
    draining: bool,
    /// Flushing the last frames until then, then closing.
    closing: Option<Instant>,
    /// Shutdown began then: streams get `DRAIN_TIMEOUT` to finish.
    shutdown_at: Option<Instant>,
    /// Since when the client has not taken what is queued for it.
    client_blocked_since: Option<Instant>,
    /// Since when no stream is open.
    idle_since: Instant,
    /// When the timer next looks at the streams.
    wake: Instant,
    scratch: Vec<u8>,
}

impl Relay<'_> {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        // Frames that came in the same read as the preface.
        if let Err(fatal) = self.frames(Side::Client, Instant::now()) {
            self.fail(fatal);
        }
        let sleep = tokio::time::sleep_until(self.wake);
        tokio::pin!(sleep);
        let mut armed = self.wake;
        loop {
            let written = match self.cout.flush(&self.client) {
                Ok(n) => n,
                Err(_) => {
                    self.client_gone();
                    return;
                }
            };
            if self.uout.flush(&self.upstream).is_err() {
                if self.closing.is_none() {
                    self.upstream_gone();
                }
                // Nothing more can reach it; do not wait to write it.
                self.uout = Out::default();
            }
            match (self.cout.len(), self.client_blocked_since) {
                (0, _) => self.client_blocked_since = None,
                (_, since) if since.is_none() || written > 0 => {
                    // The socket is full: a client that takes nothing for
                    // the response-body timeout loses its connection.
                    let now = Instant::now();
                    self.client_blocked_since = Some(now);
                    self.wake = self.wake.min(now + self.shared.timeouts().response_body);
                }
                _ => {}
            }
            if self.closing.is_some() && self.cout.len() == 0 && self.uout.len() == 0 {
                return;
            }
            if self.wake != armed {
                armed = self.wake;
                sleep.as_mut().reset(armed);
            }
            let reading = self.closing.is_none()
                && self.cout.len() < HIGH_WATER
                && self.uout.len() < HIGH_WATER;
            let stopping = self.shutdown_at.is_none() && self.closing.is_none();
            let side = tokio::select! {
                biased;
                r = self.client.readable(), if reading => r.map(|_| Some(Side::Client)),
                r = self.upstream.readable(), if reading => r.map(|_| Some(Side::Upstream)),
                r = self.client.writable(), if self.cout.len() > 0 => r.map(|_| None),
                r = self.upstream.writable(), if self.uout.len() > 0 => r.map(|_| None),
                _ = &mut sleep => {
                    self.sweep(Instant::now());
                    Ok(None)
                }
                _ = stopped(&mut shutdown), if stopping => {
                    self.begin_shutdown();
                    Ok(None)
                }
            };
            let result = match side {
                Ok(Some(side)) => self.read(side),
                Ok(None) => Ok(()),
                Err(_) => {
                    self.client_gone();
                    return;
                }
            };
            if let Err(fatal) = result {
                self.fail(fatal);
            }
        }
    }

    /// One read from `side`, and the frames it completed.
    fn read(&mut self, side: Side) -> Result<(), Fatal> {
        let (stream, buf) = match side {
            Side::Client => (&self.client, &mut self.cin),
            Side::Upstream => (&self.upstream, &mut self.uin),
        };
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = stream.try_read_buf(buf);
        match (read, side) {
            (Ok(n), _) if n > 0 => self.frames(side, Instant::now()),
            (Err(e), _) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            (Ok(_), Side::Client) => {
                self.client_gone();
                self.closing = Some(Instant::now() + CLOSE_FLUSH);
                Ok(())
            }
            (Err(_), Side::Client) => {
                self.client_gone();
                self.closing = Some(Instant::now());
                Ok(())
            }
            (_, Side::Upstream) => {
                self.upstream_gone();
                Ok(())
            }
        }
    }

    /// Handles every complete frame buffered from `side`.
    fn frames(&mut self, side: Side, now: Instant) -> Result<(), Fatal> {
        let (buf, limit) = match side {
            Side::Client => (std::mem::take(&mut self.cin), self.client_may_send),
            Side::Upstream => (std::mem::take(&mut self.uin), self.upstream_may_send),
        };
        let mut at = 0;
        let result = loop {
            if buf.len() - at < HEADER_LEN {
                break Ok(());
            }
            let h = frame::parse_head(&buf[at..]);
            if h.len > limit {
                break Err(side.fatal(code::FRAME_SIZE_ERROR));
            }
            let end = at + HEADER_LEN + h.len;
            if buf.len() < end {
                break Ok(());
            }
            let handled = self.in_order(side, h).and_then(|()| match side {
                Side::Client => self.client_frame(h, &buf[at..end], now),
                Side::Upstream => self.upstream_frame(h, &buf[at..end], now),
            });
            if let Err(f) = handled {
                break Err(f);
            }
            at = end;
        };
        let rest = match side {
            Side::Client => &mut self.cin,
            Side::Upstream => &mut self.uin,
        };
        *rest = buf;
        rest.advance(at);
        result
    }

    /// Frame order rules both sides share: SETTINGS first (§3.4: it
    /// follows the preface), and nothing between a HEADERS frame and the
    /// CONTINUATION frames it announced (§6.10).
    fn in_order(&self, side: Side, h: Head) -> Result<(), Fatal> {
        let (settings_seen, pending) = match side {
            Side::Client => (self.client_settings_seen, self.cpending.is_some()),
            Side::Upstream => (self.upstream_settings_seen, self.upending.is_some()),
        };
        let first_ok =
            settings_seen || (h.kind == frame::SETTINGS && h.flags & frame::ACK == 0);
        if !first_ok || (pending && h.kind != frame::CONTINUATION) {
            return Err(side.fatal(code::PROTOCOL_ERROR));
        }
        Ok(())
    }

    /// HEADERS and CONTINUATION from `side`: a complete header block
    /// or `None` while CONTINUATION is due.
    fn assemble<'p>(
        &mut self,
        side: Side,
        h: Head,
        payload: &'p [u8],
    ) -> Result<Option<Block<'p>>, Fatal> {
        let limit = self.block_limit();
        let pending = match side {
            Side::Client => &mut self.cpending,
            Side::Upstream => &mut self.upending,
        };
        if h.kind == frame::HEADERS {
            let fragment = frame::headers_fragment(h.flags, payload)
                .ok_or(side.fatal(code::PROTOCOL_ERROR))?;
            let end_stream = h.flags & frame::END_STREAM != 0;
            if h.flags & frame::END_HEADERS != 0 {
                return Ok(Some(Block {
                    stream: h.stream,
                    end_stream,
                    bytes: Cow::Borrowed(fragment),
                }));
            }
            *pending =
                Some(Pending { stream: h.stream, end_stream, block: fragment.to_vec() });
            return Ok(None);
        }
        let mut p = pending.take().ok_or(side.fatal(code::PROTOCOL_ERROR))?;
        if p.stream != h.stream {
            return Err(side.fatal(code::PROTOCOL_ERROR));
        }
        p.block.extend_from_slice(payload);
        if p.block.len() > limit {
            return Err(side.fatal(code::ENHANCE_YOUR_CALM));
        }
        if h.flags & frame::END_HEADERS != 0 {
            return Ok(Some(Block {
                stream: p.stream,
                end_stream: p.end_stream,
                bytes: Cow::Owned(p.block),
            }));
        }
        *pending = Some(p);
        Ok(None)
    }

    /// WINDOW_UPDATE from `from`: forwarded for the connection and for
    /// streams both sides know, dropped for the rest.
    fn window_update(&mut self, h: Head, frame: &[u8], from: Side) -> Result<(), Fatal> {
        if h.len != 4 {
            return Err(from.fatal(code::FRAME_SIZE_ERROR));
        }
        if h.stream == 0 || self.find(h.stream).is_some() {
            match from {
                Side::Client => self.uout.buf.extend_from_slice(frame),
                Side::Upstream => self.cout.buf.extend_from_slice(frame),
            }
        }
        Ok(())
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Largest header block assembled before decoding: beyond it a peer is
    /// flooding CONTINUATION frames.
    fn block_limit(&self) -> usize {
        (self.shared.max_header_bytes() * 4).max(64 * 1024)
    }

    fn client_frame(&mut self, h: Head, frame: &[u8], now: Instant) -> Result<(), Fatal> {
        let err = |c| Err(Fatal::Client(c));
        let payload = &frame[HEADER_LEN..];
        match h.kind {
            frame::DATA => self.client_data(h, frame, now),
            frame::HEADERS | frame::CONTINUATION => {
                if h.kind == frame::HEADERS
                    && (h.stream == 0 || h.stream.is_multiple_of(2))
                {
                    return err(code::PROTOCOL_ERROR);
                }
                match self.assemble(Side::Client, h, payload)? {
                    Some(b) => self.client_headers(b.stream, b.end_stream, &b.bytes, now),
                    None => Ok(()),
                }
            }
            frame::PRIORITY => match (h.stream, h.len) {
                (0, _) => err(code::PROTOCOL_ERROR),
                (_, 5) => Ok(()),
                _ => err(code::FRAME_SIZE_ERROR),
            },
            frame::RST_STREAM => {
                if h.stream == 0 || h.stream > self.last_client {
                    return err(code::PROTOCOL_ERROR);
                }
                if h.len != 4 {
                    return err(code::FRAME_SIZE_ERROR);
                }
                if let Some(i) = self.find(h.stream) {
                    // The client gave up on it.
                    self.uout.buf.extend_from_slice(frame);
                    self.finish(i, None, now);
                }
                Ok(())
            }
            frame::SETTINGS => self.settings(h, payload, Side::Client),
            frame::PING => self.forward_connection_frame(h, frame, Side::Client),
            frame::GOAWAY => {
                self.forward_connection_frame(h, frame, Side::Client)?;
                self.draining = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(h, frame, Side::Client),
            frame::PUSH_PROMISE => err(code::PROTOCOL_ERROR),
            // §4.1: unknown frame types are ignored.
            _ => Ok(()),
        }
    }

    /// PING (exactly 8 bytes) and GOAWAY (at least 8): forwarded to the
    /// other side as they are (a PING's ACK comes back the same way).
    fn forward_connection_frame(
        &mut self,
        h: Head,
        frame: &[u8],
        from: Side,
    ) -> Result<(), Fatal> {
        let fatal = |c| from.fatal(c);
        if h.stream != 0 {
            return Err(fatal(code::PROTOCOL_ERROR));
        }
        let len_ok = if h.kind == frame::PING { h.len == 8 } else { h.len >= 8 };
        if !len_ok {
            return Err(fatal(code::FRAME_SIZE_ERROR));
        }
        match from {
            Side::Client => self.uout.buf.extend_from_slice(frame),
            Side::Upstream => self.cout.buf.extend_from_slice(frame),
        }
        Ok(())
    }

    /// Checks a SETTINGS frame from `from` and forwards it without what
    /// concerns only one hop; its MAX_FRAME_SIZE bounds what the other
    /// side may send.
    fn settings(&mut self, h: Head, payload: &[u8], from: Side) -> Result<(), Fatal> {
        let first = match from {
            Side::Client => !std::mem::replace(&mut self.client_settings_seen, true),
            Side::Upstream => !std::mem::replace(&mut self.upstream_settings_seen, true),
        };
        let max_frame = self.forward_settings(h, payload, from, first)?;
        match (from, max_frame) {
            (Side::Client, Some(m)) => self.upstream_may_send = m,
            (Side::Upstream, Some(m)) => self.client_may_send = m,
            (_, None) => {}
        }
        Ok(())
    }

    /// [`Self::settings`]' checks and forwarding; returns MAX_FRAME_SIZE if
    /// the frame has one.
    fn forward_settings(
        &mut self,
        h: Head,
        payload: &[u8],
        from: Side,
        first: bool,
    ) -> Result<Option<usize>, Fatal> {
        let fatal = |c| from.fatal(c);
        if h.stream != 0 {
            return Err(fatal(code::PROTOCOL_ERROR));
        }
        let out = match from {
            Side::Client => &mut self.uout.buf,
            Side::Upstream => &mut self.cout.buf,
        };
        if h.flags & frame::ACK != 0 {
            if h.len != 0 {
                return Err(fatal(code::FRAME_SIZE_ERROR));
            }
            frame::write_head(out, 0, frame::SETTINGS, frame::ACK, 0);
            return Ok(None);
        }
        if !h.len.is_multiple_of(6) {
            return Err(fatal(code::FRAME_SIZE_ERROR));
        }
        let mut kept: Vec<(u16, u32)> = Vec::with_capacity(h.len / 6 + 1);
        let mut max_frame = None;
        for (id, value) in frame::settings(payload) {
            if let Some(c) = frame::check_setting(id, value) {
                return Err(fatal(c));
            }
            match id {
                setting::MAX_FRAME_SIZE => {
                    max_frame = Some(value as usize);
                    kept.push((id, value));
                }
                setting::MAX_CONCURRENT_STREAMS
                | setting::INITIAL_WINDOW_SIZE
                | setting::MAX_HEADER_LIST_SIZE => kept.push((id, value)),
                // Per hop (our decoders, push, extended CONNECT) or unknown.
                _ => {}
            }
        }
        if first && matches!(from, Side::Client) {
            // The upstream never pushes through the relay.
            kept.push((setting::ENABLE_PUSH, 0));
        }
        frame::write_settings(out, &kept);
        Ok(max_frame)
    }

    fn client_data(&mut self, h: Head, frame: &[u8], now: Instant) -> Result<(), Fatal> {
        if h.stream == 0 || !frame::data_padding_ok(h.flags, &frame[HEADER_LEN..]) {
            return Err(Fatal::Client(code::PROTOCOL_ERROR));
        }
        match self.find(h.stream) {
            Some(i) if !self.streams[i].client_done => {
                self.uout.buf.extend_from_slice(frame);
                let s = &mut self.streams[i];
                s.client_seen = now;
                if h.flags & frame::END_STREAM != 0 {
                    s.client_done = true;
                    self.close_if_done(i, now);
                }
                Ok(())
            }
            Some(i) => {
                // DATA after END_STREAM (§5.1: STREAM_CLOSED).
                credit(&mut self.cout.buf, h.len);
                frame::rst_stream(&mut self.cout.buf, h.stream, code::STREAM_CLOSED);
                frame::rst_stream(&mut self.uout.buf, h.stream, code::CANCEL);
                self.finish(i, None, now);
                Ok(())
            }
            None if h.stream > self.last_client => {
                Err(Fatal::Client(code::PROTOCOL_ERROR))
            }
            None => {
                // A stream the relay answered or already closed: its bytes
                // still count against the connection window.
                credit(&mut self.cout.buf, h.len);
                Ok(())
            }
        }
    }

    fn client_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        now: Instant,
    ) -> Result<(), Fatal> {
        if let Some(i) = self.find(id) {
            // Trailers (or a protocol error).
            let t = match fields::response(&mut self.cdec, block, true) {
                Err(Refused::Compression) => {
                    return Err(Fatal::Client(code::COMPRESSION_ERROR))
                }
                Ok(t) if end_stream && !self.streams[i].client_done => t,
                _ => {
                    let code = if self.streams[i].client_done {
                        code::STREAM_CLOSED
                    } else {
                        code::PROTOCOL_ERROR
                    };
                    frame::rst_stream(&mut self.cout.buf, id, code);
                    frame::rst_stream(&mut self.uout.buf, id, code::CANCEL);
                    self.finish(i, None, now);
                    return Ok(());
                }
            };
            self.send_trailers(Side::Upstream, id, &t.headers);
            self.streams[i].client_done = true;
            self.streams[i].client_seen = now;
            self.close_if_done(i, now);
            return Ok(());
        }
        if id <= self.last_client {
            // A stream the relay answered or closed (trailers racing its
            // answer): decoded for the HPACK state, then dropped.
            return match fields::request(&mut self.cdec, block) {
                Err(Refused::Compression) => Err(Fatal::Client(code::COMPRESSION_ERROR)),
                _ => Ok(()),
            };
        }
        self.last_client = id;
        // Decoded even when refused: the HPACK state must follow every block.
        let decoded = fields::request(&mut self.cdec, block);
        if let Err(Refused::Compression) = decoded {
            return Err(Fatal::Client(code::COMPRESSION_ERROR));
        }
        if self.draining || self.shared.fault_mode() != FaultMode::None {
            if !self.draining {
                // A fault is on: this connection ends, the client retries
                // the refused stream on a new one (the general path).
                self.draining = true;
                frame::goaway(&mut self.cout.buf, self.last_forwarded, code::NO_ERROR);
            }
            frame::rst_stream(&mut self.cout.buf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        let mut head = match decoded {
            Ok(head) => head,
            Err(why) => {
                tracing::debug!(stream = id, ?why, "malformed HTTP/2 request");
                frame::rst_stream(&mut self.cout.buf, id, code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        // Refused before cohort assignment, like the general path's own
        // 400/431: not a request of any cohort.
        if head.size > self.shared.max_header_bytes() {
            self.answer(id, 431, None, end_stream);
            return Ok(());
        }
        if check_host(http::Version::HTTP_2, &head.headers).is_err() {
            self.answer(id, 400, None, end_stream);
            return Ok(());
        }
        // The general path's shaping, in its order (server::handle).
        strip_hop_by_hop(&mut head.headers, false, &COHORT);
        self.forwarding.apply(self.shared.forwarded(), &mut head.headers);
        let assignment = self.shared.assign(&head.headers, self.peer);
        mark_cohort(&mut head.headers, assignment.cohort);
        // `upstream::for_h2`: the client's Host, else :authority, else the
        // target's, as :authority, and no Host.
        let host = head.headers.remove(HOST);
        let authority: &[u8] = match (&host, &head.authority) {
            (Some(h), _) => h.as_bytes(),
            (None, Some(a)) => a,
            (None, None) => self.target.authority.as_str().as_bytes(),
        };
        self.scratch.clear();
        fields::encode(&mut self.scratch, b":method", &head.method);
        if head.method != b"CONNECT" {
            fields::encode(&mut self.scratch, b":scheme", b"http");
        }
        fields::encode(&mut self.scratch, b":authority", authority);
        if let Some(path) = &head.path {
            fields::encode(&mut self.scratch, b":path", path);
        }
        fields::encode_map(&mut self.scratch, &head.headers);
        self.send_scratch(Side::Upstream, id, end_stream);
        self.last_forwarded = id;
        self.shared.fast_requests.fetch_add(1, Ordering::Relaxed);
        self.streams.push(Stream {
            id,
            cohort: assignment.cohort,
            assignment: Some(assignment),
            arrived: now,
            client_done: end_stream,
            upstream_done: false,
            responded: false,
            head_request: head.method == b"HEAD",
            client_seen: now,
            upstream_seen: now,
        });
        let t = self.shared.timeouts();
        let first = now + self.shared.upstream_timeout().min(t.request_body);
        self.wake = self.wake.min(first);
        Ok(())
    }

    fn upstream_frame(
        &mut self,
        h: Head,
        frame: &[u8],
        now: Instant,
    ) -> Result<(), Fatal> {
        let err = |c| Err(Fatal::Upstream(c));
        let payload = &frame[HEADER_LEN..];
        match h.kind {
            frame::DATA => {
                if h.stream == 0 || !frame::data_padding_ok(h.flags, payload) {
                    return err(code::PROTOCOL_ERROR);
                }
                match self.find(h.stream) {
                    Some(i)
                        if self.streams[i].responded
                            && !self.streams[i].upstream_done =>
                    {
                        self.cout.buf.extend_from_slice(frame);
                        let s = &mut self.streams[i];
                        s.upstream_seen = now;
                        if h.flags & frame::END_STREAM != 0 {
                            s.upstream_done = true;
                            self.close_if_done(i, now);
                        }
                    }
                    Some(i) => {
                        // DATA before the response head, or after its end.
                        credit(&mut self.uout.buf, h.len);
                        self.bad_upstream_stream(i, now);
                    }
                    None => credit(&mut self.uout.buf, h.len),
                }
                Ok(())
            }
            frame::HEADERS | frame::CONTINUATION => {
                if h.kind == frame::HEADERS && h.stream == 0 {
                    return err(code::PROTOCOL_ERROR);
                }
                match self.assemble(Side::Upstream, h, payload)? {
                    Some(b) => {
                        self.upstream_headers(b.stream, b.end_stream, &b.bytes, now)
                    }
                    None => Ok(()),
                }
            }
            frame::PRIORITY => Ok(()),
            frame::RST_STREAM => {
                if h.stream == 0 {
                    return err(code::PROTOCOL_ERROR);
                }
                if h.len != 4 {
                    return err(code::FRAME_SIZE_ERROR);
                }
                let Some(i) = self.find(h.stream) else { return Ok(()) };
                let error =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if self.streams[i].responded || error == code::REFUSED_STREAM {
                    // Refused: not processed, the client may retry it, so
                    // it is not a request of the cohort.
                    if error == code::REFUSED_STREAM {
                        self.streams[i].assignment = None;
                    }
                    self.cout.buf.extend_from_slice(frame);
                    self.finish(i, None, now);
                } else {
                    // Like the general path: no response is a 502.
                    self.answer_stream(i, 502, now);
                }
                Ok(())
            }
            frame::SETTINGS => self.settings(h, payload, Side::Upstream),
            frame::PING => self.forward_connection_frame(h, frame, Side::Upstream),
            frame::GOAWAY => {
                self.forward_connection_frame(h, frame, Side::Upstream)?;
                let last =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                // Streams above `last` were not processed: the client
                // retries them after this GOAWAY; not recorded here.
                self.streams.retain(|s| s.id <= last);
                self.draining = true;
                self.check_drained(now);
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(h, frame, Side::Upstream),
            // Push is disabled in the SETTINGS the relay forwards.
            frame::PUSH_PROMISE => err(code::PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    fn upstream_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        now: Instant,
    ) -> Result<(), Fatal> {
        let Some(i) = self.find(id) else {
            // Kept in step with the upstream's encoder, then dropped.
            return match fields::response(&mut self.udec, block, false) {
                Err(Refused::Compression) => {
                    Err(Fatal::Upstream(code::COMPRESSION_ERROR))
                }
                _ => Ok(()),
            };
        };
        let trailers = self.streams[i].responded;
        let mut head = match fields::response(&mut self.udec, block, trailers) {
            Ok(head) => head,
            Err(Refused::Compression) => {
                return Err(Fatal::Upstream(code::COMPRESSION_ERROR))
            }
            Err(Refused::Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed HTTP/2 response");
                self.bad_upstream_stream(i, now);
                return Ok(());
            }
        };
        if trailers {
            if !end_stream {
                self.bad_upstream_stream(i, now);
                return Ok(());
            }
            self.send_trailers(Side::Client, id, &head.headers);
            self.streams[i].upstream_done = true;
            self.close_if_done(i, now);
            return Ok(());
        }
        let status = head.status.unwrap_or(502);
        let informational = (100..200).contains(&status);
        if informational && (end_stream || status == 101) {
            // §8.1: an interim response never ends a stream; 101 has no
            // meaning in HTTP/2.
            self.bad_upstream_stream(i, now);
            return Ok(());
        }
        strip_hop_by_hop(&mut head.headers, false, &COHORT);
        if let (false, Some(c)) = (informational, self.streams[i].cohort) {
            head.headers.insert(COHORT_HEADER, HeaderValue::from_static(c.as_str()));
        }
        self.scratch.clear();
        // A response to HEAD ends with its head, as the general path
        // sends it; what the upstream adds after it is dropped.
        let end = end_stream || (!informational && self.streams[i].head_request);
        let mut digits = [0u8; 3];
        fields::encode(&mut self.scratch, b":status", status_digits(status, &mut digits));
        fields::encode_map(&mut self.scratch, &head.headers);
        self.send_scratch(Side::Client, id, end);
        if informational {
            return Ok(());
        }
        let s = &mut self.streams[i];
        s.responded = true;
        s.upstream_seen = now;
        if let Some(a) = s.assignment.take() {
            record_request(self.shared, s.arrived, a, Some(status));
        }
        if end {
            s.upstream_done = true;
            self.close_if_done(i, now);
        } else {
            let body = now + self.shared.timeouts().response_body;
            self.wake = self.wake.min(body);
        }
        Ok(())
    }

    /// Sends the header block in `scratch` to `to`, on stream `id`.
    fn send_scratch(&mut self, to: Side, id: u32, end_stream: bool) {
        let out = match to {
            Side::Client => &mut self.cout.buf,
            Side::Upstream => &mut self.uout.buf,
        };
        frame::header_block(out, id, &self.scratch, end_stream, frame::DEFAULT_MAX_FRAME);
    }

    /// A trailer section to `to`, re-encoded; it ends the stream.
    fn send_trailers(&mut self, to: Side, id: u32, trailers: &http::HeaderMap) {
        self.scratch.clear();
        fields::encode_map(&mut self.scratch, trailers);
        self.send_scratch(to, id, true);
    }

    /// The upstream broke a stream's rules: a 502 if the client has no
    /// response yet, a reset otherwise.
    fn bad_upstream_stream(&mut self, i: usize, now: Instant) {
        let id = self.streams[i].id;
        frame::rst_stream(&mut self.uout.buf, id, code::PROTOCOL_ERROR);
        if self.streams[i].responded {
            frame::rst_stream(&mut self.cout.buf, id, code::INTERNAL_ERROR);
            self.finish(i, None, now);
        } else {
            self.answer(id, 502, self.streams[i].cohort, self.streams[i].client_done);
            self.finish(i, Some(502), now);
        }
    }

    /// Answers a forwarded stream with `status` itself (cancelling it
    /// upstream) and records it.
    fn answer_stream(&mut self, i: usize, status: u16, now: Instant) {
        let s = &self.streams[i];
        let (id, cohort, client_done) = (s.id, s.cohort, s.client_done);
        frame::rst_stream(&mut self.uout.buf, id, code::CANCEL);
        self.answer(id, status, cohort, client_done);
        self.finish(i, Some(status), now);
    }

    /// A header-only response from the relay (never DATA: the client's
    /// connection window is the upstream's to spend).
    fn answer(
        &mut self,
        id: u32,
        status: u16,
        cohort: Option<Cohort>,
        client_done: bool,
    ) {
        self.scratch.clear();
        let mut digits = [0u8; 3];
        fields::encode(&mut self.scratch, b":status", status_digits(status, &mut digits));
        if let Some(c) = cohort {
            fields::encode(
                &mut self.scratch,
                COHORT_HEADER.as_bytes(),
                c.as_str().as_bytes(),
            );
        }
        self.send_scratch(Side::Client, id, true);
        if !client_done {
            // §8.1: the response is complete; the request body is not needed.
            frame::rst_stream(&mut self.cout.buf, id, code::NO_ERROR);
        }
    }

    fn close_if_done(&mut self, i: usize, now: Instant) {
        if self.streams[i].client_done && self.streams[i].upstream_done {
            self.finish(i, None, now);
        }
    }

    /// Removes stream `i`, recording it with `status` if it was not yet.
    fn finish(&mut self, i: usize, status: Option<u16>, now: Instant) {
        let s = self.streams.swap_remove(i);
        if let Some(a) = s.assignment {
            record_request(self.shared, s.arrived, a, status);
        }
        if self.streams.is_empty() {
            self.idle_since = now;
            self.wake = self.wake.min(now + self.shared.timeouts().idle);
        }
        self.check_drained(now);
    }

    fn check_drained(&mut self, now: Instant) {
        if self.draining && self.streams.is_empty() && self.closing.is_none() {
            self.closing = Some(now + CLOSE_FLUSH);
            self.wake = self.wake.min(now + CLOSE_FLUSH);
        }
    }

    /// Timeouts of every stream and of the connection.
    fn sweep(&mut self, now: Instant) {
        let t = self.shared.timeouts();
        let head_timeout = self.shared.upstream_timeout();
        let mut next = now + t.idle;
        let mut i = self.streams.len();
        while i > 0 {
            i -= 1;
            let s = &self.streams[i];
            let head_due = s.arrived + head_timeout;
            let upload_due = s.client_seen + t.request_body;
            let body_due = s.upstream_seen + t.response_body;
            if !s.responded && now >= head_due {
                self.answer_stream(i, 504, now);
            } else if !s.client_done && now >= upload_due {
                if s.responded {
                    let id = s.id;
                    frame::rst_stream(&mut self.cout.buf, id, code::CANCEL);
                    frame::rst_stream(&mut self.uout.buf, id, code::CANCEL);
                    self.finish(i, None, now);
                } else {
                    // The client stalled its own body: a client error.
                    self.answer_stream(i, 408, now);
                }
            } else if s.responded && !s.upstream_done && now >= body_due {
                let id = s.id;
                frame::rst_stream(&mut self.cout.buf, id, code::INTERNAL_ERROR);
                frame::rst_stream(&mut self.uout.buf, id, code::CANCEL);
                self.finish(i, None, now);
            } else {
                if !s.responded {
                    next = next.min(head_due);
                }
                if !s.client_done {
                    next = next.min(upload_due);
                }
                if s.responded && !s.upstream_done {
                    next = next.min(body_due);
                }
            }
        }
        if let Some(since) = self.client_blocked_since {
            let due = since + t.response_body;
            if now >= due && self.closing.is_none() {
                tracing::debug!("closing a client connection that stopped reading");
                self.client_gone();
                self.closing = Some(now);
            }
            next = next.min(due);
        }
        if let Some(at) = self.shutdown_at {
            if now >= at + DRAIN_TIMEOUT {
                self.closing.get_or_insert(now);
            }
            next = next.min(at + DRAIN_TIMEOUT);
        }
        if self.streams.is_empty() && self.closing.is_none() {
            let due = self.idle_since + t.idle;
            if now >= due {
                frame::goaway(&mut self.cout.buf, self.last_forwarded, code::NO_ERROR);
                self.draining = true;
                self.closing = Some(now + CLOSE_FLUSH);
            } else {
                next = next.min(due);
            }
        }
        if let Some(at) = self.closing {
            if now >= at {
                // Out of time to flush: drop what is left.
                self.cout = Out::default();
                self.uout = Out::default();
            }
            next = next.min(at);
        }
        self.wake = next;
    }

    fn begin_shutdown(&mut self) {
        let now = Instant::now();
        self.shutdown_at = Some(now);
        if !self.draining {
            self.draining = true;
            frame::goaway(&mut self.cout.buf, self.last_client, code::NO_ERROR);
        }
        self.check_drained(now);
        self.wake = self.wake.min(now + DRAIN_TIMEOUT);
    }

    /// The client closed or broke its connection: open streams were
    /// abandoned (recorded without a response, like the general path).
    fn client_gone(&mut self) {
        let now = Instant::now();
        while !self.streams.is_empty() {
            self.finish(self.streams.len() - 1, None, now);
        }
        self.uout = Out::default();
        self.closing.get_or_insert(now);
    }

    /// The upstream connection ended: streams without a response get a
    /// 502 (the general path's answer), the others a reset, and the client
    /// a GOAWAY so it reconnects.
    fn upstream_gone(&mut self) {
        let now = Instant::now();
        while let Some(i) = self.streams.len().checked_sub(1) {
            if self.streams[i].responded {
                frame::rst_stream(
                    &mut self.cout.buf,
                    self.streams[i].id,
                    code::INTERNAL_ERROR,
                );
                self.finish(i, None, now);
            } else {
                let s = &self.streams[i];
                let (id, cohort, done) = (s.id, s.cohort, s.client_done);
                self.answer(id, 502, cohort, done);
                self.finish(i, Some(502), now);
            }
        }
        if !self.draining {
            frame::goaway(&mut self.cout.buf, self.last_client, code::NO_ERROR);
        }
        self.draining = true;
        self.uout = Out::default();
        self.closing.get_or_insert(now + CLOSE_FLUSH);
        self.wake = self.wake.min(now + CLOSE_FLUSH);
    }

    /// A connection error: GOAWAY to the side that caused it, and the
    /// connection ends.
    fn fail(&mut self, fatal: Fatal) {
        let now = Instant::now();
        match fatal {
            Fatal::Client(c) => {
                tracing::debug!(code = c, "HTTP/2 client connection error");
                frame::goaway(&mut self.cout.buf, self.last_client, c);
                while !self.streams.is_empty() {
                    self.finish(self.streams.len() - 1, None, now);
                }
                self.draining = true;
                self.uout = Out::default();
                self.closing = Some(now + CLOSE_FLUSH);
                self.wake = self.wake.min(now + CLOSE_FLUSH);
            }
            Fatal::Upstream(c) => {
                tracing::debug!(code = c, "HTTP/2 upstream connection error");
                let mut goaway = Vec::new();
                frame::goaway(&mut goaway, 0, c);
                let _ = self.upstream.try_write(&goaway);
                self.upstream_gone();
            }
        }
    }
}

/// Returns the window a dropped DATA frame used (§6.9: flow-controlled
/// bytes count whether or not the stream is still open).
fn credit(out: &mut Vec<u8>, len: usize) {
    if len > 0 {
        frame::window_update(out, 0, len as u32);
    }
}

fn status_digits(status: u16, out: &mut [u8; 3]) -> &[u8] {
    let s = status.clamp(100, 999);
    *out = [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8];
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_become_three_digits() {
        let mut d = [0u8; 3];
        assert_eq!(status_digits(204, &mut d), b"204");
        assert_eq!(status_digits(502, &mut d), b"502");
        assert_eq!(status_digits(7, &mut d), b"100");
    }
}
