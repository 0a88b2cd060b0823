//! A stream that writes at most a few bytes a poll and lets its task be polled again between
//! pieces: the peer's reads see TLS records (and everything else) arrive in pieces, with
//! reads that find nothing between them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Trickle<S> {
    inner: S,
    piece: usize,
    /// Whether the next write waits for a poll of its own first.
    pause: bool,
}

impl<S> Trickle<S> {
    /// Writes to `inner` at most `piece` bytes (at least 1) at a time.
    pub fn new(inner: S, piece: usize) -> Self {
        Self {
            inner,
            piece: piece.max(1),
            pause: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pause {
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(this.piece);
        let r = Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
        if matches!(r, Poll::Ready(Ok(_))) {
            this.pause = true;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
