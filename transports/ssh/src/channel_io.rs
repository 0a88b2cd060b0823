//! A visitor's `forwarded-tcpip` channel as one stream, with its own bounded backlog.
//!
//! russh refills a channel's SSH window as soon as data arrives, not when it is read, and
//! hands the data to a bounded queue per channel; a visitor that stops reading would fill its
//! queue and then block the connection's whole reader, freezing every other forward of the
//! same client. So each channel's data is drained at once by a pump into a backlog of its
//! own, and a visitor whose backlog passes `max_backlog` (or whose session's backlogs
//! together pass `max_session_backlog`) is cut instead: its neighbours keep flowing.

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::sync::lock;

/// The backlog caps of one SSH session.
pub(crate) struct BacklogBudget {
    pub(crate) per_visitor: usize,
    pub(crate) per_session: usize,
    held: AtomicUsize,
    pub(crate) cuts: prometheus::IntCounterVec,
    pub(crate) transport: String,
}

impl BacklogBudget {
    pub(crate) fn new(
        per_visitor: usize,
        per_session: usize,
        cuts: prometheus::IntCounterVec,
        transport: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            per_visitor,
            per_session,
            held: AtomicUsize::new(0),
            cuts,
            transport,
        })
    }

    /// Bytes held in the session's backlogs now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    eof: bool,
    /// Why the channel was cut (its reader gets this error).
    cut: Option<&'static str>,
    waker: Option<Waker>,
}

struct Backlog {
    state: Mutex<State>,
    budget: Arc<BacklogBudget>,
}

impl Backlog {
    /// Takes one chunk; false when the channel is (now) cut.
    fn push(&self, data: Bytes) -> bool {
        let mut s = lock(&self.state);
        if s.cut.is_some() {
            return false;
        }
        let len = data.len();
        let session = self.budget.held.load(Ordering::Relaxed);
        let why = if s.bytes + len > self.budget.per_visitor {
            Some("visitor")
        } else if session + len > self.budget.per_session && s.bytes >= self.budget.per_visitor / 8
        {
            Some("session")
        } else {
            None
        };
        if let Some(why) = why {
            self.budget
                .cuts
                .with_label_values(&[&self.budget.transport, why])
                .inc();
            s.cut = Some(why);
            self.release(&mut s);
            wake(&mut s);
            return false;
        }
        s.bytes += len;
        self.budget.held.fetch_add(len, Ordering::Relaxed);
        s.chunks.push_back(data);
        wake(&mut s);
        true
    }

    fn finish(&self) {
        let mut s = lock(&self.state);
        s.eof = true;
        wake(&mut s);
    }

    /// Gives the held bytes back to the session's budget and drops them.
    fn release(&self, s: &mut State) {
        self.budget.held.fetch_sub(s.bytes, Ordering::Relaxed);
        s.bytes = 0;
        s.chunks.clear();
    }
}

fn wake(s: &mut State) {
    if let Some(w) = s.waker.take() {
        w.wake();
    }
}

/// One visitor's channel: reads from its backlog, writes as SSH channel data (EOF on
/// shutdown), and closes the channel when dropped.
pub(crate) struct ChannelIo {
    backlog: Arc<Backlog>,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    handle: Handle,
    id: ChannelId,
}

impl ChannelIo {
    /// Splits `channel` and starts its pump.
    pub(crate) fn start(channel: Channel<Msg>, handle: Handle, budget: Arc<BacklogBudget>) -> Self {
        let id = channel.id();
        let (mut read, write) = channel.split();
        let backlog = Arc::new(Backlog {
            state: Mutex::new(State::default()),
            budget,
        });
        let pump = backlog.clone();
        let closer = handle.clone();
        tokio::spawn(async move {
            let mut open = true;
            while let Some(msg) = read.wait().await {
                match msg {
                    // Cut: close it, and keep draining until russh lets go of it.
                    ChannelMsg::Data { data } if open && !pump.push(data.clone()) => {
                        open = false;
                        let _ = closer.close(id).await;
                    }
                    ChannelMsg::Eof => pump.finish(),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            pump.finish();
        });
        Self {
            backlog,
            writer: Box::pin(write.make_writer()),
            handle,
            id,
        }
    }
}

impl Drop for ChannelIo {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.backlog.state);
            self.backlog.release(&mut s);
            s.eof = true;
        }
        let (handle, id) = (self.handle.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = handle.close(id).await;
            });
        }
    }
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.backlog.state);
        if let Some(front) = s.chunks.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            if n == front.len() {
                s.chunks.pop_front();
            } else {
                let rest = front.split_off(n);
                *front = rest;
            }
            s.bytes -= n;
            self.backlog.budget.held.fetch_sub(n, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = s.cut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the visitor fell too far behind (its {why} backlog cap): cut"),
            )));
        }
        if s.eof {
            return Poll::Ready(Ok(()));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_visitor: usize, per_session: usize) -> Arc<BacklogBudget> {
        let cuts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("cuts", "test"),
            &["transport", "cap"],
        )
        .expect("counter");
        BacklogBudget::new(per_visitor, per_session, cuts, "t".into())
    }

    fn backlog(b: &Arc<BacklogBudget>) -> Backlog {
        Backlog {
            state: Mutex::new(State::default()),
            budget: b.clone(),
        }
    }

    #[test]
    fn a_visitor_over_its_cap_is_cut_and_gives_its_bytes_back() {
        let b = budget(100, 1000);
        let v = backlog(&b);
        assert!(v.push(Bytes::from(vec![0u8; 60])));
        assert_eq!(b.held(), 60);
        assert!(!v.push(Bytes::from(vec![0u8; 60])), "over 100: cut");
        assert_eq!(b.held(), 0);
        assert_eq!(lock(&v.state).cut, Some("visitor"));
        assert!(!v.push(Bytes::from_static(b"x")), "stays cut");
        assert_eq!(b.cuts.with_label_values(&["t", "visitor"]).get(), 1);
    }

    #[test]
    fn the_session_cap_cuts_the_visitor_holding_much_but_not_a_small_one() {
        let b = budget(100, 150);
        let (big, small) = (backlog(&b), backlog(&b));
        assert!(big.push(Bytes::from(vec![0u8; 90])));
        assert!(small.push(Bytes::from(vec![0u8; 5])));
        assert!(big.push(Bytes::from(vec![0u8; 5])));
        // 100 held: small's next chunk passes the session cap, but it holds little.
        assert!(small.push(Bytes::from(vec![0u8; 50])));
        assert!(!big.push(Bytes::from(vec![0u8; 4])), "the big one is cut");
        assert_eq!(lock(&big.state).cut, Some("session"));
        assert_eq!(b.held(), 55);
    }
}
