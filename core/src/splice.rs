//! Copies bytes both ways between two streams, with half-close and live byte counting.
//!
//! Reads go to a buffer that starts at 4 KiB and doubles, up to 128 KiB, each time a read fills
//! it, so a bulk transfer gets large reads and writes. A direction that has nothing to read and
//! nothing left to write gives its buffer back while it is still the first, small one, so an
//! idle connection (or one that only ever carried small messages) holds no buffer between
//! them; a grown buffer is kept, zeroed once, so a bulk transfer's reads cost no allocation and
//! no zeroing (TLS and yamux streams initialise what they are offered). The first, small
//! buffer is read into without zeroing it first (it was zeroed for every message a
//! connection carried). Every buffer goes back once its direction has ended.

use prometheus::IntCounter;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const INITIAL_BUF: usize = 4 * 1024;
const MAX_BUF: usize = 128 * 1024;

/// Bytes moved by a finished splice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Counters advanced as bytes move (not only at the end), so metrics follow long transfers.
/// Where `a` is a visitor: `a_to_b` counts its bytes `in`, and `tunnel` (the per-tunnel
/// series, when on) counts both directions too and stays active for the splice's life.
#[derive(Clone, Default)]
pub struct SpliceCounters {
    pub a_to_b: Option<IntCounter>,
    pub b_to_a: Option<IntCounter>,
    pub tunnel: Option<std::sync::Arc<crate::tunnel_metrics::TunnelStream>>,
}

impl SpliceCounters {
    /// Counts `n` bytes from the visitor that were sent before the splice (a replayed
    /// ClientHello, a request head).
    pub fn count_in(&self, n: u64) {
        if let Some(c) = &self.a_to_b {
            c.inc_by(n);
        }
        if let Some(t) = &self.tunnel {
            t.count_in(n);
        }
    }
}

struct Direction {
    /// Bytes read and not yet written are `buf[pos..filled]`. The first buffer (capacity
    /// [`INITIAL_BUF`]) is filled from its spare capacity, never zeroed: its length is what
    /// was read. A grown one is zeroed once and as long as its capacity. No allocation
    /// while a direction that never grew it is idle.
    buf: Vec<u8>,
    /// The size of the next buffer, once a read filled the present one.
    grow_to: Option<usize>,
    pos: usize,
    filled: usize,
    read_done: bool,
    shut_down: bool,
    total: u64,
    counter: Option<IntCounter>,
    /// The per-tunnel counter of this direction.
    tunnel: Option<IntCounter>,
}

impl Direction {
    fn new(counter: Option<IntCounter>, tunnel: Option<IntCounter>) -> Self {
        Self {
            tunnel,
            buf: Vec::new(),
            grow_to: None,
            pos: 0,
            filled: 0,
            read_done: false,
            shut_down: false,
            total: 0,
            counter,
        }
    }

    /// Moves bytes from `r` to `w` until `r` ends (then shuts `w` down) or nothing is ready.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.filled && !self.read_done {
                if let Some(size) = self.grow_to.take() {
                    self.buf = vec![0; size];
                } else if self.buf.capacity() == 0 {
                    self.buf = Vec::with_capacity(INITIAL_BUF);
                }
                self.pos = 0;
                self.filled = 0;
                let grown = !self.buf.is_empty() && self.buf.len() > INITIAL_BUF;
                let size = if grown {
                    self.buf.len()
                } else {
                    self.buf.capacity()
                };
                let read = if grown {
                    let mut rb = ReadBuf::new(&mut self.buf);
                    r.as_mut()
                        .poll_read(cx, &mut rb)
                        .map_ok(|()| rb.filled().len())
                } else {
                    // Into the spare capacity, at most `size` bytes: no zeroing.
                    self.buf.clear();
                    let mut room = bytes::BufMut::limit(&mut self.buf, size);
                    tokio_util::io::poll_read_buf(r.as_mut(), cx, &mut room)
                };
                match read {
                    Poll::Ready(Ok(n)) => {
                        if n == 0 {
                            self.read_done = true;
                            // Ended: nothing more will be read into it.
                            self.buf = Vec::new();
                        } else {
                            self.filled = n;
                            if let Some(c) = &self.counter {
                                c.inc_by(n as u64);
                            }
                            if let Some(c) = &self.tunnel {
                                c.inc_by(n as u64);
                            }
                            if n >= size && size < MAX_BUF {
                                // Grown on the next empty buffer; the data stays where it is.
                                self.grow_to = Some((size * 2).min(MAX_BUF));
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if !grown && self.grow_to.is_none() {
                            // Idle, and never busy enough to grow it: hold no memory until
                            // the next bytes arrive.
                            self.buf = Vec::new();
                        }
                        // Nothing to read: make sure what was written reaches the peer.
                        ready!(w.as_mut().poll_flush(cx))?;
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.filled {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.filled]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer accepted no bytes",
                    )));
                }
                self.pos += n;
                self.total += n as u64;
            }
            if self.read_done {
                if !self.shut_down {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.shut_down = true;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Splices `a` and `b` until both directions have ended. When one side stops sending, the
/// other side's write half is shut down (half-close) and the other direction goes on. An error
/// in either direction ends both.
pub async fn splice<A, B>(a: &mut A, b: &mut B, counters: SpliceCounters) -> io::Result<Spliced>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match splice_inner(a, b, &counters, false).await? {
        Until::Ended(s) => Ok(s),
        // Never asked for.
        Until::Bulk => Ok(Spliced::default()),
    }
}

/// Splices `a` and `b` on the calling task (a session's home) while they carry small
/// exchanges; once bulk data flows, the rest goes on a task of its own until `cancel`
/// (tunnelc's streams over yamux and h2-reverse). `on_error` hears of an error either way.
pub async fn splice_at_home<A, B, E>(
    mut a: A,
    mut b: B,
    cancel: tokio_util::sync::CancellationToken,
    on_error: E,
) where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: FnOnce(io::Error) + Send + 'static,
{
    let counters = SpliceCounters::default();
    let until = tokio::select! {
        r = splice_until_bulk(&mut a, &mut b, &counters) => r,
        _ = cancel.cancelled() => return,
    };
    match until {
        Ok(Until::Ended(_)) => {}
        // Every byte read so far was written: the rest goes on elsewhere.
        Ok(Until::Bulk) => {
            tokio::spawn(async move {
                tokio::select! {
                    r = splice(&mut a, &mut b, counters) => if let Err(e) = r {
                        on_error(e);
                    },
                    _ = cancel.cancelled() => {}
                }
            });
        }
        Err(e) => on_error(e),
    }
}

/// How [`splice_until_bulk`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Both directions ended.
    Ended(Spliced),
    /// Bulk data started to flow (at least [`BULK`] bytes in one wake-up); every byte read
    /// was written, and neither direction has ended: a [`splice`] of the same two streams
    /// goes on where this one stopped.
    Bulk,
}

/// Bytes moved in one wake-up that make a splice's traffic bulk.
pub const BULK: u64 = MAX_BUF as u64;

/// [`splice`], stopping once bulk data flows, at the first point after it where no byte is
/// held (so the caller can move the rest of the splice to a task of its own).
pub async fn splice_until_bulk<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &SpliceCounters,
) -> io::Result<Until>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    splice_inner(a, b, counters, true).await
}

pub(crate) async fn splice_inner<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &SpliceCounters,
    stop_on_bulk: bool,
) -> io::Result<Until>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let per_tunnel = |inbound| counters.tunnel.as_ref().map(|t| t.counter(inbound).clone());
    let mut ab = Direction::new(counters.a_to_b.clone(), per_tunnel(true));
    let mut ba = Direction::new(counters.b_to_a.clone(), per_tunnel(false));
    let mut ab_done = false;
    let mut ba_done = false;
    let mut bulk = false;
    poll_fn(|cx| {
        let before = ab.total + ba.total;
        if !ab_done {
            if let Poll::Ready(r) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                r?;
                ab_done = true;
            }
        }
        if !ba_done {
            if let Poll::Ready(r) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                r?;
                ba_done = true;
            }
        }
        if ab_done && ba_done {
            return Poll::Ready(Ok(Until::Ended(Spliced {
                a_to_b: ab.total,
                b_to_a: ba.total,
            })));
        }
        bulk |= stop_on_bulk && ab.total + ba.total - before >= BULK;
        let held = ab.pos < ab.filled || ba.pos < ba.filled;
        if bulk && !held && !ab.read_done && !ba.read_done {
            return Poll::Ready(Ok(Until::Bulk));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A splice stopped for bulk data held no byte: the splice that goes on from there
    /// delivers every byte, in order; small exchanges never stop it.
    #[tokio::test]
    async fn a_splice_stopped_for_bulk_loses_no_byte() {
        // Pipes as deep as loopback sockets, so one wake-up can move more than BULK.
        let (mut visitor, mut a) = tokio::io::duplex(1 << 20);
        let (mut b, mut service) = tokio::io::duplex(1 << 20);
        let total: usize = 4 << 20;
        let sender = tokio::spawn(async move {
            // A small exchange first, then bulk.
            visitor.write_all(b"ping").await.expect("ping");
            let mut pong = [0u8; 4];
            visitor.read_exact(&mut pong).await.expect("pong");
            assert_eq!(&pong, b"pong");
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            visitor.write_all(&data).await.expect("bulk");
            visitor.shutdown().await.expect("shutdown");
            visitor
        });
        let receiver = tokio::spawn(async move {
            let mut ping = [0u8; 4];
            service.read_exact(&mut ping).await.expect("ping");
            service.write_all(b"pong").await.expect("pong");
            let mut got = Vec::new();
            service.read_to_end(&mut got).await.expect("bulk");
            got
        });
        let counters = SpliceCounters::default();
        let work = async {
            let until = splice_until_bulk(&mut a, &mut b, &counters).await?;
            assert_eq!(until, Until::Bulk, "4 MiB in a row is bulk");
            splice(&mut a, &mut b, counters.clone()).await
        };
        let spliced = tokio::time::timeout(std::time::Duration::from_secs(10), work)
            .await
            .expect("in time")
            .expect("spliced");
        let got = receiver.await.expect("receiver");
        drop(sender.await.expect("sender"));
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8));
        assert!(spliced.a_to_b > 0);
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut a_outer, mut a_inner) = tokio::io::duplex(1024);
        let (mut b_inner, mut b_outer) = tokio::io::duplex(1024);
        let counter = IntCounter::new("t", "t").expect("counter");
        let counters = SpliceCounters {
            a_to_b: Some(counter.clone()),
            b_to_a: None,
            tunnel: None,
        };
        let task = tokio::spawn(async move { splice(&mut a_inner, &mut b_inner, counters).await });
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            a_outer.write_all(&sent).await.expect("write");
            a_outer.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            a_outer.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        b_outer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, payload);
        b_outer
            .write_all(b"reply after half-close")
            .await
            .expect("reply");
        b_outer.shutdown().await.expect("shutdown b");
        assert_eq!(writer.await.expect("join"), b"reply after half-close");
        let done = task.await.expect("join").expect("splice");
        assert_eq!(done.a_to_b, payload.len() as u64);
        assert_eq!(done.b_to_a, 22);
        assert_eq!(counter.get(), payload.len() as u64);
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer_and_a_busy_one_keeps_its_grown_one() {
        let (mut from, mut r) = tokio::io::duplex(1 << 20);
        let (mut w, mut to) = tokio::io::duplex(1 << 20);
        let mut d = Direction::new(None, None);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = |d: &mut Direction| d.poll_copy(&mut cx, Pin::new(&mut r), Pin::new(&mut w));
        assert!(poll(&mut d).is_pending());
        assert_eq!(d.buf.capacity(), 0, "nothing read yet: no buffer");
        from.write_all(b"I").await.expect("write");
        assert!(poll(&mut d).is_pending());
        assert_eq!(
            d.buf.capacity(),
            0,
            "drained and idle: the buffer was given back"
        );
        let mut one = [0u8; 1];
        to.read_exact(&mut one).await.expect("read");
        assert_eq!(&one, b"I");
        let bulk: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
        from.write_all(&bulk).await.expect("write bulk");
        assert!(poll(&mut d).is_pending());
        assert_eq!(
            d.buf.len(),
            MAX_BUF,
            "full reads doubled the buffer up to the cap, and it is kept for the next burst"
        );
        let mut got = vec![0u8; bulk.len()];
        to.read_exact(&mut got).await.expect("read bulk");
        assert_eq!(got, bulk);
        drop(from);
        assert!(poll(&mut d).is_ready(), "the end is passed on");
        assert_eq!(d.buf.capacity(), 0, "an ended direction holds no buffer");
        assert_eq!(d.total, 1 + bulk.len() as u64);
    }
}
