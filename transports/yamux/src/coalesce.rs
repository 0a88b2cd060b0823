//! Coalesces yamux's small writes before TLS.
//!
//! yamux 0.14 writes each frame as two writes (the 12-byte header, then the body) and
//! flushes once per frame. Straight onto a TLS stream that is two TLS records and two
//! syscalls per frame, which dominates small-message workloads (HTTP requests). This buffer
//! takes small writes up to one TLS record's worth and hands them to TLS together at the next
//! flush; large bodies pass straight through, so bulk transfers are not copied.
//!
//! yamux also flushes after every frame it sends, so a flush alone would still make one TLS
//! record and one syscall a frame when many streams answer at once. The first flush of a poll
//! of the connection's driver task is put off instead: the task wakes itself and the buffer
//! goes out at the start of its next poll, after the other tasks that were ready (the visitors'
//! splices) have queued their frames too. One scheduler turn of delay, never a timer.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One TLS record's plaintext.
const CAP: usize = 16 * 1024;

/// Flushes a put-off buffer may absorb in one poll (yamux flushes once a frame sent and once a
/// frame received) before it goes out anyway: a driver kept busy by other threads' streams
/// does not hold small frames for long.
const MAX_HELD: u32 = 64;

/// Counts the polls of the one task that polls a yamux connection (`driver::drive`).
#[derive(Clone, Default)]
pub(crate) struct PollEpoch(Arc<AtomicU64>);

impl PollEpoch {
    /// Called by the driver at the start of every poll.
    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    written: usize,
    epoch: PollEpoch,
    /// The driver poll in which a flush was put off (the task woke itself then).
    deferred: Option<u64>,
    /// Flushes answered from the buffer since it was last written.
    held: u32,
}

impl<T> Coalesce<T> {
    /// `epoch` must be advanced by the task that polls this writer at each of its polls;
    /// a put-off flush goes out at the first poll after the one that put it off.
    pub(crate) fn new(inner: T, epoch: PollEpoch) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            epoch,
            deferred: None,
            held: 0,
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
        self.reset();
        Poll::Ready(Ok(()))
    }

    /// Writes what is buffered and the start of `data` in one call (one run of TLS records,
    /// one syscall): a large body no longer goes out after a record of its own 12-byte
    /// header. Returns how much of `data` was taken, after all of the buffer.
    fn poll_write_after_buffer(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        while self.written < self.buf.len() {
            let left = self.buf.len() - self.written;
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(
                cx,
                &[IoSlice::new(&self.buf[self.written..]), IoSlice::new(data)]
            ))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n > left {
                debug_assert!(
                    n - left <= data.len(),
                    "the writer took more than it was given"
                );
                self.reset();
                return Poll::Ready(Ok(n - left));
            }
            self.written += n;
        }
        self.reset();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.written = 0;
        self.deferred = None;
        self.held = 0;
        if self.buf.capacity() > CAP {
            self.buf.shrink_to(CAP);
        }
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
        if data.len() <= CAP {
            ready!(this.poll_drain(cx))?;
            this.buf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        this.poll_write_after_buffer(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.written < this.buf.len() {
            let now = this.epoch.now();
            match this.deferred {
                // Put off in this poll already: the wake-up is on its way.
                Some(at) if at == now && this.held < MAX_HELD => {
                    this.held += 1;
                    return Poll::Ready(Ok(()));
                }
                Some(_) => {}
                None => {
                    this.deferred = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
            }
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::ArcWake;
    use futures::FutureExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl ArcWake for Wakes {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes at most `limit` bytes a call, vectored or not, and records each call; with
    /// `stalls`, every other call is `Pending` (the task woken) and takes nothing.
    struct Calls {
        got: Vec<u8>,
        calls: Vec<usize>,
        limit: usize,
        stalls: bool,
        stalled: bool,
    }

    impl Calls {
        fn new(limit: usize, stalls: bool) -> Self {
            Self {
                got: Vec::new(),
                calls: Vec::new(),
                limit,
                stalls,
                stalled: false,
            }
        }
    }

    impl AsyncWrite for Calls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(data)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if self.stalls {
                self.stalled = !self.stalled;
                if self.stalled {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.calls.push(n);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_large_body_goes_out_in_the_same_call_as_its_buffered_header() {
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        for (limit, want_calls) in [(1 << 20, vec![100_012]), (65_536, vec![65_536, 34_476])] {
            let inner = Calls::new(limit, false);
            let mut c = Coalesce::new(inner, PollEpoch::default());
            c.write_all(b"header-12byt").await.expect("header");
            c.write_all(&body).await.expect("body");
            assert_eq!(c.inner.calls, want_calls, "limit {limit}");
            assert_eq!(&c.inner.got[..12], b"header-12byt");
            assert_eq!(&c.inner.got[12..], &body[..]);
        }
        // A writer that takes less than the buffer each call, and one that also answers
        // every other call with Pending, still get every byte once and in order.
        for stalls in [false, true] {
            for limit in [5, 7, 20_000] {
                let mut c = Coalesce::new(Calls::new(limit, stalls), PollEpoch::default());
                c.write_all(b"header-12byt").await.expect("header");
                c.write_all(&body).await.expect("body");
                c.write_all(b"next-header!").await.expect("header");
                c.write_all(&body[..40_000]).await.expect("body");
                // What is left of the last body (16 KiB or less) waits in the buffer, as any
                // small write does.
                c.shutdown().await.expect("shutdown");
                let got = &c.inner.got;
                assert_eq!(got.len(), 12 + 100_000 + 12 + 40_000, "limit {limit}");
                assert_eq!(&got[..12], b"header-12byt");
                assert_eq!(&got[12..100_012], &body[..]);
                assert_eq!(&got[100_012..100_024], b"next-header!");
                assert_eq!(&got[100_024..], &body[..40_000]);
            }
        }
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_next_poll_and_large_ones_pass() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let epoch = PollEpoch::default();
        let mut c = Coalesce::new(a, epoch.clone());
        c.write_all(b"header-12by").await.expect("write");
        c.write_all(b"body").await.expect("write");
        // The first flush of a poll is put off, and the task woken for the next one.
        let wakes = Arc::new(Wakes::default());
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(matches!(
                Pin::new(&mut c).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "one wake-up a poll");
        let mut probe = [0u8; 1];
        assert!(
            b.read(&mut probe).now_or_never().is_none(),
            "nothing before the next poll"
        );
        epoch.advance();
        c.flush().await.expect("flush");
        let mut got = [0u8; 15];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"header-12bybody");
        // A poll that goes on flushing (a driver kept busy) writes after MAX_HELD of them.
        c.write_all(b"more").await.expect("write");
        for _ in 0..=MAX_HELD {
            assert!(matches!(
                Pin::new(&mut c).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert!(b.read(&mut probe).now_or_never().is_none(), "still held");
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut more = [0u8; 4];
        b.read_exact(&mut more).await.expect("read");
        assert_eq!(&more, b"more");
        // A write that does not fit goes out at once, with what was buffered before it.
        let big = vec![7u8; 100_000];
        c.write_all(b"h").await.expect("write");
        c.write_all(&big).await.expect("write");
        let mut back = vec![0u8; 100_001];
        b.read_exact(&mut back).await.expect("read");
        assert_eq!(back[0], b'h');
        assert!(back[1..].iter().all(|x| *x == 7));
        // Shutting down writes what is buffered whatever the poll.
        c.write_all(b"bye").await.expect("write");
        c.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"bye");
    }
}
