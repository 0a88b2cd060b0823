//! Idle deadlines for visitor connections: what closes a connection that holds a slot and
//! does nothing with it.
//!
//! - An [`Activity`] records when a connection last did something and how much work is in
//!   flight (requests whose response has not finished). [`Activity::idle`] resolves once
//!   nothing has been in flight and nothing has happened for the deadline: the first deadline
//!   before anything happened (a TLS connection that never sends an HTTP/2 preface), the
//!   second between requests (keep-alive).
//! - [`Touching`] wraps a raw stream and marks the activity on every byte read or written, for
//!   spliced connections whose only sign of life is their bytes.
//! - [`InFlight`] is held while a request is served; bodies carry one to their end.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The life signs of one connection. Cheap to clone.
#[derive(Clone)]
pub struct Activity(Arc<Inner>);

struct Inner {
    started: Instant,
    /// Milliseconds from `started` to the last sign of life.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Of those, how many wait on the visitor (a response chunk handed over and not yet
    /// taken): they do not keep the connection busy.
    blocked: AtomicUsize,
    /// Whether anything happened yet (the first deadline applies until then).
    seen: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
        }))
    }

    /// A sign of life now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Relaxed);
        self.0.seen.store(true, Ordering::Relaxed);
    }

    /// Work that keeps the connection busy until the returned guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.touch();
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: self.clone(),
            blocked: false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// Work in flight that waits on the service or on tunneld, not on the visitor.
    fn busy(&self) -> bool {
        self.in_flight() > self.0.blocked.load(Ordering::Relaxed)
    }

    /// Resolves once the connection has been idle (nothing in flight, no sign of life) for
    /// `first` before its first sign of life, or for `then` after it. A zero duration never
    /// resolves for that phase.
    pub async fn idle(&self, first: Duration, then: Duration) {
        loop {
            let seen = self.0.seen.load(Ordering::Relaxed);
            let limit = if seen { then } else { first };
            if limit.is_zero() {
                if seen {
                    std::future::pending::<()>().await;
                }
                // Wait for the first sign of life, then apply `then`.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let last =
                self.0.started + Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if !self.busy() && Instant::now() >= due {
                return;
            }
            // Busy: look again a deadline from now; idle: at the deadline.
            let wake = if self.busy() {
                Instant::now() + limit
            } else {
                due
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request (or a response body) in progress; dropping it ends the work and counts as a
/// sign of life.
///
/// While a response chunk has been handed to the visitor's side and not yet taken (the
/// visitor's HTTP/2 window is closed, or its socket is full), the work waits on the visitor
/// and does not keep the connection busy: a visitor that never opens its window cannot hold
/// a connection (and the tunnel streams behind it) past the idle deadline. A long poll,
/// waiting on the service, stays busy.
pub struct InFlight {
    activity: Activity,
    blocked: bool,
}

impl InFlight {
    /// A response chunk went to the visitor's side: the work now waits on the visitor.
    pub fn handed_over(&mut self) {
        self.activity.touch();
        if !self.blocked {
            self.blocked = true;
            self.activity.0.blocked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The visitor's side asks for more: the work waits on the service again.
    pub fn taken(&mut self) {
        if self.blocked {
            self.blocked = false;
            self.activity.0.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.taken();
        self.activity.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

/// A response body that tells its [`InFlight`] when it waits on the visitor (a chunk was
/// handed over and the body has not been polled since) and ends the work with the body.
pub fn tracked_body(body: crate::http_forward::Body, work: InFlight) -> crate::http_forward::Body {
    use http_body_util::BodyExt;
    Tracked { inner: body, work }.boxed()
}

struct Tracked {
    inner: crate::http_forward::Body,
    work: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::http_forward::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.work.taken();
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.work.handed_over();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that marks its [`Activity`] on every byte that moves either way.
pub struct Touching<T> {
    inner: T,
    activity: Activity,
}

impl<T> Touching<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// [`splice`](crate::splice::splice)s `a` (the visitor) and `b` until either side ends or
/// no byte moves either way for `idle` (zero: never); an idle end counts in `idled` and is
/// not an error.
pub async fn splice_until_idle<A, B>(
    a: &mut A,
    b: &mut B,
    counters: crate::splice::SpliceCounters,
    idle: Duration,
    idled: &prometheus::IntCounter,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    until_idle(a, b, &counters, idle, idled, false)
        .await
        .map(drop)
}

/// [`splice_until_idle`], stopping (`Ok(true)`) once bulk data flows, at a point where every
/// byte read was written ([`crate::splice::splice_until_bulk`]): the caller goes on with
/// [`splice_until_idle`] of the same streams, on a task of its own.
pub async fn splice_until_idle_or_bulk<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &crate::splice::SpliceCounters,
    idle: Duration,
    idled: &prometheus::IntCounter,
) -> io::Result<bool>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    until_idle(a, b, counters, idle, idled, true).await
}

async fn until_idle<A, B>(
    a: &mut A,
    b: &mut B,
    counters: &crate::splice::SpliceCounters,
    idle: Duration,
    idled: &prometheus::IntCounter,
    stop_on_bulk: bool,
) -> io::Result<bool>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity::new();
    let mut a = Touching::new(a, activity.clone());
    tokio::select! {
        r = crate::splice::splice_inner(&mut a, b, counters, stop_on_bulk) => {
            r.map(|until| until == crate::splice::Until::Bulk)
        }
        _ = activity.idle(idle, idle) => {
            idled.inc();
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn the_first_deadline_applies_before_any_sign_of_life() {
        let a = Activity::new();
        let started = Instant::now();
        tokio::time::timeout(MS * 5000, a.idle(MS * 200, MS * 60_000))
            .await
            .expect("idle after the first deadline");
        assert!(started.elapsed() >= MS * 200);
    }

    #[tokio::test]
    async fn work_in_flight_is_never_idle_and_the_clock_restarts_after_it() {
        let a = Activity::new();
        let guard = a.begin();
        let started = Instant::now();
        let release = tokio::spawn(async move {
            tokio::time::sleep(MS * 600).await;
            drop(guard);
        });
        tokio::time::timeout(MS * 5000, a.idle(MS * 100, MS * 200))
            .await
            .expect("idle after the work");
        release.await.expect("release");
        assert!(started.elapsed() >= MS * 800, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bytes_through_touching_keep_a_connection_alive() {
        let (a, mut b) = tokio::io::duplex(64);
        let act = Activity::new();
        let mut t = Touching::new(a, act.clone());
        let started = Instant::now();
        let talk = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(MS * 100).await;
                t.write_all(b"x").await.expect("write");
            }
            t
        });
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            for _ in 0..5 {
                b.read_exact(&mut buf).await.expect("read");
            }
            b
        });
        tokio::time::timeout(MS * 5000, act.idle(MS * 300, MS * 300))
            .await
            .expect("idle after the talk");
        let _keep = (talk.await, echo.await);
        // Five writes 100 ms apart, then 300 ms of silence.
        assert!(started.elapsed() >= MS * 800, "{:?}", started.elapsed());
    }
}
