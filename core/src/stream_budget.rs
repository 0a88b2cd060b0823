//! Per-session stream budgets and the stall guard: what keeps one tunnel, one visitor address
//! or one visitor that stopped reading from taking a session's capacity from its neighbours.
//!
//! - [`StreamBudget`] counts a session's open visitor streams per tunnel and per source
//!   address; a stream past either cap is refused alone ([`OpenError::Capped`]).
//! - [`StallGuard`] fails a write that has made no progress for a deadline, so a visitor that
//!   stopped reading (or a service that did) frees its stream instead of pinning it forever;
//!   it also carries the stream's [`BudgetPermit`] for the stream's life.

use crate::limits::LiveLimits;
use crate::session::OpenError;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct Counts {
    per_tunnel: HashMap<String, usize>,
    per_address: HashMap<IpAddr, usize>,
}

/// Open visitor streams of one session, per tunnel and per visitor address.
pub struct StreamBudget {
    /// The caps are read at each acquire, so a reload reaches open sessions.
    limits: LiveLimits,
    counts: Mutex<Counts>,
}

impl StreamBudget {
    pub fn new(limits: &LiveLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: limits.clone(),
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        crate::sync::lock(&self.counts)
    }

    /// Takes one stream of `tunnel` from `addr`, or says which cap is full.
    pub fn acquire(
        self: &Arc<Self>,
        tunnel: &str,
        addr: IpAddr,
    ) -> Result<BudgetPermit, OpenError> {
        let l = self.limits.get();
        let mut c = self.lock();
        if c.per_tunnel.get(tunnel).copied().unwrap_or(0) >= l.max_streams_per_tunnel.max(1) {
            return Err(OpenError::Capped("for this tunnel"));
        }
        if c.per_address.get(&addr).copied().unwrap_or(0) >= l.max_streams_per_address.max(1) {
            return Err(OpenError::Capped("from this visitor address"));
        }
        *c.per_tunnel.entry(tunnel.to_string()).or_insert(0) += 1;
        *c.per_address.entry(addr).or_insert(0) += 1;
        Ok(BudgetPermit {
            budget: self.clone(),
            tunnel: tunnel.to_string(),
            addr,
        })
    }

    /// Open streams of `tunnel`.
    #[cfg(test)]
    fn open_for_tunnel(&self, tunnel: &str) -> usize {
        self.lock().per_tunnel.get(tunnel).copied().unwrap_or(0)
    }
}

/// One open stream in a [`StreamBudget`]; dropping it gives the stream back.
pub struct BudgetPermit {
    budget: Arc<StreamBudget>,
    tunnel: String,
    addr: IpAddr,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let mut c = self.budget.lock();
        if let Some(n) = c.per_tunnel.get_mut(&self.tunnel) {
            *n -= 1;
            if *n == 0 {
                c.per_tunnel.remove(&self.tunnel);
            }
        }
        if let Some(n) = c.per_address.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&self.addr);
            }
        }
    }
}

/// Fails writes (and flushes) that stay pending for longer than `timeout` with
/// `io::ErrorKind::TimedOut`: the peer stopped reading. Reads are untouched, so an idle
/// connection with nothing to write never times out.
pub struct StallGuard<T> {
    inner: T,
    timeout: Duration,
    /// When the current run of pending writes began; `None` while writes make progress.
    pending_since: Option<tokio::time::Instant>,
    /// Made once, on the first pending write, and only moved when it fires early: progress
    /// costs no timer work at all (this wraps every visitor stream on the data path).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Option<IntCounter>,
    /// Given back when the stream is dropped.
    _permit: Option<BudgetPermit>,
}

impl<T> StallGuard<T> {
    /// `stalled` counts the streams this guard ended.
    pub fn new(inner: T, timeout: Duration, stalled: Option<IntCounter>) -> Self {
        Self {
            inner,
            timeout,
            pending_since: None,
            timer: None,
            stalled,
            _permit: None,
        }
    }

    /// Keeps `permit` until this stream is dropped.
    pub fn holding(mut self, permit: BudgetPermit) -> Self {
        self._permit = Some(permit);
        self
    }

    /// Called with the inner poll's result: progress ends a pending run, a pending write
    /// starts one (the timer wakes this task by its end at the latest), and a run as long as
    /// the timeout turns the pending write into an error.
    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.pending_since = None;
            return r;
        }
        let timeout = self.timeout;
        let since = *self
            .pending_since
            .get_or_insert_with(tokio::time::Instant::now);
        let due = since + timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        // The timer may have been set for an earlier run: when it fires before this run's
        // end, move it and wait again.
        while timer.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= due {
                self.pending_since = None;
                if let Some(c) = &self.stalled {
                    c.inc();
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer accepted no bytes for {timeout:?}"),
                )));
            }
            timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn caps_per_tunnel_and_per_address() {
        let limits = LiveLimits::new(crate::limits::DataLimits {
            max_streams_per_tunnel: 2,
            max_streams_per_address: 3,
            ..Default::default()
        });
        let b = StreamBudget::new(&limits);
        let a: IpAddr = [127, 0, 0, 1].into();
        let c: IpAddr = [127, 0, 0, 2].into();
        let p1 = b.acquire("web", a).expect("first");
        let _p2 = b.acquire("web", c).expect("second");
        assert!(matches!(b.acquire("web", a), Err(OpenError::Capped(_))));
        let _p3 = b.acquire("ssh", a).expect("other tunnel");
        let _p4 = b.acquire("db", a).expect("third from a");
        assert!(matches!(b.acquire("db2", a), Err(OpenError::Capped(w)) if w.contains("address")));
        drop(p1);
        assert_eq!(b.open_for_tunnel("web"), 1);
        b.acquire("web", c).map(drop).expect("freed");
        // A reload that raises the cap reaches the open session's budget.
        let _p5 = b.acquire("web", c).expect("second web again");
        assert!(b.acquire("web", a).is_err());
        limits.set(crate::limits::DataLimits {
            max_streams_per_tunnel: 3,
            max_streams_per_address: 3,
            ..Default::default()
        });
        let _p6 = b.acquire("web", c).expect("raised cap");
    }

    #[tokio::test]
    async fn a_stalled_write_fails_after_the_timeout() {
        let (a, _b) = tokio::io::duplex(16);
        let counter = IntCounter::new("s", "s").expect("counter");
        let mut g = StallGuard::new(a, Duration::from_millis(50), Some(counter.clone()));
        let started = std::time::Instant::now();
        let err = g.write_all(&[0u8; 1024]).await.expect_err("stalls");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test]
    async fn writes_that_progress_never_time_out() {
        // A reader that takes 16 bytes every 20 ms: each write waits, none stalls for 50 ms.
        let (a, mut b) = tokio::io::duplex(16);
        let counter = IntCounter::new("s", "s").expect("counter");
        let mut g = StallGuard::new(a, Duration::from_millis(50), Some(counter.clone()));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 256 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += b.read(&mut buf).await.unwrap_or(0);
            }
        });
        g.write_all(&[0u8; 256]).await.expect("slow but steady");
        reader.await.expect("reader");
        assert_eq!(counter.get(), 0);
    }
}
