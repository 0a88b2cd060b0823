//! Coalesces yamux's small writes before TLS.
//!
//! yamux 0.14 writes each frame as two writes (the 12-byte header, then the body) and
//! flushes once per frame. Straight onto a TLS stream that is two TLS records and two
//! syscalls per frame, which dominates small-message workloads (HTTP requests). This buffer
//! takes small writes up to one TLS record's worth and hands them to TLS together at the next
//! flush; large bodies pass straight through, so bulk transfers are not copied.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One TLS record's plaintext.
const CAP: usize = 16 * 1024;

pub(crate) struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    written: usize,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > CAP {
            self.buf.shrink_to(CAP);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() <= CAP {
            this.buf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        ready!(this.poll_drain(cx))?;
        if data.len() <= CAP {
            this.buf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_wait_for_flush_and_large_ones_pass() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesce::new(a);
        c.write_all(b"header-12by").await.expect("write");
        c.write_all(b"body").await.expect("write");
        let mut probe = [0u8; 1];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe))
                .await
                .is_err(),
            "nothing before the flush"
        );
        c.flush().await.expect("flush");
        let mut got = [0u8; 15];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"header-12bybody");
        let big = vec![7u8; 100_000];
        c.write_all(b"h").await.expect("write");
        c.write_all(&big).await.expect("write");
        c.flush().await.expect("flush");
        let mut back = vec![0u8; 100_001];
        b.read_exact(&mut back).await.expect("read");
        assert_eq!(back[0], b'h');
        assert!(back[1..].iter().all(|x| *x == 7));
    }
}
