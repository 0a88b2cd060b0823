//! A futures-io stream (a yamux stream) as a tokio one, like `tokio_util::compat`, but
//! without zeroing the reader's whole buffer on every read.
//!
//! A futures reader takes an initialised `&mut [u8]`; a tokio reader is handed a `ReadBuf`
//! that may be uninitialised (hyper's read buffer is, on every call), and `Compat`
//! initialises all of it first: 8 KiB or more of `memset` per read of a 13-byte response,
//! about 3 % of tunneld's CPU in a profile of HTTPS requests over yamux. This adapter
//! initialises only about as much as recent reads returned (between [`MIN_READ`] and
//! [`MAX_READ`], doubling when a read fills it; whatever the caller initialised already is
//! offered too), so the zeroing follows the data that actually flows.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The least a read offers the inner stream.
pub const MIN_READ: usize = 2 * 1024;
/// The most a read offers the inner stream (a yamux frame is at most 256 KiB).
pub const MAX_READ: usize = 256 * 1024;

/// See the module documentation.
pub struct FuturesIo<T> {
    inner: T,
    /// How much the next read offers (and initialises, when the buffer is not).
    want: usize,
}

impl<T> FuturesIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            want: MIN_READ,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

/// `.tokio_io()` on any futures-io stream.
pub trait FuturesIoExt: Sized {
    fn tokio_io(self) -> FuturesIo<Self> {
        FuturesIo::new(self)
    }
}

impl<T: futures::AsyncRead> FuturesIoExt for T {}

impl<T: futures::AsyncRead + Unpin> AsyncRead for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let remaining = buf.remaining();
        if remaining == 0 {
            return Poll::Ready(Ok(()));
        }
        // What the caller has initialised already costs nothing to offer.
        let initialised = buf.initialized().len() - buf.filled().len();
        let offer = self.want.max(initialised).min(remaining);
        let slice = buf.initialize_unfilled_to(offer);
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, slice))?;
        debug_assert!(n <= offer, "a reader returned more than it was offered");
        let n = n.min(offer);
        if n < offer {
            // Less was there than offered: offer about that much next time.
            self.want = (n * 2).clamp(MIN_READ, MAX_READ);
        } else if offer >= self.want {
            // The whole offer was filled: offer more next time.
            self.want = (self.want * 2).min(MAX_READ);
        }
        // Otherwise the caller's small buffer cut the offer short (`read_exact` of a
        // length prefix): that says nothing about what the stream has.
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: futures::AsyncWrite + Unpin> AsyncWrite for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // futures-io has no way to ask; yamux streams write one buffer at a time.
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_everything_in_growing_and_shrinking_pieces() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = futures::io::Cursor::new(data.clone()).tokio_io();
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
        assert_eq!(
            io.want, MIN_READ,
            "the final empty read shrinks the offer back"
        );
        // A small exact read (a length prefix) does not shrink the next offer.
        let mut framed = futures::io::Cursor::new(vec![1u8; 100_000]).tokio_io();
        let mut len = [0u8; 4];
        framed.read_exact(&mut len).await.expect("read");
        assert_eq!(framed.want, MIN_READ);
        let mut big = vec![0u8; 64 * 1024];
        let n = framed.read(&mut big).await.expect("read");
        assert!(n >= MIN_READ, "offered {n}");
        assert!(
            framed.want > MIN_READ,
            "a filled offer grows: {}",
            framed.want
        );
        let mut small = futures::io::Cursor::new(vec![7u8; 13]).tokio_io();
        let mut buf = [0u8; 64];
        assert_eq!(small.read(&mut buf).await.expect("read"), 13);
        assert_eq!(&buf[..13], &[7u8; 13]);
        assert_eq!(small.read(&mut buf).await.expect("read"), 0);
    }
}
