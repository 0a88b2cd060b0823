//! Stream slots: a session's cap on the visitor streams it has open, as a semaphore of
//! that many permits (tunneld counts the streams it hands out itself, so the next visitor is
//! refused alone before the transport's own ceiling could end the session), and the stream
//! that holds its permit for its life. Used by the yamux and h2-reverse transports.

use crate::session::OpenError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Takes a stream slot, or refuses with `TooManyStreams` (or `Offline` once the session's
/// semaphore is closed).
pub fn acquire(slots: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, OpenError> {
    slots.clone().try_acquire_owned().map_err(|e| match e {
        TryAcquireError::NoPermits => OpenError::TooManyStreams,
        TryAcquireError::Closed => OpenError::Offline,
    })
}

/// A stream that gives its slot back when dropped.
pub struct Counted<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Counted<T> {
    pub fn new(inner: T, slot: OwnedSemaphorePermit) -> Self {
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
