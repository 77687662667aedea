//! The HTTP/2 relay: an HTTP/2 client connection (prior knowledge) in
//! front of an `h2c://` upstream is served by one loop that relays its
//! streams onto HTTP/2 connections to the upstream shared by every client
//! connection of the worker thread ([`mux`]), instead of hyper's HTTP/2
//! server and client (a task, a channel and a header map round trip per
//! stream, about twice HAProxy's CPU per request; docs/proxy.md).
//!
//! Flow control is per hop: the relay advertises its own windows to the
//! client, returns connection credit as DATA arrives and stream credit as
//! the upstream connection sends the bytes on; response bytes go to the
//! client within the client's windows and are credited upstream as they
//! are written. PING and SETTINGS are answered by the relay. Header
//! sections are decoded, checked against RFC 9113 §8.2–8.3, shaped by the
//! general path's own functions (hop-by-hop headers, forwarding headers,
//! cohort header and baggage, `:authority`) and re-encoded without the
//! dynamic table ([`fields`]). Timeouts are the general path's: upstream
//! head, request and response body idle, idle connection. Every answer
//! the relay makes itself (400, 431, 502, 504, 408) is header-only.
//!
//! It serves only while no HTTP fault is enabled. A stream that arrives
//! while one is gets REFUSED_STREAM after a GOAWAY: nothing was processed,
//! so the client retries it on a new connection, which the general path
//! serves with every fault. It runs only on a proxy without client TLS, in
//! edge mode, whose every pool is the same single `h2c://` target.

mod fields;
mod flow;
pub(crate) mod frame;
mod hpack;
mod huffman;
mod mux;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub(super) use self::mux::Pools;

use self::fields::Refused;
use self::flow::{Body, End, Room};
use self::frame::{code, setting, Head};
use self::mux::{
    ClientTx, Open, ToClient, ToUp, UpTx, CONN_WINDOW, CREDIT_STEP, STREAM_WINDOW,
};
use super::fast::FaultMode;
use super::forwarded::PeerForwarding;
use super::headers::{check_host, strip_hop_by_hop};
use super::linger::{linger, Lingering};
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
/// Streams a client may have open at once (MAX_CONCURRENT_STREAMS).
const MAX_CLIENT_STREAMS: u32 = 128;
/// Messages from upstream connections handled before the next write.
const MESSAGE_BATCH: usize = 1024;
/// Connection credit is returned in steps of at least this much (DATA
/// is credited as it arrives; a WINDOW_UPDATE per read would cost a write
/// of its own).
const CONN_CREDIT_STEP: u32 = CONN_WINDOW / 4;

/// One read into `buf`: how many bytes (0 at the end of the stream).
/// A read that leaves room in `buf` emptied the socket, so its readiness
/// is cleared at once; without this, every read that returns data is
/// followed by one that returns `WouldBlock` (tokio clears readiness only
/// then). An event that arrives meanwhile is not lost: tokio clears only
/// the readiness it saw.
fn read_drained(sock: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let r = sock.try_io(tokio::io::Interest::READABLE, || {
        let n = sock.try_read_buf(buf)?;
        got = n;
        if n > 0 && n < room {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    if got > 0 {
        super::idle_poll::note_work();
    }
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Whether a proxy with these pools can relay: every target is the same
/// plain `h2c://` upstream.
pub(super) fn eligible(default: &Pool, control: &Pool, experiment: &Pool) -> bool {
    let mut all = [default, control, experiment].into_iter().flat_map(|p| p.targets());
    let Some(first) = all.next() else { return false };
    first.is_plain_h2c()
        && all.all(|t| t.is_plain_h2c() && t.authority == first.authority)
}

/// Serves one plain-TCP client connection: relayed when it opens with the
/// HTTP/2 preface while no HTTP fault is enabled, on the general path
/// otherwise (HTTP/1.1 clients).
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
    let Some(target) = target.filter(|_| relay) else {
        let client = Lingering::new(client, shutdown.clone());
        let io = TokioIo::new(Rewind::new(cin.freeze(), client));
        serve_connection(shared, io, peer, fd, "http", shutdown, None).await;
        return;
    };
    cin.advance(frame::PREFACE.len());
    let mut cout = Out::default();
    frame::write_settings(
        &mut cout.buf,
        &[
            (setting::MAX_CONCURRENT_STREAMS, MAX_CLIENT_STREAMS),
            (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        ],
    );
    frame::window_update(&mut cout.buf, 0, CONN_WINDOW - 65_535);
    let now = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut relay = Relay {
        shared: &shared,
        pool: shared.h2_pools().here(),
        key_base: mux::connection_key(),
        tx,
        rx,
        shutdown: shutdown.clone(),
        forwarding: PeerForwarding::new(peer, "http", shared.trusted_proxies()),
        peer,
        target,
        client,
        cin,
        cout,
        dec: new_decoder(),
        streams: Vec::new(),
        last_client: 0,
        blocks: frame::Blocks::default(),
        client_max_frame: frame::DEFAULT_MAX_FRAME,
        settings_seen: false,
        send_window: 65_535,
        client_initial_window: 65_535,
        recv_window: i64::from(CONN_WINDOW),
        conn_credit: 0,
        starved: false,
        draining: false,
        closing: None,
        shutdown_at: None,
        idle_since: now,
        client_blocked_since: None,
        wake: now + shared.timeouts().idle,
        scratch: Vec::with_capacity(1024),
    };
    relay.run(shutdown.clone()).await;
    // Its input may still be arriving (a flood after the GOAWAY).
    linger(&mut relay.client, shutdown).await;
}

fn new_decoder() -> hpack::Decoder {
    // Both peers see the default 4,096-byte table: the relay never
    // announces another SETTINGS_HEADER_TABLE_SIZE.
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

/// A stream forwarded upstream and not finished on both sides.
struct Stream {
    id: u32,
    /// Names the stream to its upstream connection.
    key: u64,
    /// Its upstream connection.
    up: UpTx,
    cohort: Option<Cohort>,
    /// Until the request is recorded.
    assignment: Option<Assignment>,
    arrived: Instant,
    /// The request ended (and its end went upstream).
    client_done: bool,
    /// The response ended toward the client.
    upstream_done: bool,
    /// The upstream connection is done with the stream (its response
    /// ended or it was reset there).
    up_ended: bool,
    /// The upstream connection forgot the stream.
    up_reset: bool,
    /// The final response head went to the client.
    responded: bool,
    /// A HEAD request: its response ends with the head.
    head_request: bool,
    client_seen: Instant,
    upstream_seen: Instant,
    /// What the client lets the relay send on it.
    send_window: i64,
    /// What the relay still lets the client send on it.
    recv_window: i64,
    /// The response body toward the client.
    body: Body,
    /// Reset toward the client once the queued response is out.
    reset_after: Option<u32>,
    /// Response bytes written to the client and not yet credited upstream.
    credit_up: u32,
}

struct Relay<'a> {
    shared: &'a Arc<Shared>,
    pool: Arc<mux::Pool>,
    /// This connection's part of every stream key.
    key_base: u64,
    /// Given to the upstream connections with each stream.
    tx: ClientTx,
    rx: mpsc::UnboundedReceiver<ToClient>,
    shutdown: watch::Receiver<bool>,
    forwarding: PeerForwarding,
    peer: SocketAddr,
    target: &'a Target,
    client: TcpStream,
    cin: BytesMut,
    cout: Out,
    dec: hpack::Decoder,
    streams: Vec<Stream>,
    /// Highest stream id the client opened.
    last_client: u32,
    blocks: frame::Blocks,
    /// Largest frame the relay may send the client.
    client_max_frame: usize,
    settings_seen: bool,
    /// What the client lets the relay send on the connection.
    send_window: i64,
    /// The client's INITIAL_WINDOW_SIZE.
    client_initial_window: i64,
    /// What the relay still lets the client send on the connection.
    recv_window: i64,
    /// Connection credit owed to the client.
    conn_credit: u32,
    /// A stream's response waits because too much is queued for the client.
    starved: bool,
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
        if let Err(c) = self.frames(Instant::now()) {
            self.fail(c);
        }
        let sleep = tokio::time::sleep_until(self.wake);
        tokio::pin!(sleep);
        let mut armed = self.wake;
        loop {
            if self.conn_credit >= CONN_CREDIT_STEP {
                frame::window_update(&mut self.cout.buf, 0, self.conn_credit);
                self.recv_window += i64::from(self.conn_credit);
                self.conn_credit = 0;
            }
            let written = match self.cout.flush(&self.client) {
                Ok(n) => n,
                Err(_) => {
                    self.client_gone();
                    return;
                }
            };
            if self.starved && self.cout.len() < HIGH_WATER && self.closing.is_none() {
                self.starved = false;
                self.pump_all(Instant::now());
                continue;
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
            if self.closing.is_some() && self.cout.len() == 0 {
                return;
            }
            if self.wake != armed {
                armed = self.wake;
                sleep.as_mut().reset(armed);
            }
            let reading = self.closing.is_none() && self.cout.len() < HIGH_WATER;
            let stopping = self.shutdown_at.is_none() && self.closing.is_none();
            let result = tokio::select! {
                biased;
                msg = self.rx.recv() => {
                    let now = Instant::now();
                    if let Some(m) = msg {
                        self.message(m, now);
                    }
                    for _ in 0..MESSAGE_BATCH {
                        match self.rx.try_recv() {
                            Ok(m) => self.message(m, now),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                r = self.client.readable(), if reading => match r {
                    Ok(()) => {
                        // Read after the other ready tasks have run and the
                        // driver was polled once: the client's next frames
                        // are more likely in, so one read and one upstream
                        // write carry more requests (see `mux::Conn::serve`).
                        tokio::task::yield_now().await;
                        self.read()
                    }
                    Err(_) => {
                        self.client_gone();
                        return;
                    }
                },
                r = self.client.writable(), if self.cout.len() > 0 => match r {
                    Ok(()) => Ok(()),
                    Err(_) => {
                        self.client_gone();
                        return;
                    }
                },
                _ = &mut sleep => {
                    self.sweep(Instant::now());
                    Ok(())
                }
                _ = stopped(&mut shutdown), if stopping => {
                    self.begin_shutdown();
                    Ok(())
                }
            };
            if let Err(c) = result {
                self.fail(c);
            }
        }
    }

    /// One read from the client, and the frames it completed.
    fn read(&mut self) -> Result<(), u32> {
        if self.cin.capacity() - self.cin.len() < READ_CHUNK / 4 {
            self.cin.reserve(READ_CHUNK);
        }
        match read_drained(&self.client, &mut self.cin) {
            Ok(n) if n > 0 => self.frames(Instant::now()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Ok(_) => {
                self.client_gone();
                self.closing = Some(Instant::now() + CLOSE_FLUSH);
                Ok(())
            }
            Err(_) => {
                self.client_gone();
                self.closing = Some(Instant::now());
                Ok(())
            }
        }
    }

    /// Handles every complete frame buffered from the client: `Err` with
    /// a connection error's code (RFC 9113 §5.4.1).
    fn frames(&mut self, now: Instant) -> Result<(), u32> {
        let mut buf = std::mem::take(&mut self.cin);
        // The relay never raises MAX_FRAME_SIZE from its default.
        let result = frame::each(&mut buf, frame::DEFAULT_MAX_FRAME, |h, payload| {
            frame::in_order(self.settings_seen, self.blocks.continuation_due(), h)?;
            self.frame(h, payload, now)
        });
        self.cin = buf;
        result
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Largest header block assembled before decoding: beyond it a peer is
    /// flooding CONTINUATION frames.
    fn block_limit(&self) -> usize {
        (self.shared.max_header_bytes() * 4).max(64 * 1024)
    }

    fn frame(&mut self, h: Head, payload: &[u8], now: Instant) -> Result<(), u32> {
        match h.kind {
            frame::DATA => self.client_data(h, payload, now),
            frame::HEADERS | frame::CONTINUATION => {
                if h.kind == frame::HEADERS
                    && (h.stream == 0 || h.stream.is_multiple_of(2))
                {
                    return Err(code::PROTOCOL_ERROR);
                }
                match self.blocks.feed(h, payload, self.block_limit())? {
                    Some(b) => self.client_headers(b.stream, b.end_stream, &b.bytes, now),
                    None => Ok(()),
                }
            }
            frame::PRIORITY => match (h.stream, h.len) {
                (0, _) => Err(code::PROTOCOL_ERROR),
                (_, 5) => Ok(()),
                _ => Err(code::FRAME_SIZE_ERROR),
            },
            frame::RST_STREAM => {
                if h.stream > self.last_client {
                    return Err(code::PROTOCOL_ERROR);
                }
                frame::read_rst_stream(h, payload)?;
                if let Some(i) = self.find(h.stream) {
                    // The client gave up on it.
                    self.finish(i, None, now);
                }
                Ok(())
            }
            frame::SETTINGS => self.settings(h, payload, now),
            frame::PING => frame::answer_ping(h, payload, &mut self.cout.buf),
            frame::GOAWAY => {
                frame::read_goaway(h, payload)?;
                self.draining = true;
                self.check_drained(now);
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(h, payload, now),
            frame::PUSH_PROMISE => Err(code::PROTOCOL_ERROR),
            // §4.1: unknown frame types are ignored.
            _ => Ok(()),
        }
    }

    /// The client's SETTINGS: acknowledged; its window and frame size
    /// bound what the relay sends it.
    fn settings(&mut self, h: Head, payload: &[u8], now: Instant) -> Result<(), u32> {
        let Some(set) = frame::read_settings(h, payload)? else { return Ok(()) };
        self.settings_seen = true;
        if let Some(w) = set.initial_window {
            // §6.9.2: the change applies to every open stream.
            let delta = i64::from(w) - self.client_initial_window;
            self.client_initial_window = i64::from(w);
            for s in &mut self.streams {
                s.send_window += delta;
            }
        }
        if let Some(m) = set.max_frame {
            self.client_max_frame = m;
        }
        frame::write_head(&mut self.cout.buf, 0, frame::SETTINGS, frame::ACK, 0);
        self.pump_all(now);
        Ok(())
    }

    fn window_update(
        &mut self,
        h: Head,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), u32> {
        let n = frame::read_window_update(h, payload)?;
        if h.stream == 0 {
            if n == 0 {
                return Err(code::PROTOCOL_ERROR);
            }
            self.send_window += i64::from(n);
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(code::FLOW_CONTROL_ERROR);
            }
            self.pump_all(now);
            return Ok(());
        }
        let Some(i) = self.find(h.stream) else { return Ok(()) };
        let s = &mut self.streams[i];
        s.send_window += i64::from(n);
        if n == 0 || s.send_window > i64::from(frame::MAX_WINDOW) {
            let c = if n == 0 { code::PROTOCOL_ERROR } else { code::FLOW_CONTROL_ERROR };
            frame::rst_stream(&mut self.cout.buf, h.stream, c);
            self.finish(i, None, now);
            return Ok(());
        }
        self.pump(i, now);
        Ok(())
    }

    fn client_data(&mut self, h: Head, payload: &[u8], now: Instant) -> Result<(), u32> {
        if h.stream == 0 || !frame::data_padding_ok(h.flags, payload) {
            return Err(code::PROTOCOL_ERROR);
        }
        // §6.9: every DATA byte counts against the connection window,
        // whatever its stream; credited at once (stream windows bound what
        // waits in the relay).
        self.recv_window -= h.len as i64;
        if self.recv_window < 0 {
            return Err(code::FLOW_CONTROL_ERROR);
        }
        self.conn_credit += h.len as u32;
        let end = h.flags & frame::END_STREAM != 0;
        let Some(i) = self.find(h.stream) else {
            if h.stream > self.last_client {
                return Err(code::PROTOCOL_ERROR);
            }
            // A stream the relay answered or already closed.
            return Ok(());
        };
        let s = &mut self.streams[i];
        if s.client_done {
            // DATA after END_STREAM (§5.1: STREAM_CLOSED).
            frame::rst_stream(&mut self.cout.buf, h.stream, code::STREAM_CLOSED);
            self.finish(i, None, now);
            return Ok(());
        }
        s.recv_window -= h.len as i64;
        if s.recv_window < 0 {
            frame::rst_stream(&mut self.cout.buf, h.stream, code::FLOW_CONTROL_ERROR);
            self.finish(i, None, now);
            return Ok(());
        }
        let body = frame::data_body(h.flags, payload);
        let padding = h.len - body.len();
        if padding > 0 && !end {
            // Padding never goes upstream: credited now.
            s.recv_window += padding as i64;
            frame::window_update(&mut self.cout.buf, h.stream, padding as u32);
        }
        s.client_seen = now;
        let msg = ToUp::Data { key: s.key, data: Bytes::copy_from_slice(body), end };
        let _ = s.up.send(msg);
        if end {
            s.client_done = true;
            self.close_if_done(i, now);
        }
        Ok(())
    }

    fn client_headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        now: Instant,
    ) -> Result<(), u32> {
        if let Some(i) = self.find(id) {
            // Trailers (or a protocol error).
            let t = match fields::response(&mut self.dec, block, true) {
                Err(Refused::Compression) => return Err(code::COMPRESSION_ERROR),
                Ok(t) if end_stream && !self.streams[i].client_done => t,
                _ => {
                    let code = if self.streams[i].client_done {
                        code::STREAM_CLOSED
                    } else {
                        code::PROTOCOL_ERROR
                    };
                    frame::rst_stream(&mut self.cout.buf, id, code);
                    self.finish(i, None, now);
                    return Ok(());
                }
            };
            let mut block = Vec::with_capacity(64);
            fields::encode_map(&mut block, &t.headers);
            let s = &mut self.streams[i];
            let _ = s.up.send(ToUp::Trailers { key: s.key, block });
            s.client_done = true;
            s.client_seen = now;
            self.close_if_done(i, now);
            return Ok(());
        }
        if id <= self.last_client {
            // A stream the relay answered or closed (trailers racing its
            // answer): decoded for the HPACK state, then dropped.
            return match fields::request(&mut self.dec, block) {
                Err(Refused::Compression) => Err(code::COMPRESSION_ERROR),
                _ => Ok(()),
            };
        }
        self.last_client = id;
        // Decoded even when refused: the HPACK state must follow every block.
        let decoded = fields::request(&mut self.dec, block);
        if let Err(Refused::Compression) = decoded {
            return Err(code::COMPRESSION_ERROR);
        }
        if self.draining || self.shared.fault_mode() != FaultMode::None {
            if !self.draining {
                // A fault is on: this connection ends, the client retries
                // the refused stream on a new one (the general path).
                self.draining = true;
                let last = self.streams.iter().map(|s| s.id).max().unwrap_or(0);
                frame::goaway(&mut self.cout.buf, last, code::NO_ERROR);
            }
            frame::rst_stream(&mut self.cout.buf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        if self.streams.len() >= MAX_CLIENT_STREAMS as usize {
            // §5.1.2: beyond the advertised limit.
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
        let mut request = Vec::with_capacity(256);
        fields::encode(&mut request, b":method", &head.method);
        if head.method != b"CONNECT" {
            fields::encode(&mut request, b":scheme", b"http");
        }
        fields::encode(&mut request, b":authority", authority);
        if let Some(path) = &head.path {
            fields::encode(&mut request, b":path", path);
        }
        fields::encode_map(&mut request, &head.headers);
        let key = self.key_base | u64::from(id);
        let open = Open {
            key,
            stream: id,
            client: self.tx.clone(),
            block: request,
            end: end_stream,
            cohort: assignment.cohort,
            idempotent: matches!(
                head.method.as_slice(),
                b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
            ),
            attempts: 0,
            hops: 0,
        };
        let up = self.pool.open(self.shared, &self.shutdown, open);
        self.shared.fast_requests.fetch_add(1, Ordering::Relaxed);
        self.streams.push(Stream {
            id,
            key,
            up,
            cohort: assignment.cohort,
            assignment: Some(assignment),
            arrived: now,
            client_done: end_stream,
            upstream_done: false,
            up_ended: false,
            up_reset: false,
            responded: false,
            head_request: head.method == b"HEAD",
            client_seen: now,
            upstream_seen: now,
            send_window: self.client_initial_window,
            recv_window: i64::from(STREAM_WINDOW),
            body: Body::default(),
            reset_after: None,
            credit_up: 0,
        });
        let t = self.shared.timeouts();
        let first = now + self.shared.upstream_timeout().min(t.request_body);
        self.wake = self.wake.min(first);
        Ok(())
    }

    /// A message from the stream's upstream connection.
    fn message(&mut self, msg: ToClient, now: Instant) {
        match msg {
            ToClient::Head { stream, status, block, end } => {
                if let Some(i) = self.find(stream) {
                    self.response_head(i, status, &block, end, now);
                }
            }
            ToClient::Data { stream, data, end } => {
                let Some(i) = self.find(stream) else { return };
                let s = &mut self.streams[i];
                if !s.responded || s.up_ended {
                    return;
                }
                s.upstream_seen = now;
                s.body.push(data);
                if end {
                    s.body.end(End::Data);
                    s.up_ended = true;
                }
                self.pump(i, now);
            }
            ToClient::Trailers { stream, block } => {
                let Some(i) = self.find(stream) else { return };
                let s = &mut self.streams[i];
                if s.up_ended {
                    return;
                }
                s.body.end(End::Trailers(block));
                s.up_ended = true;
                self.pump(i, now);
            }
            ToClient::Credit { stream, n } => {
                let Some(i) = self.find(stream) else { return };
                let s = &mut self.streams[i];
                if !s.client_done {
                    s.recv_window += i64::from(n);
                    frame::window_update(&mut self.cout.buf, stream, n);
                }
            }
            ToClient::Reset { stream, code } => {
                if let Some(i) = self.find(stream) {
                    self.upstream_reset(i, code, now);
                }
            }
            ToClient::Moved { stream, to } => {
                if let Some(i) = self.find(stream) {
                    self.streams[i].up = to;
                }
            }
        }
    }

    /// The upstream connection ended stream `i` with `code`.
    fn upstream_reset(&mut self, i: usize, error: u32, now: Instant) {
        let s = &mut self.streams[i];
        s.up_reset = true;
        s.up_ended = true;
        let id = s.id;
        if !s.responded {
            if error == code::REFUSED_STREAM {
                // Not processed: the client may send it again, so it is
                // not a request of the cohort.
                s.assignment = None;
                frame::rst_stream(&mut self.cout.buf, id, code::REFUSED_STREAM);
                self.finish(i, None, now);
            } else {
                // Like the general path: no response is a 502.
                let (cohort, done) = (s.cohort, s.client_done);
                self.answer(id, 502, cohort, done);
                self.finish(i, Some(502), now);
            }
            return;
        }
        if error == code::NO_ERROR && s.body.end_waiting() {
            // After a complete response (§8.1): the request body is not
            // wanted; said once the response is out.
            s.reset_after = Some(error);
            self.pump(i, now);
            return;
        }
        if !s.upstream_done || !s.client_done {
            // A response cut short is not a clean end, whatever the code.
            let c = if !s.upstream_done && error == code::NO_ERROR {
                code::INTERNAL_ERROR
            } else {
                error
            };
            frame::rst_stream(&mut self.cout.buf, id, c);
        }
        self.finish(i, None, now);
    }

    /// A response head from upstream (already shaped like the general
    /// path's by its upstream connection).
    fn response_head(
        &mut self,
        i: usize,
        status: u16,
        block: &[u8],
        end_stream: bool,
        now: Instant,
    ) {
        let id = self.streams[i].id;
        if self.streams[i].responded {
            return;
        }
        let informational = (100..200).contains(&status);
        // A response to HEAD ends with its head, as the general path
        // sends it; what the upstream adds after it is dropped.
        let end = end_stream || (!informational && self.streams[i].head_request);
        frame::header_block(&mut self.cout.buf, id, block, end, self.client_max_frame);
        if informational {
            return;
        }
        let s = &mut self.streams[i];
        s.responded = true;
        s.upstream_seen = now;
        if end_stream {
            s.up_ended = true;
        }
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
    }

    /// Writes what the client's windows allow of stream `i`'s queued
    /// response, then its end.
    fn pump(&mut self, i: usize, now: Instant) {
        let s = &mut self.streams[i];
        let room = Room {
            stream: &mut s.send_window,
            conn: &mut self.send_window,
            max_frame: self.client_max_frame,
            out_limit: HIGH_WATER,
        };
        s.credit_up += s.body.write(&mut self.cout.buf, s.id, room);
        if s.body.waiting() && self.cout.len() >= HIGH_WATER {
            self.starved = true;
        }
        if s.body.ended {
            s.upstream_done = true;
        }
        // Credit in steps; the rest of an ended response need not be.
        if s.credit_up >= CREDIT_STEP && !s.up_ended {
            let n = std::mem::take(&mut s.credit_up);
            let _ = s.up.send(ToUp::Credit { key: s.key, n });
        }
        if s.upstream_done {
            if let Some(c) = s.reset_after.take() {
                if !s.client_done {
                    frame::rst_stream(&mut self.cout.buf, s.id, c);
                }
                self.finish(i, None, now);
                return;
            }
            self.close_if_done(i, now);
        }
    }

    /// [`Self::pump`] for every stream with a queued response.
    fn pump_all(&mut self, now: Instant) {
        let ids: Vec<u32> =
            self.streams.iter().filter(|s| s.body.waiting()).map(|s| s.id).collect();
        for id in ids {
            if let Some(i) = self.find(id) {
                self.pump(i, now);
            }
        }
    }

    /// Answers a forwarded stream with `status` itself (cancelling it
    /// upstream) and records it.
    fn answer_stream(&mut self, i: usize, status: u16, now: Instant) {
        let s = &self.streams[i];
        let (id, cohort, client_done) = (s.id, s.cohort, s.client_done);
        self.answer(id, status, cohort, client_done);
        self.finish(i, Some(status), now);
    }

    /// A header-only response from the relay.
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
        frame::header_block(
            &mut self.cout.buf,
            id,
            &self.scratch,
            true,
            self.client_max_frame,
        );
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

    /// Removes stream `i`, recording it with `status` if it was not yet,
    /// and cancelling it upstream unless the upstream is done with it.
    fn finish(&mut self, i: usize, status: Option<u16>, now: Instant) {
        let s = self.streams.swap_remove(i);
        if !(s.up_reset || (s.up_ended && s.client_done)) {
            let _ = s.up.send(ToUp::Cancel { key: s.key });
        }
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
                    self.finish(i, None, now);
                } else {
                    // The client stalled its own body: a client error.
                    self.answer_stream(i, 408, now);
                }
            } else if s.responded && !s.upstream_done && now >= body_due {
                let id = s.id;
                frame::rst_stream(&mut self.cout.buf, id, code::INTERNAL_ERROR);
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
                frame::goaway(&mut self.cout.buf, self.last_client, code::NO_ERROR);
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
        self.closing.get_or_insert(now);
    }

    /// A connection error the client caused: GOAWAY, and the connection
    /// ends.
    fn fail(&mut self, c: u32) {
        let now = Instant::now();
        tracing::debug!(code = c, "HTTP/2 client connection error");
        frame::goaway(&mut self.cout.buf, self.last_client, c);
        while !self.streams.is_empty() {
            self.finish(self.streams.len() - 1, None, now);
        }
        self.draining = true;
        self.closing = Some(now + CLOSE_FLUSH);
        self.wake = self.wake.min(now + CLOSE_FLUSH);
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
