//! The HTTP/1.1 fast path: a plain-TCP client connection is served by one
//! loop that parses request heads with `httparse`, writes them to its own
//! upstream connection and copies the response back, with no per-request
//! task, channel, header map or timer wheel churn: each connection's
//! timeouts re-arm lazily ([`deadline`]). It exists because the proxy sits
//! on production request paths and hyper's general client/server pair
//! costs about twice the user-space CPU per request (see docs/proxy.md,
//! "Benchmark").
//!
//! It takes only plain requests ([`request`] lists the rules) and only on a
//! proxy without client TLS, in edge mode, with plain `http://` upstreams.
//! The first request it does not take hands the whole connection, with the
//! bytes already read, to the general path ([`super::server`]), which then
//! serves it to the end; so every rule of the general path (upgrades,
//! bodies, trailers, 400/431 answers, faults) applies unchanged. The cohort
//! drawn for that request goes along, so it is drawn once.
//!
//! Responses: any framing (length, chunked — re-encoded by [`chunked`] —,
//! until-close, none); hop-by-hop headers removed ([`response`]). Timeouts
//! are the general path's: idle keep-alive, client header, connect,
//! upstream head and response-body idle. A pooled upstream connection that
//! fails before any byte of the response is retried once on a fresh one
//! (every request here is a `GET` or `HEAD`).

mod chunked;
mod deadline;
mod request;
mod response;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use self::chunked::ChunkedDecoder;
use self::deadline::Deadline;
pub(crate) use self::request::FaultMode;
use self::request::{Forward, Plan, Rules};
use self::response::{ForClient, Framing};
use super::config::CohortKey;
use super::fault::{HttpFault, HttpFaultKind};
use super::forwarded::PeerForwarding;
use super::linger::Lingering;
use super::rewind::Rewind;
use super::server::{record_request, reset_on_close, serve_connection, stopped, Shared};
use super::upstream::{Target, KEEP_ALIVE_MARGIN};
use crate::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};

/// Idle upstream connections kept per client connection.
const MAX_IDLE: usize = 4;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// How much of a body is read per system call.
const READ_CHUNK: usize = 16 * 1024;

/// Fault kinds the fast path applies itself; while another kind is
/// enabled, experiment requests take the general path.
pub(crate) fn applies(kind: &HttpFaultKind) -> bool {
    matches!(
        kind,
        HttpFaultKind::Latency { .. }
            | HttpFaultKind::Error { .. }
            | HttpFaultKind::Abort
            | HttpFaultKind::Reset
    )
}

/// Whether a proxy with these targets can use the fast path at all.
pub(crate) fn eligible<'a>(mut targets: impl Iterator<Item = &'a Target>) -> bool {
    targets.all(Target::is_plain_h1)
}

/// One pooled upstream connection.
struct Upstream {
    /// Which target (its address in the shared pools).
    key: usize,
    stream: TcpStream,
    retire_at: Option<Instant>,
}

fn key_of(target: &Target) -> usize {
    target as *const Target as usize
}

/// How a connection left the fast path.
enum Ended {
    Closed,
    /// To the general path, with the cohort drawn for the pending request.
    General(Option<super::server::Assignment>),
}

/// What the response exchange left behind.
enum After {
    /// Ready for the next request.
    KeepAlive,
    /// The client connection must close (asked to, until-close body, a
    /// broken upstream body, a client that went away, the abort fault).
    Close,
    /// The reset fault: close with RST.
    Reset,
}

/// Per-connection state of the fast path.
struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    /// Bytes from the client not consumed yet.
    rbuf: BytesMut,
    /// Bytes from the upstream of the current response.
    ubuf: BytesMut,
    /// The upstream request head being sent.
    req: Vec<u8>,
    /// What goes to the client next.
    out: Vec<u8>,
    upstreams: Vec<Upstream>,
    /// The timers of waits on the client (idle, header) and on the
    /// upstream (response head, body idle).
    client_wait: Deadline,
    upstream_wait: Deadline,
}

/// Serves one plain-TCP client connection, on the fast path while its
/// requests allow and on the general path from the first that does not.
pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let fd = stream.as_raw_fd();
    let forwarding = PeerForwarding::new(peer, "http", shared.trusted_proxies());
    let mut conn = Conn {
        client: stream,
        peer,
        rbuf: BytesMut::with_capacity(8 * 1024),
        ubuf: BytesMut::with_capacity(8 * 1024),
        req: Vec::with_capacity(1024),
        out: Vec::with_capacity(2 * 1024),
        upstreams: Vec::new(),
        client_wait: Deadline::new(),
        upstream_wait: Deadline::new(),
    };
    match conn.run(&shared, &forwarding, &mut shutdown).await {
        Ended::Closed => {}
        Ended::General(assignment) => {
            let prefix = conn.rbuf.split().freeze();
            let client = Lingering::new(conn.client, shutdown.clone());
            let io = TokioIo::new(Rewind::new(prefix, client));
            serve_connection(shared, io, peer, fd, "http", shutdown, assignment).await;
        }
    }
}

impl Conn {
    async fn run(
        &mut self,
        shared: &Shared,
        forwarding: &PeerForwarding,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let (key_header, key_cookie) = match shared.cohort_key() {
            CohortKey::Header(h) => (Some(h.as_str()), None),
            CohortKey::Cookie(c) => (None, Some(c.as_str())),
            CohortKey::ClientIp => (None, None),
        };
        loop {
            let rules = Rules {
                max_header_bytes: shared.max_header_bytes(),
                key_header,
                key_cookie,
                forwarded: shared.forwarded(),
                faults: shared.fault_mode(),
            };
            let forward =
                match self.next_request(shared, rules, forwarding, shutdown).await {
                    Ok(f) => f,
                    Err(ended) => return ended,
                };
            let arrived = Instant::now();
            shared.fast_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.rbuf.advance(forward.len);
            match self.exchange(shared, &forward, arrived).await {
                After::KeepAlive if !forward.close && !*shutdown.borrow() => {}
                After::Reset => {
                    reset_on_close(self.client.as_raw_fd());
                    return Ended::Closed;
                }
                _ => {
                    let _ = self.client.shutdown().await;
                    return Ended::Closed;
                }
            }
        }
    }

    /// Reads until a complete request head is buffered and plans it. The
    /// idle timeout runs while nothing of a head has arrived, the client
    /// header timeout from its first byte.
    async fn next_request(
        &mut self,
        shared: &Shared,
        rules: Rules<'_>,
        forwarding: &PeerForwarding,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Forward, Ended> {
        let timeouts = shared.timeouts();
        let mut deadline = Instant::now()
            + if self.rbuf.is_empty() { timeouts.idle } else { timeouts.client_header };
        loop {
            if !self.rbuf.is_empty() {
                self.req.clear();
                let peer = self.peer;
                let assign = |key: Option<&[u8]>| shared.assign_key(key, peer);
                match request::plan(&self.rbuf, rules, forwarding, assign, &mut self.req)
                {
                    Plan::Forward(f) => return Ok(f),
                    Plan::General(a) => return Err(Ended::General(a)),
                    Plan::Partial => {}
                }
            }
            let was_empty = self.rbuf.is_empty();
            self.rbuf.reserve(4096);
            let read = tokio::select! {
                biased;
                r = self.client_wait.run(deadline, self.client.read_buf(&mut self.rbuf)) => r,
                _ = stopped(shutdown), if was_empty => return Err(Ended::Closed),
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
                    super::idle_poll::note_work();
                    if was_empty {
                        deadline = Instant::now() + timeouts.client_header;
                    }
                }
                // Closed, broken, or silent past its timeout: like hyper's
                // header timeout, the connection just closes.
                _ => return Err(Ended::Closed),
            }
        }
    }

    /// Sends the planned request upstream and streams the response back;
    /// an experiment request first rolls the enabled faults.
    async fn exchange(
        &mut self,
        shared: &Shared,
        f: &Forward,
        arrived: Instant,
    ) -> After {
        let cohort = f.assignment.cohort;
        // The `x-chaos-fault` value; allocates only when a fault fires.
        let mut tags = String::new();
        if cohort == Some(Cohort::Experiment) && shared.fault_mode() != FaultMode::None {
            let faults = shared.faults();
            if let Some(after) =
                self.apply_faults(shared, &faults, f, arrived, &mut tags).await
            {
                return after;
            }
        }
        let Some(target) = shared.pool_for(cohort).pick() else {
            let body = "chaos proxy: no upstream configured for this cohort\n";
            return self.fail(shared, f, arrived, 502, body, &tags).await;
        };
        let for_client = ForClient {
            head_request: f.head_request,
            cohort,
            close: f.close,
            faults: &tags,
        };
        let up = target.authority.as_str();
        let (mut upstream, mut reused) = match self.take(target) {
            Some(u) => (u, true),
            None => match self.connect(shared, target).await {
                Ok(u) => (u, false),
                Err(e) => {
                    let body = format!("chaos proxy: upstream {up} failed: {e}\n");
                    return self.fail(shared, f, arrived, 502, &body, &tags).await;
                }
            },
        };
        let deadline = Instant::now() + shared.upstream_timeout();
        // The response head; a reused connection that fails before its
        // first byte gets one more try on a fresh connection.
        let head = loop {
            self.ubuf.clear();
            self.out.clear();
            let exchange = send_and_read_head(
                &mut upstream.stream,
                &mut self.upstream_wait,
                &self.req,
                &mut self.ubuf,
                deadline,
                for_client,
                &mut self.out,
            );
            // Like the general path, a request whose client gives up
            // before the response head counts as answered by nothing.
            let Some(result) =
                until_client_leaves(exchange, &mut self.client, &mut self.rbuf).await
            else {
                record_request(shared, arrived, f.assignment, None);
                return After::Close;
            };
            match result {
                Ok(head) => break head,
                Err(HeadFailure::Closed(_)) if reused && self.ubuf.is_empty() => {
                    tracing::debug!("retrying on a fresh upstream connection");
                    reused = false;
                    match self.connect(shared, target).await {
                        Ok(u) => upstream = u,
                        Err(e) => {
                            let body =
                                format!("chaos proxy: upstream {up} failed: {e}\n");
                            return self
                                .fail(shared, f, arrived, 502, &body, &tags)
                                .await;
                        }
                    }
                }
                Err(HeadFailure::TimedOut) => {
                    let body = format!(
                        "chaos proxy: upstream {up} sent no response within {:?}\n",
                        shared.upstream_timeout()
                    );
                    return self.fail(shared, f, arrived, 504, &body, &tags).await;
                }
                Err(failure) => {
                    let body = format!("chaos proxy: upstream {up} failed: {failure}\n");
                    return self.fail(shared, f, arrived, 502, &body, &tags).await;
                }
            }
        };
        record_request(shared, arrived, f.assignment, Some(head.status));
        let body_idle = shared.timeouts().response_body;
        let body_start = head.len;
        let upstream_ok = match head.framing {
            Framing::Empty => self.ubuf.len() == body_start,
            Framing::Length(n) => {
                let have = (self.ubuf.len() - body_start) as u64;
                let now = have.min(n) as usize;
                self.out.extend_from_slice(&self.ubuf[body_start..body_start + now]);
                if self.client.write_all(&self.out).await.is_err() {
                    return After::Close;
                }
                let extra = have > n;
                match self
                    .copy_length(&mut upstream.stream, n - now as u64, body_idle)
                    .await
                {
                    Ok(clean) => clean && !extra,
                    Err(()) => return After::Close,
                }
            }
            Framing::Chunked => {
                // Fast-path requests never carry `TE: trailers`.
                let mut decoder = ChunkedDecoder::new(false);
                match self
                    .copy_chunked(
                        &mut upstream.stream,
                        &mut decoder,
                        body_start,
                        body_idle,
                    )
                    .await
                {
                    Ok(clean) => clean,
                    Err(()) => return After::Close,
                }
            }
            Framing::UntilClose => {
                self.out.extend_from_slice(&self.ubuf[body_start..]);
                if self.client.write_all(&self.out).await.is_ok() {
                    let _ = self.copy_until_close(&mut upstream.stream, body_idle).await;
                }
                return After::Close;
            }
        };
        if head.framing == Framing::Empty
            && self.client.write_all(&self.out).await.is_err()
        {
            return After::Close;
        }
        if upstream_ok && !head.upstream_close {
            upstream.retire_at = head.keep_alive_secs.map(|s| {
                Instant::now() + Duration::from_secs(s).saturating_sub(KEEP_ALIVE_MARGIN)
            });
            self.put(upstream);
        }
        After::KeepAlive
    }

    /// Copies the rest of a `Content-Length` body; `Ok(false)` when the
    /// upstream sent more than it announced (the extra bytes are dropped,
    /// never forwarded, and the connection is not reused).
    async fn copy_length(
        &mut self,
        up: &mut TcpStream,
        mut left: u64,
        idle: Duration,
    ) -> Result<bool, ()> {
        while left > 0 {
            self.ubuf.clear();
            self.ubuf.reserve(READ_CHUNK);
            let n =
                read_within(&mut self.upstream_wait, up, &mut self.ubuf, idle).await?;
            let take = (n as u64).min(left) as usize;
            self.client.write_all(&self.ubuf[..take]).await.map_err(|_| ())?;
            left -= take as u64;
            if n > take {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Decodes and re-encodes a chunked body; `Ok(true)` when the upstream
    /// connection ended exactly at the end of the body.
    async fn copy_chunked(
        &mut self,
        up: &mut TcpStream,
        decoder: &mut ChunkedDecoder,
        start: usize,
        idle: Duration,
    ) -> Result<bool, ()> {
        let used = decoder.decode(&self.ubuf[start..], &mut self.out).map_err(|e| {
            tracing::debug!(error = %e, "upstream chunked body refused");
        })?;
        let mut clean = start + used == self.ubuf.len();
        loop {
            self.client.write_all(&self.out).await.map_err(|_| ())?;
            self.out.clear();
            if decoder.is_done() {
                return Ok(clean);
            }
            self.ubuf.clear();
            self.ubuf.reserve(READ_CHUNK);
            read_within(&mut self.upstream_wait, up, &mut self.ubuf, idle).await?;
            let used = decoder.decode(&self.ubuf, &mut self.out).map_err(|e| {
                tracing::debug!(error = %e, "upstream chunked body refused");
            })?;
            clean = used == self.ubuf.len();
        }
    }

    async fn copy_until_close(
        &mut self,
        up: &mut TcpStream,
        idle: Duration,
    ) -> Result<(), ()> {
        loop {
            self.ubuf.clear();
            self.ubuf.reserve(READ_CHUNK);
            match self.upstream_wait.within(idle, up.read_buf(&mut self.ubuf)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => self.client.write_all(&self.ubuf).await.map_err(|_| ())?,
                _ => return Err(()),
            }
        }
    }

    /// Rolls the enabled faults for an experiment request, as the general
    /// path's fault layer does: latencies add up and are waited out (a
    /// client leaving meanwhile is recorded without a response), then the
    /// first error, abort or reset ends the request. `Some` when a fault
    /// answered (or dropped) it; the applied faults' labels go to `tags`.
    async fn apply_faults(
        &mut self,
        shared: &Shared,
        faults: &[HttpFault],
        f: &Forward,
        arrived: Instant,
        tags: &mut String,
    ) -> Option<After> {
        // A kind enabled between planning and now is left to the next
        // request (this one cannot move to the general path any more).
        let fired: Vec<&HttpFault> =
            faults.iter().filter(|x| applies(&x.kind) && x.fires()).collect();
        let mut delay = Duration::ZERO;
        for x in fired.iter().filter(|x| matches!(x.kind, HttpFaultKind::Latency { .. }))
        {
            delay += x.kind.draw_delay();
            push_tag(tags, x.kind.label().as_str());
            shared.recorder.record_fault(x.kind.label());
        }
        if !delay.is_zero() {
            let wait = tokio::time::sleep(delay);
            if until_client_leaves(wait, &mut self.client, &mut self.rbuf).await.is_none()
            {
                record_request(shared, arrived, f.assignment, None);
                return Some(After::Close);
            }
        }
        let terminal = fired.iter().find(|x| {
            matches!(
                x.kind,
                HttpFaultKind::Error { .. } | HttpFaultKind::Abort | HttpFaultKind::Reset
            )
        })?;
        shared.recorder.record_fault(terminal.kind.label());
        push_tag(tags, terminal.kind.label().as_str());
        Some(match &terminal.kind {
            HttpFaultKind::Error { status, body } => {
                let status = http::StatusCode::from_u16(*status)
                    .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE)
                    .as_u16();
                self.fail(shared, f, arrived, status, body, tags).await
            }
            HttpFaultKind::Reset => {
                record_request(shared, arrived, f.assignment, None);
                After::Reset
            }
            _ => {
                record_request(shared, arrived, f.assignment, None);
                After::Close
            }
        })
    }

    /// A response the proxy makes itself (502/504, the error fault), as the
    /// general path words it; `f` is recorded as answered with `status`.
    async fn fail(
        &mut self,
        shared: &Shared,
        f: &Forward,
        arrived: Instant,
        status: u16,
        body: &str,
        faults: &str,
    ) -> After {
        record_request(shared, arrived, f.assignment, Some(status));
        use std::io::Write;
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        self.out.clear();
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\n",
            body.len()
        );
        if let Some(c) = f.assignment.cohort {
            let _ = write!(self.out, "{COHORT_HEADER}: {}\r\n", c.as_str());
        }
        if !faults.is_empty() {
            let _ = write!(self.out, "{FAULT_HEADER}: {faults}\r\n");
        }
        if f.close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body.as_bytes());
        match self.client.write_all(&self.out).await {
            Ok(()) => After::KeepAlive,
            Err(_) => After::Close,
        }
    }

    fn take(&mut self, target: &Target) -> Option<Upstream> {
        let now = Instant::now();
        self.upstreams.retain(|u| u.retire_at.is_none_or(|t| now < t));
        let key = key_of(target);
        let pos = self.upstreams.iter().position(|u| u.key == key)?;
        Some(self.upstreams.swap_remove(pos))
    }

    fn put(&mut self, upstream: Upstream) {
        if self.upstreams.len() < MAX_IDLE {
            self.upstreams.push(upstream);
        }
    }

    async fn connect(
        &self,
        shared: &Shared,
        target: &Target,
    ) -> Result<Upstream, super::upstream::UpstreamError> {
        let stream = super::upstream::tcp(target, shared.connect_timeout()).await?;
        Ok(Upstream { key: key_of(target), stream, retire_at: None })
    }
}

fn push_tag(tags: &mut String, label: &str) {
    if !tags.is_empty() {
        tags.push(',');
    }
    tags.push_str(label);
}

/// Why no response head arrived.
#[derive(Debug, thiserror::Error)]
enum HeadFailure {
    /// Closed or broken before a complete head.
    #[error("{0}")]
    Closed(std::io::Error),
    #[error("no response head in time")]
    TimedOut,
    #[error("{0}")]
    Invalid(response::HeadError),
}

/// Writes the request head and reads until a final response head is
/// parsed; informational (1xx) heads go into `out` ahead of it.
async fn send_and_read_head(
    up: &mut TcpStream,
    timer: &mut Deadline,
    req: &[u8],
    ubuf: &mut BytesMut,
    deadline: Instant,
    for_client: ForClient<'_>,
    out: &mut Vec<u8>,
) -> Result<response::Head, HeadFailure> {
    match timer.run(deadline, up.write_all(req)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(HeadFailure::Closed(e)),
        Err(_) => return Err(HeadFailure::TimedOut),
    }
    let mut parsed = 0;
    loop {
        if ubuf.len() > parsed {
            match response::parse(&ubuf[parsed..], for_client, out) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    parsed += head.len;
                    continue;
                }
                Ok(Some(mut head)) => {
                    head.len += parsed;
                    return Ok(head);
                }
                Ok(None) if ubuf.len() - parsed > MAX_RESPONSE_HEAD => {
                    return Err(HeadFailure::Invalid(response::HeadError::Parse(
                        "response head too large".into(),
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Invalid(e)),
            }
        }
        ubuf.reserve(READ_CHUNK);
        match timer.run(deadline, up.read_buf(ubuf)).await {
            Ok(Ok(0)) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response head",
                );
                return Err(HeadFailure::Closed(e));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadFailure::Closed(e)),
            Err(_) => return Err(HeadFailure::TimedOut),
        }
    }
}

/// Runs `exchange` while watching the client: `None` if the client closes
/// (or breaks) its connection first. Bytes it sends meanwhile (a pipelined
/// next request) are kept in `rbuf`, up to a bound after which it is no
/// longer watched.
async fn until_client_leaves<F: std::future::Future>(
    exchange: F,
    client: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> Option<F::Output> {
    tokio::pin!(exchange);
    let mut watching = true;
    loop {
        if rbuf.len() >= MAX_RESPONSE_HEAD {
            watching = false;
        }
        if watching {
            rbuf.reserve(4096);
        }
        tokio::select! {
            biased;
            r = &mut exchange => return Some(r),
            r = client.read_buf(rbuf), if watching => match r {
                Ok(n) if n > 0 => {}
                _ => return None,
            },
        }
    }
}

/// One read of at least a byte within `idle`.
async fn read_within(
    timer: &mut Deadline,
    up: &mut TcpStream,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<usize, ()> {
    match timer.within(idle, up.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(n),
        _ => Err(()),
    }
}
