//! Our own cap on open streams per session.
//!
//! yamux 0.14 ends the whole connection when a new stream would exceed `max_num_streams`
//! (on either side: an outbound open fails fatally, an inbound one terminates the session).
//! One visitor flood must never cut a tunnel, so tunneld counts the streams it hands out with
//! a semaphore of `max_streams` permits and refuses the next visitor alone, while yamux's own
//! ceiling is set to twice that (streams that are closing linger in yamux's table until their
//! drop is processed, and the peer may hold its end a little longer).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tunneld_core::session::OpenError;

/// Takes a stream slot, or refuses with `TooManyStreams` (or `Offline` once the session's
/// semaphore is closed).
pub(crate) fn acquire(slots: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, OpenError> {
    slots.clone().try_acquire_owned().map_err(|e| match e {
        TryAcquireError::NoPermits => OpenError::TooManyStreams,
        TryAcquireError::Closed => OpenError::Offline,
    })
}

/// A stream that gives its slot back when dropped.
pub(crate) struct Counted<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, slot: OwnedSemaphorePermit) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
