//! Body wrappers of the proxy: [`IdleBody`] bounds the pause between two
//! pieces of a streamed body (request bodies from clients, response bodies
//! from upstreams), and [`ClientBody`] is what a client receives, carrying
//! the connection's [`Busy`] mark until the response is fully sent (the
//! idle keep-alive timer only runs while nothing is in flight).
//!
//! The timer is only armed when the inner body is not ready, so a response
//! that arrives with its head costs no timer at all, and once armed it is
//! moved only when it fires (see [`IdleBody`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Which side of the proxy a body comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

/// A streamed body failed or stalled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the client's request body is malformed or was cut: {0}")]
    Client(#[source] hyper::Error),
    #[error("the client sent no request body data for {0:?}")]
    ClientIdle(Duration),
    #[error("reading the upstream response body failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("the upstream sent no response body data for {0:?}")]
    UpstreamIdle(Duration),
}

impl BodyError {
    /// The client, not the upstream, is at fault.
    pub(crate) fn is_client(&self) -> bool {
        matches!(self, BodyError::Client(_) | BodyError::ClientIdle(_))
    }
}

pin_project! {
    /// A body whose consecutive frames may be at most `timeout` apart.
    pub(crate) struct IdleBody<B> {
        #[pin]
        inner: B,
        // Boxed so the body stays `Unpin` (hyper's HTTP/2 client needs
        // that); allocated only the first time the body makes us wait.
        sleep: Option<Pin<Box<Sleep>>>,
        // When the last frame arrived, once the timer exists. The timer
        // is armed once and moved only when it fires early (frames came
        // meanwhile), so a streaming body costs one `Instant::now()` per
        // frame instead of a timer-wheel re-registration per frame.
        last_frame: Option<Instant>,
        timeout: Duration,
        side: Side,
    }
}

impl<B> IdleBody<B> {
    pub(crate) fn new(inner: B, timeout: Duration, side: Side) -> Self {
        IdleBody { inner, sleep: None, last_frame: None, timeout, side }
    }
}

impl<B: Body<Data = Bytes, Error = hyper::Error>> Body for IdleBody<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll_frame(cx) {
            if this.sleep.is_some() {
                *this.last_frame = Some(Instant::now());
            }
            let side = *this.side;
            return Poll::Ready(r.map(|r| {
                r.map_err(|e| match side {
                    Side::Client => BodyError::Client(e),
                    Side::Upstream => BodyError::Upstream(e),
                })
            }));
        }
        let sleep = this.sleep.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(Instant::now() + *this.timeout))
        });
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer ran out; frames since it was armed move it on.
            let due = this.last_frame.map(|t| t + *this.timeout);
            match due {
                Some(due) if due > sleep.deadline() => sleep.as_mut().reset(due),
                _ => {
                    return Poll::Ready(Some(Err(match this.side {
                        Side::Client => BodyError::ClientIdle(*this.timeout),
                        Side::Upstream => BodyError::UpstreamIdle(*this.timeout),
                    })))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a client connection is doing, for the idle keep-alive timer.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Requests in flight, including responses still streaming.
    busy: AtomicUsize,
    /// When the connection last became idle, in ms since `epoch`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// When the connection became idle, or `None` while it is busy.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// Marks one request in flight until dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    pub(crate) fn enter(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body as the client receives it: streamed from the
    /// upstream (idle-bounded) or made by the proxy.
    pub struct ClientBody {
        #[pin]
        inner: Either<IdleBody<Incoming>, Full<Bytes>>,
        busy: Option<Busy>,
        request: Option<Incoming>,
    }
}

impl ClientBody {
    pub(crate) fn streamed(body: Incoming, idle: Duration) -> ClientBody {
        ClientBody {
            inner: Either::Left(IdleBody::new(body, idle, Side::Upstream)),
            busy: None,
            request: None,
        }
    }

    pub(crate) fn full(bytes: Bytes) -> ClientBody {
        ClientBody { inner: Either::Right(Full::new(bytes)), busy: None, request: None }
    }

    /// Keeps an unread request body until the response is done: dropping
    /// it earlier makes HTTP/2 reset the stream with CANCEL before the
    /// answer goes out; afterwards it is a clean NO_ERROR.
    pub(crate) fn keep_request(&mut self, request: Incoming) {
        self.request = Some(request);
    }

    /// Keeps the connection busy until this body is done or dropped.
    pub(crate) fn hold(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = r {
            // Done: the connection may count as idle from now on.
            this.busy.take();
            this.request.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
