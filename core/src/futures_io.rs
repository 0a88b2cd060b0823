//! A futures-io stream (a yamux stream) as a tokio one, like `tokio_util::compat`, but
//! without zeroing the reader's whole buffer on every read.
//!
//! A futures reader takes an initialised `&mut [u8]`; a tokio reader is handed a `ReadBuf`
//! that may be uninitialised (hyper's read buffer is, on every call), and `Compat`
//! initialises all of it first: 8 KiB or more of `memset` per read of a 13-byte response,
//! about 3 % of tunneld's CPU per HTTPS request over yamux. This adapter initialises only
//! about as much as recent reads returned (between [`MIN_READ`] and [`MAX_READ`], doubling
//! when a read fills it), so the zeroing follows the data that actually flows.

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
        let want = self.want.min(buf.remaining());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let slice = buf.initialize_unfilled_to(want);
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, slice))?;
        // A read that filled what was offered asks for more next time; a small one for less.
        self.want = if n == want {
            (want * 2).min(MAX_READ)
        } else {
            (n * 2).clamp(MIN_READ, MAX_READ)
        };
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
        let mut small = futures::io::Cursor::new(vec![7u8; 13]).tokio_io();
        let mut buf = [0u8; 64];
        assert_eq!(small.read(&mut buf).await.expect("read"), 13);
        assert_eq!(&buf[..13], &[7u8; 13]);
        assert_eq!(small.read(&mut buf).await.expect("read"), 0);
    }
}
