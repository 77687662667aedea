//! The proxy itself: accept loop, per-request cohort assignment, the fault
//! layer for the experiment cohort, forwarding over upstream HTTP/1.1 or
//! h2c connections owned by each client connection ([`super::upstream`]),
//! upgrade tunnels (WebSocket), recording, timeouts and shutdown. Clients
//! may speak HTTP/1.1 or HTTP/2. Client connections run on the current
//! runtime or, with [`Proxy::start_on`], are spread over current-thread
//! worker runtimes ([`super::workers`]). [`serve_connection`] is generic
//! over the connection's IO, so a TLS layer can hand it decrypted streams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Limited};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assign::{assign_position, cohort_at, random_unit};
use super::baggage;
use super::body::{Activity, BodyError, Busy, ClientBody, IdleBody, Side};
use super::config::{
    CohortKey, ConfigError, ForwardedMode, IpNet, ProxyConfig, ProxyMode, Timeouts,
};
use super::fast::FaultMode;
use super::fault::{HttpFault, HttpFaultKind};
use super::forwarded::PeerForwarding;
use super::headers::{
    check_host, is_upgrade, strip_hop_by_hop, COHORT_HEADER_UNDERSCORE,
};
use super::linger::Lingering;
use super::malformed::damage;
use super::upstream::{for_h1, is_idempotent, Target, UpBody, UpstreamConns};
use crate::cohort::{Cohort, COHORT_HEADER, FAULT_HEADER};
use crate::metrics::{Outcome, Recorder};

/// Largest upstream body the malformed faults will buffer.
const MAX_BUFFERED_BODY: usize = 64 * 1024 * 1024;
/// How long shutdown waits for in-flight requests.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for admin requests on {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: std::io::Error },
    #[error("refusing the admin endpoint: {0}")]
    AdminExposed(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Response bodies: streamed from upstream, or made by the proxy.
pub type ProxyBody = ClientBody;

/// The cohort header as a name, for the hop-by-hop rules.
pub(super) const COHORT: HeaderName = HeaderName::from_static(COHORT_HEADER);

#[derive(Debug)]
pub(super) struct Pool {
    targets: Vec<Target>,
    next: AtomicUsize,
}

impl Pool {
    fn new(targets: Vec<Target>) -> Pool {
        Pool { targets, next: AtomicUsize::new(0) }
    }

    pub(super) fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Round robin.
    pub(super) fn pick(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        self.targets.get(i)
    }
}

/// State shared by every connection and the admin endpoint.
pub(crate) struct Shared {
    default_pool: Pool,
    control_pool: Pool,
    experiment_pool: Pool,
    cohort_key: CohortKey,
    key_header: Option<HeaderName>,
    experiment: f64,
    control: f64,
    mode: ProxyMode,
    salt: u64,
    upstream_timeout: Duration,
    connect_timeout: Duration,
    timeouts: Timeouts,
    forwarded: ForwardedMode,
    trusted_proxies: Vec<IpNet>,
    builder: auto::Builder<TokioExecutor>,
    /// Client-facing TLS (`None`: plain TCP).
    tls: Option<tokio_rustls::TlsAcceptor>,
    faults: RwLock<Arc<Vec<HttpFault>>>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) admin_token: Option<String>,
    active: AtomicUsize,
    /// [`FaultMode`] of `faults` as a `u8` (kept with it, read per request
    /// by the fast path without taking the lock).
    faults_mode: AtomicU8,
    max_header_bytes: usize,
    /// Plain HTTP/1.1 client connections start on [`super::fast`].
    fast: bool,
    /// HTTP/2 client connections (prior knowledge) start on
    /// [`super::h2relay`].
    h2relay: bool,
    /// Requests the fast paths (HTTP/1.1 and the HTTP/2 relay) answered.
    pub(super) fast_requests: AtomicU64,
    /// The relay's upstream connections, per worker thread.
    h2_pools: super::h2relay::Pools,
}

impl Shared {
    pub(crate) fn faults(&self) -> Arc<Vec<HttpFault>> {
        self.faults.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_faults(&self, faults: Vec<HttpFault>) {
        let mut guard = self.faults.write().unwrap_or_else(|p| p.into_inner());
        self.faults_mode.store(fault_mode(&faults) as u8, Ordering::Relaxed);
        *guard = Arc::new(faults);
    }

    /// Copy-on-write toggle so the hot path only ever clones an `Arc`.
    pub(crate) fn set_enabled(&self, id: &str, on: bool) -> bool {
        let mut guard = self.faults.write().unwrap_or_else(|p| p.into_inner());
        if !guard.iter().any(|f| f.id == id) {
            return false;
        }
        let mut next: Vec<HttpFault> = guard.as_ref().clone();
        for f in next.iter_mut().filter(|f| f.id == id) {
            f.enabled = on;
        }
        self.faults_mode.store(fault_mode(&next) as u8, Ordering::Relaxed);
        *guard = Arc::new(next);
        true
    }

    pub(crate) fn fractions(&self) -> (f64, f64) {
        (self.control, self.experiment)
    }

    /// The cohort of a request in edge mode (sticky by key), with the key's
    /// position in [0, 1) for the key-level sample-ratio check.
    pub(super) fn assign(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
    ) -> Assignment {
        let key = match &self.cohort_key {
            CohortKey::Header(_) => self
                .key_header
                .as_ref()
                .and_then(|h| headers.get(h))
                .map(|v| v.as_bytes()),
            CohortKey::Cookie(name) => cookie_value(headers, name),
            CohortKey::ClientIp => None,
        };
        self.assign_key(key, peer)
    }

    /// The cohort for a request whose key (header or cookie value) is
    /// `key`; with a client-IP key, the peer's address is the key.
    pub(super) fn assign_key(&self, key: Option<&[u8]>, peer: SocketAddr) -> Assignment {
        let pos = match &self.cohort_key {
            CohortKey::ClientIp => Some(match peer.ip() {
                std::net::IpAddr::V4(a) => assign_position(&a.octets(), self.salt),
                std::net::IpAddr::V6(a) => assign_position(&a.octets(), self.salt),
            }),
            _ => key.map(|k| assign_position(k, self.salt)),
        };
        let pos = pos.unwrap_or_else(random_unit);
        Assignment {
            cohort: cohort_at(pos, self.experiment, self.control),
            key_position: Some(pos),
        }
    }

    pub(super) fn cohort_key(&self) -> &CohortKey {
        &self.cohort_key
    }

    pub(super) fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    pub(super) fn forwarded(&self) -> ForwardedMode {
        self.forwarded
    }

    pub(super) fn fault_mode(&self) -> FaultMode {
        match self.faults_mode.load(Ordering::Relaxed) {
            0 => FaultMode::None,
            1 => FaultMode::Fast,
            _ => FaultMode::General,
        }
    }

    pub(super) fn h2_pools(&self) -> &super::h2relay::Pools {
        &self.h2_pools
    }

    pub(super) fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    pub(super) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    pub(super) fn upstream_timeout(&self) -> Duration {
        self.upstream_timeout
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(super) fn pool_for(&self, cohort: Option<Cohort>) -> &Pool {
        let specific = match cohort {
            Some(Cohort::Control) => &self.control_pool,
            Some(Cohort::Experiment) => &self.experiment_pool,
            None => &self.default_pool,
        };
        if specific.targets.is_empty() {
            &self.default_pool
        } else {
            specific
        }
    }
}

/// Whether the fast path can apply every enabled fault itself.
fn fault_mode(faults: &[HttpFault]) -> FaultMode {
    let mut enabled = faults.iter().filter(|f| f.enabled).peekable();
    if enabled.peek().is_none() {
        return FaultMode::None;
    }
    if enabled.all(|f| super::fast::applies(&f.kind)) {
        FaultMode::Fast
    } else {
        FaultMode::General
    }
}

/// Makes closing `fd` send RST instead of FIN (the reset fault).
pub(super) fn reset_on_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is an open socket owned by the caller's connection,
    // which outlives this call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| cookie_in(v.as_bytes(), name))
}

/// The value of cookie `name` in one `Cookie` line: visible ASCII only
/// (like `HeaderValue::to_str`), `;`-separated `name=value` pairs.
pub(super) fn cookie_in<'v>(line: &'v [u8], name: &str) -> Option<&'v [u8]> {
    if !line.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
        return None;
    }
    line.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
    })
}

/// Per-connection facts the fault layer needs.
struct ConnInfo {
    peer: SocketAddr,
    /// The cohort the fast path drew for the request it handed over.
    preassigned: std::sync::Mutex<Option<Assignment>>,
    fd: RawFd,
    kill: Notify,
    upstream: UpstreamConns,
    forwarding: PeerForwarding,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// Ends the connection without a response; `reset` makes the kernel
    /// send RST instead of FIN.
    fn kill(&self, reset: bool) {
        if reset {
            // `fd` belongs to the TcpStream the connection task owns, which
            // stays open at least until `kill` is observed.
            reset_on_close(self.fd);
        }
        self.kill.notify_one();
    }
}

fn synthetic(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ClientBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A gRPC trailers-only response failing the call with `code`.
fn grpc_abort(code: u8, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ClientBody::full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// `grpc-message` encoding: printable ASCII except `%` as is, the rest as
/// `%XX` of its UTF-8 bytes (gRPC over HTTP/2 spec).
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body error behind a failed upstream exchange, if a body failed.
fn body_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = err.source();
    }
    None
}

/// Walks an error's sources for a timeout, to tell 504 from 502 by cause.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// What became of one request.
// Boxing the response would cost an allocation per request; the enum only
// lives on the stack of one request's future.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Respond(Response<ProxyBody>),
    /// The connection is being aborted or reset.
    Drop,
}

async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    cohort: Option<Cohort>,
    upgrade: bool,
) -> (Response<ProxyBody>, bool) {
    let Some(target) = shared.pool_for(cohort).pick() else {
        let body = "chaos proxy: no upstream configured for this cohort\n".to_string();
        return (synthetic(StatusCode::BAD_GATEWAY, body), false);
    };
    // HTTP/2 clients carry the host in :authority; keep it for the upstream.
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    if !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(target.authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    // HTTP/2 clients may pipeline streams: only they need more than one
    // upstream connection at a time.
    let sequential = req.version() != http::Version::HTTP_2;
    // Origin or absolute form, HTTP/1.1 or HTTP/2: decided by the
    // upstream connection's protocol (`super::upstream::for_h1`/`for_h2`).
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let empty = body.is_end_stream();
    let retryable = empty && !upgrade && is_idempotent(&parts.method);
    let body: UpBody = if empty {
        Either::Right(Empty::new())
    } else {
        Either::Left(IdleBody::new(body, shared.timeouts.request_body, Side::Client))
    };
    let req = Request::from_parts(parts, body);
    let up = &target.authority;
    let result = match client_upgrade {
        Some(_) if target.h2 => {
            let body =
                format!("chaos proxy: upstream {up} speaks h2c; upgrades need http://\n");
            return (synthetic(StatusCode::BAD_GATEWAY, body), false);
        }
        Some(_) => {
            let mut req = req;
            for_h1(&mut req);
            let send = conn.upstream.send_upgrade(target, req, shared.connect_timeout);
            tokio::time::timeout(shared.upstream_timeout, send).await
        }
        None => {
            let send = conn.upstream.send(
                target,
                req,
                shared.connect_timeout,
                sequential,
                retryable,
            );
            tokio::time::timeout(shared.upstream_timeout, send).await
        }
    };
    match result {
        Ok(Ok(mut resp)) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if let (true, Some(client)) = (switching, client_upgrade) {
                let upstream = hyper::upgrade::on(&mut resp);
                tokio::spawn(tunnel(client, upstream));
                let (mut parts, _) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers, true, &COHORT);
                return (
                    Response::from_parts(parts, ClientBody::full(Bytes::new())),
                    false,
                );
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false, &COHORT);
            let body = ClientBody::streamed(body, shared.timeouts.response_body);
            (Response::from_parts(parts, body), true)
        }
        Ok(Err(e)) => match body_error(&e) {
            // The client's own body broke (bad chunked framing, a stall):
            // a client error, not the upstream's.
            Some(b) if b.is_client() => {
                let status = match b {
                    BodyError::ClientIdle(_) => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::BAD_REQUEST,
                };
                (synthetic(status, format!("chaos proxy: {b}\n")), false)
            }
            _ if is_timeout(&e) => {
                let body = format!(
                    "chaos proxy: upstream {up} timed out: {}\n",
                    error_chain(&e)
                );
                (synthetic(StatusCode::GATEWAY_TIMEOUT, body), false)
            }
            _ => {
                let body =
                    format!("chaos proxy: upstream {up} failed: {}\n", error_chain(&e));
                (synthetic(StatusCode::BAD_GATEWAY, body), false)
            }
        },
        Err(_) => {
            let body = format!(
                "chaos proxy: upstream {up} sent no response within {:?}\n",
                shared.upstream_timeout
            );
            (synthetic(StatusCode::GATEWAY_TIMEOUT, body), false)
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the
/// upstream's until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = TokioIo::new(c);
            let mut u = TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// A request's cohort and, in edge mode, where its key fell in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Assignment {
    pub(crate) cohort: Option<Cohort>,
    pub(crate) key_position: Option<f64>,
}

/// Edge mode assigns the cohort by key (and overwrites any client-sent
/// cohort header and baggage member); sidecar mode trusts what the edge set.
fn assign_request(
    shared: &Shared,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
) -> Assignment {
    match shared.mode {
        ProxyMode::Edge => {
            let taken = conn.preassigned.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Assignment { cohort, key_position } =
                taken.unwrap_or_else(|| shared.assign(req.headers(), conn.peer));
            mark_cohort(req.headers_mut(), cohort);
            Assignment { cohort, key_position }
        }
        // The header first; baggage when a service on the way propagated
        // only its OpenTelemetry context.
        ProxyMode::Sidecar => Assignment {
            // The edge's header is trusted, a look-alike never is.
            cohort: req
                .headers()
                .get(COHORT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Cohort::parse(v.trim()))
                .or_else(|| baggage::cohort(req.headers())),
            key_position: None,
        },
    }
}

/// Edge mode: the request carries the cohort we drew, in our header and
/// in W3C baggage, whatever the client sent.
pub(super) fn mark_cohort(headers: &mut http::HeaderMap, cohort: Option<Cohort>) {
    // Clients must not pick their own cohort.
    headers.remove(COHORT_HEADER);
    headers.remove(COHORT_HEADER_UNDERSCORE);
    if let Some(c) = cohort {
        headers.insert(COHORT_HEADER, HeaderValue::from_static(c.as_str()));
    }
    // The same in W3C baggage, for OpenTelemetry-instrumented services.
    baggage::set_cohort(headers, cohort);
}

/// Records a request exactly once: with its status when it is answered,
/// or, when the client gives up first (hyper then drops the request's
/// future), as a request without a response at the moment it was
/// abandoned. Without this, requests that a latency fault pushed past the
/// client's timeout would vanish from the experiment cohort instead of
/// counting as the failures the client saw.
struct Unrecorded<'a> {
    shared: &'a Shared,
    arrived: Instant,
    assignment: Option<Assignment>,
}

impl Unrecorded<'_> {
    fn record(&mut self, status: Option<u16>) {
        if let Some(a) = self.assignment.take() {
            record_request(self.shared, self.arrived, a, status);
        }
    }
}

/// Records one request of `assignment`'s cohort, answered with `status`
/// (`None`: abandoned without a response), timed from `arrived`.
pub(super) fn record_request(
    shared: &Shared,
    arrived: Instant,
    a: Assignment,
    status: Option<u16>,
) {
    let outcome = Outcome { status, latency: arrived.elapsed() };
    if let Some(pos) = a.key_position {
        shared.recorder.note_key(pos);
    }
    shared.recorder.record_keyed(a.cohort, arrived, outcome, a.key_position);
}

impl Drop for Unrecorded<'_> {
    fn drop(&mut self) {
        self.record(None);
    }
}

async fn process(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    cohort: Option<Cohort>,
    upgrade: bool,
) -> Reply {
    // Roll every enabled fault once; only the experiment cohort is eligible.
    let faults =
        if cohort == Some(Cohort::Experiment) { Some(shared.faults()) } else { None };
    let fired: Vec<&HttpFault> = faults
        .as_deref()
        .map(|fs| fs.iter().filter(|f| f.fires()).collect())
        .unwrap_or_default();
    let mut tags: Vec<&'static str> = Vec::new();

    let mut delay = Duration::ZERO;
    for f in fired.iter().filter(|f| matches!(f.kind, HttpFaultKind::Latency { .. })) {
        delay += f.kind.draw_delay();
        tags.push(f.kind.label().as_str());
        shared.recorder.record_fault(f.kind.label());
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let terminal = fired.iter().find(|f| {
        matches!(
            f.kind,
            HttpFaultKind::Error { .. }
                | HttpFaultKind::Abort
                | HttpFaultKind::Reset
                | HttpFaultKind::Grpc { .. }
        )
    });
    let mut resp = if let Some(f) = terminal {
        shared.recorder.record_fault(f.kind.label());
        tags.push(f.kind.label().as_str());
        let mut resp = match &f.kind {
            HttpFaultKind::Error { status, body } => {
                let status = StatusCode::from_u16(*status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                synthetic(status, body.clone())
            }
            HttpFaultKind::Grpc { code, message } => grpc_abort(*code, message),
            HttpFaultKind::Reset => {
                conn.kill(true);
                return Reply::Drop;
            }
            _ => {
                conn.kill(false);
                return Reply::Drop;
            }
        };
        resp.body_mut().keep_request(req.into_body());
        resp
    } else {
        let (resp, from_upstream) = forward(shared, conn, req, cohort, upgrade).await;
        let modes: Vec<_> = fired
            .iter()
            .filter_map(|f| match f.kind {
                HttpFaultKind::Malformed { mode } => Some(mode),
                _ => None,
            })
            .collect();
        if from_upstream && !modes.is_empty() {
            let (mut parts, body) = resp.into_parts();
            // Boxed: rare, and large enough to bloat every request's future.
            match Box::pin(Limited::new(body, MAX_BUFFERED_BODY).collect()).await {
                Ok(collected) => {
                    let mut bytes = collected.to_bytes();
                    for mode in modes {
                        bytes = damage(mode, &mut parts.headers, bytes);
                        tags.push(mode.label().as_str());
                        shared.recorder.record_fault(mode.label());
                    }
                    Response::from_parts(parts, ClientBody::full(bytes))
                }
                Err(e) => synthetic(
                    StatusCode::BAD_GATEWAY,
                    format!("chaos proxy: reading the upstream body failed: {e}\n"),
                ),
            }
        } else {
            resp
        }
    };
    if !tags.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&tags.join(",")) {
            resp.headers_mut().insert(FAULT_HEADER, v);
        }
    }
    if let Some(c) = cohort {
        resp.headers_mut().insert(COHORT_HEADER, HeaderValue::from_static(c.as_str()));
    }
    Reply::Respond(resp)
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Refused before cohort assignment, like hyper's own 400s for heads it
    // cannot parse: not a request of any cohort.
    if let Err(e) = check_host(req.version(), req.headers()) {
        return Ok(synthetic(StatusCode::BAD_REQUEST, format!("chaos proxy: {e}\n")));
    }
    let busy = Busy::enter(&conn.activity);
    let arrived = Instant::now();
    let upgrade = is_upgrade(req.version(), req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade, &COHORT);
    conn.forwarding.apply(shared.forwarded, req.headers_mut());
    let assignment = assign_request(&shared, &conn, &mut req);
    let mut unrecorded =
        Unrecorded { shared: &shared, arrived, assignment: Some(assignment) };
    let reply = process(&shared, &conn, req, assignment.cohort, upgrade).await;
    unrecorded.record(match &reply {
        Reply::Respond(r) => Some(r.status().as_u16()),
        Reply::Drop => None,
    });
    match reply {
        Reply::Respond(mut r) => {
            r.body_mut().hold(busy);
            Ok(r)
        }
        // HTTP/1: the connection task drops the connection (and this future)
        // as soon as it sees the kill notification. HTTP/2 runs streams as
        // their own tasks, so this one must still end: it answers into a
        // connection that no longer exists.
        Reply::Drop => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(synthetic(
                StatusCode::BAD_GATEWAY,
                "connection dropped by a fault\n".into(),
            ))
        }
    }
}

/// Serves one client connection over any IO (plain TCP here; a TLS layer
/// passes its decrypted stream). `fd` is the socket under it (for the
/// reset fault), `proto` what the client speaks (`http`/`https`, for
/// `X-Forwarded-Proto`); `preassigned` the cohort of the first request if
/// the fast path already drew it.
pub(crate) async fn serve_connection<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    fd: RawFd,
    proto: &'static str,
    mut shutdown: watch::Receiver<bool>,
    preassigned: Option<Assignment>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let info = Arc::new(ConnInfo {
        peer,
        preassigned: std::sync::Mutex::new(preassigned),
        fd,
        kill: Notify::new(),
        upstream: UpstreamConns::default(),
        forwarding: PeerForwarding::new(peer, proto, &shared.trusted_proxies),
        activity: Arc::new(Activity::new()),
    });
    let svc = {
        let shared = shared.clone();
        let info = info.clone();
        // Boxed once here: hyper moves the service future (HTTP/2 spawns
        // it as a task per stream), and a pointer moves cheaply.
        service_fn(move |req| Box::pin(handle(shared.clone(), info.clone(), req)))
    };
    let conn = shared.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle_timeout = shared.timeouts.idle;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        // Biased: the connection is what wakes this task nearly every time;
        // polling it first skips the branch shuffle on the hot path.
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = info.kill.notified() => {
                tracing::debug!(%peer, "connection dropped by a fault");
                return;
            }
            _ = stopped(&mut shutdown) => break,
            _ = idle.as_mut() => {
                // Nothing in flight for the whole timeout: close (a
                // connection that never sent a byte included).
                match info.activity.idle_since() {
                    Some(since) if since + idle_timeout <= Instant::now() => {
                        tracing::debug!(%peer, "closing an idle client connection");
                        break;
                    }
                    Some(since) => idle.as_mut().reset(since + idle_timeout),
                    None => idle.as_mut().reset(Instant::now() + idle_timeout),
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
}

/// Serves one accepted TCP connection, terminating TLS first when the
/// proxy has a certificate ([`serve_connection`] is generic over the
/// stream, so the plain path carries no TLS branch per read).
async fn serve_tcp(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    rx: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    match &shared.tls {
        None if shared.fast => super::fast::serve(shared, stream, peer, rx).await,
        None if shared.h2relay => super::h2relay::serve(shared, stream, peer, rx).await,
        None => {
            let io = TokioIo::new(Lingering::new(stream, rx.clone()));
            serve_connection(shared, io, peer, fd, "http", rx, None).await
        }
        // Under TLS too: the socket lingers when hyper drops the
        // connection with the client still sending.
        Some(acceptor) => {
            match super::tls::accept(acceptor, Lingering::new(stream, rx.clone())).await {
                Ok(tls) => {
                    serve_connection(
                        shared,
                        TokioIo::new(tls),
                        peer,
                        fd,
                        "https",
                        rx,
                        None,
                    )
                    .await
                }
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            }
        }
    }
}

/// Resolves once shutdown is requested (or the handle is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Entry point of the proxy.
pub struct Proxy;

impl Proxy {
    /// Binds the listener (and the admin endpoint, if configured) and
    /// starts serving on the current tokio runtime.
    pub async fn start(
        cfg: ProxyConfig,
        recorder: Arc<Recorder>,
    ) -> Result<ProxyHandle, ProxyError> {
        Proxy::start_on(cfg, recorder, Vec::new()).await
    }

    /// Like [`Proxy::start`], but serves client connections on `workers`
    /// (round robin; e.g. [`super::workers::Workers::handles`]); the
    /// accept loop and the admin endpoint stay on the current runtime.
    /// With no workers, connections are served on the current runtime.
    pub async fn start_on(
        cfg: ProxyConfig,
        recorder: Arc<Recorder>,
        workers: Vec<Handle>,
    ) -> Result<ProxyHandle, ProxyError> {
        if cfg.pools.default.is_empty()
            && (cfg.pools.control.is_empty() || cfg.pools.experiment.is_empty())
        {
            return Err(ConfigError::NoUpstream.into());
        }
        // Enforced here too (before anything binds), so no caller can
        // skip the rule.
        if let Some(admin) = &cfg.admin {
            if let Some(why) = super::admin::exposure_refusal(
                admin.listen,
                admin.allow_remote,
                admin.token.is_some(),
            ) {
                return Err(ProxyError::AdminExposed(why));
            }
        }
        // TLS files are read before anything binds: bad ones fail the start.
        let [default_pool, control_pool, experiment_pool] =
            super::tls::pool_targets(&cfg)?.map(Pool::new);
        let tls = super::tls::acceptor(&cfg)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ProxyError::Bind { addr: cfg.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr: cfg.listen, source })?;

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(cfg.timeouts.client_header)
            // The read buffer bounds the request head (431 beyond it).
            .max_buf_size(cfg.max_header_bytes);
        builder.http2().timer(TokioTimer::new()).max_header_list_size(
            u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX),
        );

        // Both fast paths: plain TCP from clients, edge mode, not switched off.
        let fast_paths = cfg.fast_path && tls.is_none() && cfg.mode == ProxyMode::Edge;
        let fast = fast_paths
            && super::fast::eligible(
                [&default_pool, &control_pool, &experiment_pool]
                    .into_iter()
                    .flat_map(|p| p.targets.iter()),
            );
        let h2relay = fast_paths
            && super::h2relay::eligible(&default_pool, &control_pool, &experiment_pool);
        let key_header = match &cfg.cohort_key {
            CohortKey::Header(h) => HeaderName::from_bytes(h.as_bytes()).ok(),
            _ => None,
        };
        let shared = Arc::new(Shared {
            default_pool,
            control_pool,
            experiment_pool,
            cohort_key: cfg.cohort_key.clone(),
            key_header,
            experiment: cfg.experiment_fraction,
            control: cfg.control_fraction,
            mode: cfg.mode,
            salt: cfg.seed,
            upstream_timeout: cfg.upstream_timeout,
            connect_timeout: cfg.connect_timeout,
            timeouts: cfg.timeouts,
            forwarded: cfg.forwarded,
            trusted_proxies: cfg.trusted_proxies.clone(),
            builder,
            tls,
            faults: RwLock::new(Arc::new(Vec::new())),
            recorder,
            admin_token: cfg.admin.as_ref().and_then(|a| a.token.clone()),
            active: AtomicUsize::new(0),
            faults_mode: AtomicU8::new(FaultMode::None as u8),
            max_header_bytes: cfg.max_header_bytes,
            fast,
            h2relay,
            fast_requests: AtomicU64::new(0),
            h2_pools: Default::default(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let (admin_addr, admin_task) = match &cfg.admin {
            Some(admin) => {
                let l = TcpListener::bind(admin.listen).await.map_err(|source| {
                    ProxyError::AdminBind { addr: admin.listen, source }
                })?;
                let addr = l.local_addr().map_err(|source| ProxyError::AdminBind {
                    addr: admin.listen,
                    source,
                })?;
                let task = tokio::spawn(super::admin::serve(
                    l,
                    shared.clone(),
                    shutdown_rx.clone(),
                ));
                (Some(addr), Some(task))
            }
            None => (None, None),
        };

        let accept_task =
            tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx, workers));
        tracing::info!(%local_addr, ?admin_addr, "chaos proxy listening");
        Ok(ProxyHandle {
            local_addr,
            admin_addr,
            shared,
            shutdown_tx,
            accept_task,
            admin_task,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    workers: Vec<Handle>,
) {
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let rx = shutdown.clone();
                    if workers.is_empty() {
                        shared.active.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            serve_tcp(shared.clone(), stream, peer, rx).await;
                            shared.active.fetch_sub(1, Ordering::Relaxed);
                        });
                        continue;
                    }
                    // The stream is registered with this runtime's reactor;
                    // re-register it with the worker's.
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                            continue;
                        }
                    };
                    let worker = &workers[next % workers.len()];
                    next = next.wrapping_add(1);
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    worker.spawn(async move {
                        match TcpStream::from_std(std_stream) {
                            Ok(stream) => {
                                serve_tcp(shared.clone(), stream, peer, rx).await
                            }
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "cannot adopt a connection")
                            }
                        }
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// A running proxy.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Whether plain-TCP HTTP/2 clients are relayed frame by frame to a
    /// shared h2c upstream (see `h2relay`), rather than served by hyper.
    pub fn relays_http2(&self) -> bool {
        self.shared.h2relay
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin endpoint listens, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Replaces the whole fault set (takes effect for the next request).
    pub fn set_faults(&self, faults: Vec<HttpFault>) {
        self.shared.set_faults(faults);
    }

    /// The current fault set.
    pub fn faults(&self) -> Vec<HttpFault> {
        self.shared.faults().as_ref().clone()
    }

    /// Switches a fault on or off; false if no fault has that id.
    pub fn set_enabled(&self, id: &str, on: bool) -> bool {
        self.shared.set_enabled(id, on)
    }

    /// Requests answered on the HTTP/1.1 fast path so far (the rest went
    /// through the general path).
    pub fn fast_path_requests(&self) -> u64 {
        self.shared.fast_requests.load(Ordering::Relaxed)
    }

    /// The recorder this proxy writes to.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.shared.recorder
    }

    /// Stops accepting, lets in-flight requests finish (up to 5 s), then
    /// returns. Faults are cleared first so nothing is injected while
    /// draining.
    pub async fn shutdown(self) {
        self.shared.set_faults(Vec::new());
        let _ = self.shutdown_tx.send(true);
        let _ = self.accept_task.await;
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.shared.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_several() {
        let mut h = http::HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=abc; b=2"));
        assert_eq!(cookie_value(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&h, "zz"), None);
    }

    #[test]
    fn classifies_timeouts_by_cause_not_by_message() {
        let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert!(is_timeout(&e));
        let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "timed out");
        assert!(!is_timeout(&e));
    }
}
