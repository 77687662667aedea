//! Lingering close, as nginx does it.
//!
//! A connection the proxy ends while the client is still sending (after
//! an HTTP/2 GOAWAY, the rest of a flood; after a 400 or 431 with the
//! request still arriving) must not simply be closed: closing a socket
//! with unread input makes the kernel answer with a reset, which can
//! destroy the last response before the client reads it, so the client
//! never learns why. So the write side is shut first (the client reads the
//! answer, then end of stream), and what still arrives is dropped until
//! the client closes, for at most [`LINGER`] and [`LINGER_BYTES`], or
//! until the proxy shuts down (its exit closes everything anyway).
//!
//! The HTTP/2 relay lingers after every connection ([`linger`]). The
//! general path hands its socket to hyper, which closes it by dropping it,
//! so there the socket is wrapped in [`Lingering`] (beneath the TLS layer
//! when the proxy terminates TLS), which lingers when it is dropped with
//! input still unread, and closes at once otherwise (the usual end: the
//! client closed, or went idle).

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::server::stopped;

/// How long a closed connection's late input is still read and dropped.
const LINGER: Duration = Duration::from_millis(500);
/// How much of it, at most.
const LINGER_BYTES: usize = 4 << 20;
/// The sink for a flood; smaller input goes through a stack buffer.
const LARGE_SINK: usize = 64 * 1024;

/// Shuts the write side of `client`, then reads and drops its input until
/// it closes; see the module docs for the bounds.
pub(super) async fn linger(client: &mut TcpStream, mut shutdown: watch::Receiver<bool>) {
    if client.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    // Most clients have closed by now, or send little more: a small
    // buffer reads that, and only a flood gets a large one.
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    let mut left = LINGER_BYTES;
    while left > 0 {
        let sink: &mut [u8] = if large.is_empty() { &mut small } else { &mut large };
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, client.read(sink)) => r,
            _ = stopped(&mut shutdown) => return,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {
                left = left.saturating_sub(n);
                if n == small.len() && large.is_empty() {
                    large = vec![0u8; LARGE_SINK];
                }
            }
            _ => return,
        }
    }
}

/// A client socket that lingers when dropped with unread input (see the
/// module docs); reads and writes go straight to the socket.
pub(super) struct Lingering {
    /// `None` only once dropped.
    stream: Option<TcpStream>,
    shutdown: watch::Receiver<bool>,
}

impl Lingering {
    pub(super) fn new(stream: TcpStream, shutdown: watch::Receiver<bool>) -> Self {
        Lingering { stream: Some(stream), shutdown }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else { return };
        if unread_input(&stream) == 0 || resets_on_close(&stream) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let shutdown = self.shutdown.clone();
        runtime.spawn(async move { linger(&mut stream, shutdown).await });
    }
}

/// Bytes received and not read yet (0 when that cannot be told).
fn unread_input(stream: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: the socket is open (owned by `stream`) and FIONREAD writes
    // one `c_int` to the pointer, which points to `n`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Whether the socket is set to close with a reset (the reset fault's
/// `SO_LINGER` 0), which lingering must not turn into an orderly close.
fn resets_on_close(stream: &TcpStream) -> bool {
    let mut l = libc::linger { l_onoff: 0, l_linger: 0 };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: the socket is open (owned by `stream`); `l` and `len` are
    // valid for the option's size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut l as *mut libc::linger).cast(),
            &mut len,
        )
    };
    rc == 0 && l.l_onoff != 0 && l.l_linger == 0
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    /// Dropped with input unread, the server side still delivers its last
    /// answer and then end of stream, and every write of a client that
    /// keeps sending succeeds: no reset.
    #[tokio::test]
    async fn a_drop_with_unread_input_lingers_instead_of_resetting() {
        let (mut client, server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let mut server = Lingering::new(server, rx);
        client.write_all(b"first part of a request ").await.expect("write");
        server.write_all(b"HTTP/1.1 431 Too Large\r\n\r\n").await.expect("answer");
        // Wait until the input is in the server's receive queue.
        while unread_input(server.stream.as_ref().expect("open")) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(server);
        let junk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            client.write_all(&junk).await.expect("no reset while the client sends");
        }
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("answer, then end of stream");
        assert_eq!(got, b"HTTP/1.1 431 Too Large\r\n\r\n");
    }

    #[tokio::test]
    async fn a_drop_with_nothing_unread_closes_at_once() {
        let (mut client, server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        drop(Lingering::new(server, rx));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("end of stream");
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn the_reset_fault_still_resets() {
        let (mut client, server) = pair().await;
        let (_tx, rx) = watch::channel(false);
        client.write_all(b"unread").await.expect("write");
        let server = Lingering::new(server, rx);
        while unread_input(server.stream.as_ref().expect("open")) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        super::super::server::reset_on_close(
            server.stream.as_ref().expect("open").as_raw_fd(),
        );
        drop(server);
        let mut buf = [0u8; 16];
        let err = client.read(&mut buf).await.expect_err("a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
