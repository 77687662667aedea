//! Shared upstream connections of the HTTP/2 relay: each worker thread
//! keeps a [`Pool`] of HTTP/2 connections to the `h2c://` target, and the
//! streams of every client connection on that worker are multiplexed onto
//! them (as HAProxy's `http-reuse` does). One task owns each upstream
//! connection ([`Conn`]); client connections talk to it by message
//! ([`ToUp`]) and it answers per stream ([`ToClient`]).
//!
//! Flow control is per hop. The relay advertises its own windows to the
//! upstream ([`STREAM_WINDOW`] per stream, [`CONN_WINDOW`] for the
//! connection); it returns connection-level credit as DATA arrives (so one
//! slow client never stalls the streams of the others) and stream-level
//! credit only as the client connection hands the bytes on
//! ([`ToUp::Credit`]), which bounds what the relay holds per stream.
//! Request bodies go upstream within the upstream's windows; what was sent
//! is credited back to the client ([`ToClient::Credit`]).
//!
//! A connection takes streams up to the upstream's MAX_CONCURRENT_STREAMS;
//! beyond it the pool opens another one (a request that reaches a full or
//! retired connection anyway moves on when it has no body, and is refused
//! with REFUSED_STREAM when it has). A request the upstream did not
//! process (REFUSED_STREAM, a stream above a GOAWAY's last id) is sent
//! again on another connection when it had no body; so is an idempotent
//! one whose connection was lost before any response. An idle connection
//! is closed after the idle timeout, a draining one when its last stream
//! ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::fields::{self, Refused};
use super::flow::{Body, End, Room};
use super::frame::{self, code, setting, Head};
use super::{hpack, Out, CLOSE_FLUSH, HIGH_WATER, READ_CHUNK};
use crate::cohort::{Cohort, COHORT_HEADER};
use crate::traffic::server::{stopped, Shared, DRAIN_TIMEOUT};

/// Stream window the relay advertises to both peers (INITIAL_WINDOW_SIZE):
/// at most this much of one stream's body waits in the relay.
pub(super) const STREAM_WINDOW: u32 = 256 * 1024;
/// Connection window the relay advertises to both peers.
pub(super) const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Stream credit is returned in steps of at least this much.
pub(super) const CREDIT_STEP: u32 = STREAM_WINDOW / 4;
/// MAX_CONCURRENT_STREAMS assumed until the upstream's SETTINGS arrive.
const ASSUMED_MAX_STREAMS: u32 = 100;
/// Cap on streams per upstream connection whatever the upstream allows.
const MAX_STREAMS_CAP: u32 = 1000;
/// Stream ids above this are not used: the connection is retired.
const LAST_STREAM_ID: u32 = 0x7fff_ff00;

pub(super) type ClientTx = mpsc::UnboundedSender<ToClient>;
pub(super) type UpTx = mpsc::UnboundedSender<ToUp>;

/// A request for a new upstream stream.
pub(super) struct Open {
    /// Identifies the stream in later [`ToUp`] messages.
    pub(super) key: u64,
    /// The client connection's stream id, named in [`ToClient`] messages.
    pub(super) stream: u32,
    pub(super) client: ClientTx,
    /// The request's header block, encoded without the dynamic table.
    pub(super) block: Vec<u8>,
    /// The request has no body.
    pub(super) end: bool,
    /// It may be sent again after its connection was lost (no response
    /// yet): GET, HEAD, OPTIONS, PUT, DELETE, TRACE.
    pub(super) idempotent: bool,
    /// Its cohort, named in the response head (as the general path does).
    pub(super) cohort: Option<Cohort>,
    /// Times it was sent upstream (it is sent again at most once).
    pub(super) attempts: u8,
    /// Times it moved to another connection (a bound against loops).
    pub(super) hops: u8,
}

/// From a client connection to an upstream connection.
pub(super) enum ToUp {
    Open(Open),
    /// Request body bytes; `end`: the request ends with them.
    Data {
        key: u64,
        data: Bytes,
        end: bool,
    },
    /// Request trailers (an encoded block); they end the request.
    Trailers {
        key: u64,
        block: Vec<u8>,
    },
    /// The client took this many response bytes of the stream.
    Credit {
        key: u64,
        n: u32,
    },
    /// The client connection is done with the stream.
    Cancel {
        key: u64,
    },
}

/// From an upstream connection to a client connection.
pub(super) enum ToClient {
    /// A response head (final or interim), encoded for the client and
    /// shaped like the general path's; `end`: no body follows.
    Head {
        stream: u32,
        status: u16,
        block: Vec<u8>,
        end: bool,
    },
    Data {
        stream: u32,
        data: Bytes,
        end: bool,
    },
    /// Response trailers, encoded; they end the response.
    Trailers {
        stream: u32,
        block: Vec<u8>,
    },
    /// This many request bytes of the stream went upstream.
    Credit {
        stream: u32,
        n: u32,
    },
    /// The stream ended upstream without a complete response:
    /// REFUSED_STREAM when it was not processed (the client may retry),
    /// INTERNAL_ERROR when the upstream broke it or the connection was
    /// lost, or the upstream's own RST_STREAM code.
    Reset {
        stream: u32,
        code: u32,
    },
    /// The stream moved to another upstream connection.
    Moved {
        stream: u32,
        to: UpTx,
    },
}

/// A new client connection's part of its stream keys (a stream id is the
/// low 31 bits).
pub(super) fn connection_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 32
}

/// Upstream connections per worker thread.
#[derive(Default)]
pub(crate) struct Pools {
    per_thread: Mutex<Vec<(ThreadId, Arc<Pool>)>>,
}

impl Pools {
    /// This thread's pool.
    pub(super) fn here(&self) -> Arc<Pool> {
        let me = std::thread::current().id();
        let mut all = self.per_thread.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = all.iter().find(|(t, _)| *t == me) {
            return p.clone();
        }
        let pool = Arc::new(Pool::default());
        all.push((me, pool.clone()));
        pool
    }
}

/// The upstream connections of one worker, taking new streams.
#[derive(Default)]
pub(super) struct Pool {
    conns: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
    /// The upstream's last MAX_CONCURRENT_STREAMS (0: not known yet),
    /// assumed for a new connection until its own SETTINGS arrive.
    known_max: AtomicU32,
}

struct Entry {
    id: u64,
    tx: UpTx,
    load: Arc<Load>,
}

/// What a client connection needs to know of an upstream connection to
/// choose it.
struct Load {
    /// Streams given to it and not finished.
    open: AtomicU32,
    /// The upstream's MAX_CONCURRENT_STREAMS.
    max: AtomicU32,
}

impl Pool {
    /// Hands `open` to a connection with room for it, opening a new one
    /// when none has; returns that connection's sender.
    pub(super) fn open(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        shutdown: &watch::Receiver<bool>,
        mut open: Open,
    ) -> UpTx {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = 0;
        while i < conns.len() {
            let e = &conns[i];
            let open_now = e.load.open.load(Ordering::Relaxed);
            if open_now >= e.load.max.load(Ordering::Relaxed) {
                i += 1;
                continue;
            }
            e.load.open.fetch_add(1, Ordering::Relaxed);
            match e.tx.send(ToUp::Open(open)) {
                Ok(()) => return e.tx.clone(),
                Err(mpsc::error::SendError(ToUp::Open(back))) => {
                    // Its task ended: forget it.
                    open = back;
                    conns.swap_remove(i);
                }
                Err(_) => unreachable!("the message sent was an Open"),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let known = self.known_max.load(Ordering::Relaxed);
        let max = if known == 0 { ASSUMED_MAX_STREAMS } else { known };
        let load = Arc::new(Load { open: AtomicU32::new(1), max: AtomicU32::new(max) });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        conns.push(Entry { id, tx: tx.clone(), load: load.clone() });
        drop(conns);
        // The receiver is alive until the task below ends.
        let _ = tx.send(ToUp::Open(open));
        let conn =
            Conn::new(shared.clone(), self.clone(), id, load, rx, shutdown.clone());
        tokio::spawn(conn.run());
        tx
    }

    /// Takes connection `id` out of the pool: it gets no new streams.
    fn retire(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|e| e.id != id);
    }

    /// Takes an idle connection `id` out of the pool unless a client chose
    /// it meanwhile; whether it was taken out.
    fn retire_if_idle(&self, id: u64, load: &Load) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if load.open.load(Ordering::Relaxed) > 0 {
            return false;
        }
        conns.retain(|e| e.id != id);
        true
    }
}

/// A stream on an upstream connection.
struct UpStream {
    key: u64,
    cohort: Option<Cohort>,
    client: ClientTx,
    client_stream: u32,
    /// What the upstream lets the relay send on it.
    send_window: i64,
    /// The request body toward the upstream (`ended`: its end went out).
    body: Body,
    /// What the relay still lets the upstream send on it.
    recv_window: i64,
    /// Response bytes handed on and not yet credited to the upstream.
    responded: bool,
    response_ended: bool,
    /// Request bytes sent upstream and not yet credited to the client.
    client_credit: u32,
    /// The request, kept to send it again while it is header-only and
    /// unanswered.
    retry: Option<Open>,
}

/// One upstream connection and its streams.
struct Conn {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    id: u64,
    load: Arc<Load>,
    rx: mpsc::UnboundedReceiver<ToUp>,
    inb: BytesMut,
    out: Out,
    dec: hpack::Decoder,
    blocks: frame::Blocks,
    streams: AHashMap<u32, UpStream>,
    keys: AHashMap<u64, u32>,
    next_stream: u32,
    peer_max_streams: u32,
    peer_initial_window: i64,
    peer_max_frame: usize,
    send_window: i64,
    /// Connection-level credit owed to the upstream.
    conn_credit: u32,
    settings_seen: bool,
    /// Out of the pool: no new streams, closes when the last one ends.
    retired: bool,
    idle_since: Instant,
    shutdown_at: Option<Instant>,
    closing: Option<Instant>,
    /// Streams rerouted while handling one event, sent after it.
    reroute: Vec<Open>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        pool: Arc<Pool>,
        id: u64,
        load: Arc<Load>,
        rx: mpsc::UnboundedReceiver<ToUp>,
        shutdown: watch::Receiver<bool>,
    ) -> Conn {
        let max_streams = load.max.load(Ordering::Relaxed);
        Conn {
            shared,
            pool,
            id,
            load,
            rx,
            inb: BytesMut::with_capacity(READ_CHUNK),
            out: Out::default(),
            dec: super::new_decoder(),
            blocks: frame::Blocks::default(),
            streams: AHashMap::new(),
            keys: AHashMap::new(),
            next_stream: 1,
            peer_max_streams: max_streams,
            peer_initial_window: 65_535,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            send_window: 65_535,
            conn_credit: 0,
            settings_seen: false,
            retired: false,
            idle_since: Instant::now(),
            shutdown_at: None,
            closing: None,
            reroute: Vec::new(),
            shutdown,
        }
    }

    async fn run(mut self) {
        let target = self.shared.pool_for(None).pick();
        let sock = match target {
            Some(t) => {
                crate::traffic::upstream::tcp(t, self.shared.connect_timeout()).await.ok()
            }
            None => None,
        };
        let Some(sock) = sock else {
            tracing::debug!("cannot connect to the h2c upstream");
            self.pool.retire(self.id);
            self.rx.close();
            while let Some(msg) = self.rx.recv().await {
                if let ToUp::Open(o) = msg {
                    self.lost(o);
                }
            }
            return;
        };
        self.out.buf.extend_from_slice(frame::PREFACE);
        frame::write_settings(
            &mut self.out.buf,
            &[(setting::ENABLE_PUSH, 0), (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW)],
        );
        frame::window_update(&mut self.out.buf, 0, CONN_WINDOW - 65_535);
        let mut shutdown = self.shutdown.clone();
        self.serve(&sock, &mut shutdown).await;
        // Whatever is left ends with the connection.
        self.pool.retire(self.id);
        self.rx.close();
        self.connection_lost();
        while let Some(msg) = self.rx.recv().await {
            self.message(msg);
            self.connection_lost();
        }
    }

    async fn serve(&mut self, sock: &TcpStream, shutdown: &mut watch::Receiver<bool>) {
        let mut wake = self.next_wake();
        let sleep = tokio::time::sleep_until(wake);
        tokio::pin!(sleep);
        let mut gathered = false;
        loop {
            if gathered {
                // Before writing, let every other ready task, and every
                // socket that became ready meanwhile, add its requests: one
                // write then carries them all, so the upstream is woken
                // less often, and so is this thread by its replies
                // (measured: 0.08 against 0.12 sleeps per request, ~4 %
                // more h2c throughput; no change in latency at light load).
                tokio::task::yield_now().await;
                self.take_queued();
            }
            gathered = false;
            if self.out.flush(sock).is_err() {
                return;
            }
            self.send_reroutes();
            if let Some(at) = self.closing {
                if self.out.len() == 0 || Instant::now() >= at {
                    return;
                }
            }
            let next = self.next_wake();
            if next != wake {
                wake = next;
                sleep.as_mut().reset(wake);
            }
            let reading = self.closing.is_none() && self.out.len() < HIGH_WATER;
            let stopping = self.shutdown_at.is_none();
            tokio::select! {
                biased;
                msg = self.rx.recv(), if self.closing.is_none() => {
                    let Some(msg) = msg else { return };
                    self.message(msg);
                    gathered = true;
                    // Taken now and again after the yield. Leaving it all
                    // to the second take looks equivalent, but a build
                    // without this take was slower in each of 5 h2c A/B
                    // rounds (7-13 % fewer requests per second).
                    self.take_queued();
                }
                r = sock.readable(), if reading => {
                    if r.is_err() || !self.read(sock) {
                        return;
                    }
                }
                r = sock.writable(), if self.out.len() > 0 => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = &mut sleep => self.timers(Instant::now()),
                _ = stopped(shutdown), if stopping => {
                    self.shutdown_at = Some(Instant::now());
                    self.retire();
                }
            }
        }
    }

    /// Handles the messages already queued, so they go out in one write.
    fn take_queued(&mut self) {
        for _ in 0..1024 {
            match self.rx.try_recv() {
                Ok(m) => self.message(m),
                Err(_) => break,
            }
        }
    }

    /// When the timers next need a look.
    fn next_wake(&self) -> Instant {
        let far = Instant::now() + std::time::Duration::from_secs(3600);
        let idle = self
            .streams
            .is_empty()
            .then(|| self.idle_since + self.shared.timeouts().idle);
        [idle, self.shutdown_at.map(|at| at + DRAIN_TIMEOUT), self.closing]
            .into_iter()
            .flatten()
            .fold(far, Instant::min)
    }

    fn timers(&mut self, now: Instant) {
        if self.streams.is_empty()
            && now >= self.idle_since + self.shared.timeouts().idle
            && self.pool.retire_if_idle(self.id, &self.load)
        {
            self.retired = true;
            self.close(now);
        }
        if self.shutdown_at.is_some_and(|at| now >= at + DRAIN_TIMEOUT) {
            self.close(now);
        }
    }

    /// GOAWAY, then the connection ends once it is flushed.
    fn close(&mut self, now: Instant) {
        if self.closing.is_none() {
            frame::goaway(&mut self.out.buf, 0, code::NO_ERROR);
            self.closing = Some(now + CLOSE_FLUSH);
        }
    }

    /// Out of the pool; closes when its last stream ends.
    fn retire(&mut self) {
        if !self.retired {
            self.retired = true;
            self.pool.retire(self.id);
        }
        self.close_if_drained();
    }

    fn close_if_drained(&mut self) {
        if self.retired && self.streams.is_empty() {
            self.close(Instant::now());
        }
    }

    /// Hands the rerouted streams to other connections of the pool.
    fn send_reroutes(&mut self) {
        for mut open in std::mem::take(&mut self.reroute) {
            open.hops += 1;
            if open.hops > 4 {
                self.lost(open);
                continue;
            }
            let stream = open.stream;
            let client = open.client.clone();
            let to = self.pool.open(&self.shared, &self.shutdown, open);
            let _ = client.send(ToClient::Moved { stream, to });
        }
    }

    fn message(&mut self, msg: ToUp) {
        match msg {
            ToUp::Open(o) => {
                let full = self.streams.len() as u32 >= self.peer_max_streams;
                if self.retired || self.closing.is_some() || full {
                    // Chosen just before this connection left the pool or
                    // lowered its stream limit.
                    self.load.open.fetch_sub(1, Ordering::Relaxed);
                    self.move_unsent(o);
                } else {
                    self.start(o);
                }
            }
            ToUp::Data { key, data, end } => {
                let Some(s) = self.stream_of(key) else { return };
                s.body.push(data);
                if end {
                    s.body.end(End::Data);
                }
                s.retry = None;
                self.pump_key(key);
            }
            ToUp::Trailers { key, block } => {
                let Some(s) = self.stream_of(key) else { return };
                s.body.end(End::Trailers(block));
                s.retry = None;
                self.pump_key(key);
            }
            ToUp::Credit { key, n } => {
                let Some(&id) = self.keys.get(&key) else { return };
                if let Some(s) = self.streams.get_mut(&id) {
                    if !s.response_ended {
                        s.recv_window += i64::from(n);
                        frame::window_update(&mut self.out.buf, id, n);
                    }
                }
            }
            ToUp::Cancel { key } => {
                let Some(&id) = self.keys.get(&key) else { return };
                frame::rst_stream(&mut self.out.buf, id, code::CANCEL);
                self.remove(id);
            }
        }
    }

    /// A request this connection will not send goes to another one when
    /// it has no body. One with a body is refused instead (its body may
    /// already be on its way here, and only this connection would know
    /// the stream), which tells the client it may send it again.
    fn move_unsent(&mut self, o: Open) {
        if o.end {
            self.reroute.push(o);
        } else {
            reset_client(&o.client, o.stream, code::REFUSED_STREAM);
        }
    }

    fn stream_of(&mut self, key: u64) -> Option<&mut UpStream> {
        let id = self.keys.get(&key)?;
        self.streams.get_mut(id)
    }

    /// Sends a request head upstream on a new stream.
    fn start(&mut self, mut o: Open) {
        o.attempts += 1;
        let id = self.next_stream;
        self.next_stream += 2;
        frame::header_block(&mut self.out.buf, id, &o.block, o.end, self.peer_max_frame);
        let s = UpStream {
            key: o.key,
            cohort: o.cohort,
            client: o.client.clone(),
            client_stream: o.stream,
            send_window: self.peer_initial_window,
            body: if o.end { Body::ended() } else { Body::default() },
            recv_window: i64::from(STREAM_WINDOW),
            responded: false,
            response_ended: false,
            client_credit: 0,
            // A request with a body cannot be sent again: its body is
            // not kept.
            retry: o.end.then_some(o),
        };
        self.keys.insert(s.key, id);
        self.streams.insert(id, s);
        if self.next_stream > LAST_STREAM_ID {
            self.retire();
        }
    }

    /// Sends what flow control allows of stream `key`'s request body.
    fn pump_key(&mut self, key: u64) {
        if let Some(&id) = self.keys.get(&key) {
            self.pump(id);
        }
    }

    fn pump(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.body.ended {
            return;
        }
        let room = Room {
            stream: &mut s.send_window,
            conn: &mut self.send_window,
            max_frame: self.peer_max_frame,
            out_limit: usize::MAX,
        };
        s.client_credit += s.body.write(&mut self.out.buf, id, room);
        // Credit in steps; what is left of a finished body need not be.
        if s.client_credit >= CREDIT_STEP && !s.body.ended {
            let n = std::mem::take(&mut s.client_credit);
            let _ = s.client.send(ToClient::Credit { stream: s.client_stream, n });
        }
        if s.body.ended && s.response_ended {
            self.remove(id);
        }
    }

    /// Forgets stream `id`.
    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.keys.remove(&s.key);
            self.load.open.fetch_sub(1, Ordering::Relaxed);
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
        self.close_if_drained();
    }

    /// Stream `id` ends without a complete response: the client learns
    /// `code`, or the request is sent again when it was not processed
    /// (`unprocessed`) or may be repeated, with no body and no response.
    fn end_stream(&mut self, id: u32, code: u32, unprocessed: bool) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let again = match s.retry.take() {
            Some(o)
                if !s.responded && o.attempts < 2 && (unprocessed || o.idempotent) =>
            {
                Some(o)
            }
            _ => None,
        };
        let (client, stream) = (s.client.clone(), s.client_stream);
        self.remove(id);
        match again {
            Some(o) => self.reroute.push(o),
            None => reset_client(&client, stream, code),
        }
    }

    /// The connection is gone: every stream ends.
    fn connection_lost(&mut self) {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.end_stream(id, code::INTERNAL_ERROR, false);
        }
        self.send_reroutes();
    }

    fn lost(&self, o: Open) {
        reset_client(&o.client, o.stream, code::INTERNAL_ERROR);
    }

    /// One read: `false` when the connection ended.
    fn read(&mut self, sock: &TcpStream) -> bool {
        if self.inb.capacity() - self.inb.len() < READ_CHUNK / 4 {
            self.inb.reserve(READ_CHUNK);
        }
        match super::read_drained(sock, &mut self.inb) {
            Ok(0) => false,
            Ok(_) => match self.frames() {
                Ok(()) => {
                    if self.conn_credit >= super::CONN_CREDIT_STEP {
                        frame::window_update(&mut self.out.buf, 0, self.conn_credit);
                        self.conn_credit = 0;
                    }
                    true
                }
                Err(c) => {
                    tracing::debug!(code = c, "HTTP/2 upstream connection error");
                    frame::goaway(&mut self.out.buf, 0, c);
                    let _ = self.out.flush(sock);
                    false
                }
            },
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Every complete frame read: `Err` with a connection error's code.
    fn frames(&mut self) -> Result<(), u32> {
        let mut buf = std::mem::take(&mut self.inb);
        // The relay never raises MAX_FRAME_SIZE from its default.
        let result = frame::each(&mut buf, frame::DEFAULT_MAX_FRAME, |h, payload| {
            self.frame(h, payload)
        });
        self.inb = buf;
        result
    }

    fn frame(&mut self, h: Head, payload: &[u8]) -> Result<(), u32> {
        frame::in_order(self.settings_seen, self.blocks.continuation_due(), h)?;
        match h.kind {
            frame::DATA => self.data(h, payload),
            frame::HEADERS | frame::CONTINUATION => self.headers(h, payload),
            frame::PRIORITY => Ok(()),
            frame::RST_STREAM => {
                let error = frame::read_rst_stream(h, payload)?;
                let Some(s) = self.streams.get(&h.stream) else { return Ok(()) };
                if s.response_ended {
                    // The response is complete; the rest of the request
                    // body is not wanted (§8.1). The client hears it after
                    // the response.
                    let (client, stream) = (s.client.clone(), s.client_stream);
                    self.remove(h.stream);
                    reset_client(&client, stream, error);
                    return Ok(());
                }
                self.end_stream(h.stream, error, error == code::REFUSED_STREAM);
                Ok(())
            }
            frame::SETTINGS => self.settings(h, payload),
            frame::PING => frame::answer_ping(h, payload, &mut self.out.buf),
            frame::GOAWAY => {
                let last = frame::read_goaway(h, payload)?;
                let above: Vec<u32> =
                    self.streams.keys().copied().filter(|&id| id > last).collect();
                for id in above {
                    // Not processed: safe to send again.
                    self.end_stream(id, code::REFUSED_STREAM, true);
                }
                self.retire();
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let n = i64::from(frame::read_window_update(h, payload)?);
                if h.stream == 0 {
                    self.send_window += n;
                    if self.send_window > i64::from(frame::MAX_WINDOW) {
                        return Err(code::FLOW_CONTROL_ERROR);
                    }
                    let ids: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|(_, s)| s.body.waiting())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.pump(id);
                    }
                } else if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.send_window += n;
                    if s.send_window > i64::from(frame::MAX_WINDOW) {
                        frame::rst_stream(
                            &mut self.out.buf,
                            h.stream,
                            code::FLOW_CONTROL_ERROR,
                        );
                        self.end_stream(h.stream, code::INTERNAL_ERROR, false);
                    } else {
                        self.pump(h.stream);
                    }
                }
                Ok(())
            }
            // Push is disabled in the relay's SETTINGS.
            frame::PUSH_PROMISE => Err(code::PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    fn settings(&mut self, h: Head, payload: &[u8]) -> Result<(), u32> {
        let Some(set) = frame::read_settings(h, payload)? else { return Ok(()) };
        self.settings_seen = true;
        if let Some(m) = set.max_streams {
            self.peer_max_streams = m.clamp(1, MAX_STREAMS_CAP);
            self.load.max.store(self.peer_max_streams, Ordering::Relaxed);
            self.pool.known_max.store(self.peer_max_streams, Ordering::Relaxed);
        }
        if let Some(w) = set.initial_window {
            // §6.9.2: the change applies to every open stream.
            let delta = i64::from(w) - self.peer_initial_window;
            self.peer_initial_window = i64::from(w);
            for s in self.streams.values_mut() {
                s.send_window += delta;
            }
        }
        if let Some(m) = set.max_frame {
            self.peer_max_frame = m;
        }
        frame::write_head(&mut self.out.buf, 0, frame::SETTINGS, frame::ACK, 0);
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.pump(id);
        }
        Ok(())
    }

    fn data(&mut self, h: Head, payload: &[u8]) -> Result<(), u32> {
        if h.stream == 0 || !frame::data_padding_ok(h.flags, payload) {
            return Err(code::PROTOCOL_ERROR);
        }
        // §6.9: every DATA byte counts against the connection window;
        // credited at once (the stream window bounds what waits).
        self.conn_credit += h.len as u32;
        let body = frame::data_body(h.flags, payload);
        let end = h.flags & frame::END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&h.stream) else { return Ok(()) };
        if !s.responded || s.response_ended {
            // DATA before the response head, or after its end.
            frame::rst_stream(&mut self.out.buf, h.stream, code::PROTOCOL_ERROR);
            self.end_stream(h.stream, code::INTERNAL_ERROR, false);
            return Ok(());
        }
        s.recv_window -= h.len as i64;
        if s.recv_window < 0 {
            frame::rst_stream(&mut self.out.buf, h.stream, code::FLOW_CONTROL_ERROR);
            self.end_stream(h.stream, code::INTERNAL_ERROR, false);
            return Ok(());
        }
        let padding = h.len - body.len();
        if padding > 0 && !end {
            // Padding is never handed on: credited now.
            s.recv_window += padding as i64;
            frame::window_update(&mut self.out.buf, h.stream, padding as u32);
        }
        let msg = ToClient::Data {
            stream: s.client_stream,
            data: Bytes::copy_from_slice(body),
            end,
        };
        if s.client.send(msg).is_err() {
            // The client connection is gone.
            frame::rst_stream(&mut self.out.buf, h.stream, code::CANCEL);
            self.remove(h.stream);
            return Ok(());
        }
        if end {
            s.response_ended = true;
            if s.body.ended {
                self.remove(h.stream);
            }
        }
        Ok(())
    }

    fn headers(&mut self, h: Head, payload: &[u8]) -> Result<(), u32> {
        if h.kind == frame::HEADERS && h.stream == 0 {
            return Err(code::PROTOCOL_ERROR);
        }
        let limit = (self.shared.max_header_bytes() * 4).max(64 * 1024);
        match self.blocks.feed(h, payload, limit)? {
            Some(b) => self.header_block(b.stream, b.end_stream, &b.bytes),
            None => Ok(()),
        }
    }

    fn header_block(&mut self, id: u32, end: bool, block: &[u8]) -> Result<(), u32> {
        let (trailers, cohort) =
            self.streams.get(&id).map_or((false, None), |s| (s.responded, s.cohort));
        let cohort = cohort.map(|c| (COHORT_HEADER.as_bytes(), c.as_str().as_bytes()));
        // Decoded even for streams the relay forgot: the HPACK state
        // follows every block.
        let decoded = fields::response_encoded(&mut self.dec, block, trailers, cohort);
        let Some(s) = self.streams.get_mut(&id) else {
            return match decoded {
                Err(Refused::Compression) => Err(code::COMPRESSION_ERROR),
                _ => Ok(()),
            };
        };
        let head = match decoded {
            Ok(head) => head,
            Err(Refused::Compression) => return Err(code::COMPRESSION_ERROR),
            Err(Refused::Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed HTTP/2 response");
                frame::rst_stream(&mut self.out.buf, id, code::PROTOCOL_ERROR);
                self.end_stream(id, code::INTERNAL_ERROR, false);
                return Ok(());
            }
        };
        let informational = head.status.is_some_and(|st| (100..200).contains(&st));
        if (trailers && !end) || (informational && (end || head.status == Some(101))) {
            // Trailers always end a stream; an interim response never
            // does, and 101 has no meaning in HTTP/2 (§8.1).
            frame::rst_stream(&mut self.out.buf, id, code::PROTOCOL_ERROR);
            self.end_stream(id, code::INTERNAL_ERROR, false);
            return Ok(());
        }
        let stream = s.client_stream;
        let msg = match head.status {
            Some(status) if !trailers => {
                ToClient::Head { stream, status, block: head.block, end }
            }
            _ => ToClient::Trailers { stream, block: head.block },
        };
        if !informational {
            s.responded = true;
            s.retry = None;
        }
        if s.client.send(msg).is_err() {
            frame::rst_stream(&mut self.out.buf, id, code::CANCEL);
            self.remove(id);
            return Ok(());
        }
        if end {
            s.response_ended = true;
            if s.body.ended {
                self.remove(id);
            }
        }
        Ok(())
    }
}

/// Tells a client connection its stream ended upstream with `code` (a
/// client connection that is gone needs telling nothing).
fn reset_client(client: &ClientTx, stream: u32, code: u32) {
    let _ = client.send(ToClient::Reset { stream, code });
}
