//! A visitor's `forwarded-tcpip` channel as one stream, with its own bounded backlog.
//!
//! russh hands each channel's data to a bounded queue per channel; a visitor that stops
//! reading would fill its queue and then block the connection's whole reader, freezing every
//! other forward of the same client. So each channel's queue is drained at once into a
//! backlog of its own, and the channel's SSH window follows what the visitor reads: russh
//! (patched, vendor/README.md) grants a forwarded channel no window as data arrives; the
//! reader grants it as it takes the data. A channel's *commitment* is what the client may
//! still send it plus what waits unread for it, so a slow visitor slows only its own
//! channel at the client. Each channel opens with [`FLOOR`] committed and may grow to
//! `window_size` out of its session's budget ([`BacklogBudget`], window_budget.rs); below
//! [`FLOOR`] it is always refilled, so a session's many slow visitors
//! share the budget instead of any being cut, and each keeps moving. A visitor sent more
//! than it was granted (a client that ignores its window), or whose backlog passes
//! `max_backlog`, is cut: its neighbours keep flowing.
//!
//! The session's own task drains the queues: russh calls the handler after each message it
//! queues for a channel (data, EOF, close, window adjust, requests), and the handler drains
//! that channel's queue there and then ([`Pumps::drain`]). No task of its own per channel
//! sits between the session and the visitor's relay: one wake-up less for each chunk of a
//! response.

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::sync::lock;

pub(crate) use crate::window_budget::{BacklogBudget, FLOOR};

/// What draining a channel's queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Still open.
    Open,
    /// The visitor was cut just now: close its channel.
    Cut,
    /// The channel is closed (or its session gone): nothing more will come.
    Closed,
}

/// The forwarded channels of one SSH session, by id, with the session's backlog budget.
pub(crate) struct Pumps {
    pub(crate) budget: Arc<BacklogBudget>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<ChannelId, Arc<Backlog>>,
    /// The session is over: channels opened from now on end at once.
    ended: bool,
}

impl Pumps {
    pub(crate) fn new(budget: Arc<BacklogBudget>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            table: Mutex::new(Table::default()),
        })
    }

    /// Drains channel `id`'s queue into its backlog (called by the session's handler after
    /// russh queued something for it); ids that are not forwarded channels are ignored.
    pub(crate) fn drain(&self, id: ChannelId) -> Drained {
        let Some(b) = lock(&self.table).by_id.get(&id).cloned() else {
            return Drained::Open;
        };
        self.drain_held(id, &b)
    }

    /// Drains `b`, channel `id`'s backlog, and forgets it once the channel closed.
    fn drain_held(&self, id: ChannelId, b: &Arc<Backlog>) -> Drained {
        let d = b.drain();
        if d == Drained::Closed {
            self.forget(id, b);
        }
        d
    }

    /// The session ended: every channel's reader sees its end.
    pub(crate) fn end(&self) {
        let all = {
            let mut t = lock(&self.table);
            t.ended = true;
            std::mem::take(&mut t.by_id)
        };
        for b in all.values() {
            b.end();
        }
    }

    /// Drops channel `id`'s entry, if it is still `b`'s (ids are reused after they wrap).
    fn forget(&self, id: ChannelId, b: &Arc<Backlog>) {
        let mut t = lock(&self.table);
        if t.by_id.get(&id).is_some_and(|held| Arc::ptr_eq(held, b)) {
            t.by_id.remove(&id);
        }
    }

    /// Takes a channel in: from now on the session's handler drains it; what came before
    /// is drained here.
    fn register(&self, id: ChannelId, b: &Arc<Backlog>) -> Drained {
        {
            let mut t = lock(&self.table);
            if t.ended {
                drop(t);
                b.end();
                return Drained::Closed;
            }
            t.by_id.insert(id, b.clone());
        }
        self.drain_held(id, b)
    }
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// What the client may still send plus `bytes`: counted in the session's budget.
    committed: usize,
    eof: bool,
    /// Why the channel was cut (its reader gets this error).
    cut: Option<&'static str>,
    waker: Option<Waker>,
    /// russh's queue for the channel, until it closes.
    queue: Option<ChannelReadHalf>,
}

struct Backlog {
    state: Mutex<State>,
    budget: Arc<BacklogBudget>,
}

/// The next message already in `queue`, without waiting: `Ready(None)` once it is closed.
fn next_now(queue: &mut ChannelReadHalf) -> Poll<Option<ChannelMsg>> {
    // Unconstrained: the session's task may have spent its cooperative budget, and a
    // message left behind here would wait for the channel's next one.
    let next = pin!(tokio::task::unconstrained(queue.wait()));
    next.poll(&mut Context::from_waker(Waker::noop()))
}

impl Backlog {
    /// Grants the client more of the channel's window if it is due (a session that is gone
    /// has nothing left to grant).
    fn grant(&self, s: &mut State, handle: &Handle, id: ChannelId) {
        if s.cut.is_some() || s.queue.is_none() {
            return;
        }
        let amount = self.budget.grant(s.committed);
        if amount > 0 {
            s.committed += amount;
            let _ = handle.grant_window(id, u32::try_from(amount).unwrap_or(u32::MAX));
        }
    }

    /// Moves every message waiting in the channel's queue into the backlog.
    fn drain(&self) -> Drained {
        let mut s = lock(&self.state);
        let mut cut = false;
        loop {
            let Some(queue) = s.queue.as_mut() else {
                return Drained::Closed;
            };
            match next_now(queue) {
                Poll::Pending => break,
                Poll::Ready(Some(ChannelMsg::Data { data })) => {
                    if s.cut.is_none() && !self.push(&mut s, data) {
                        cut = true;
                    }
                }
                Poll::Ready(Some(ChannelMsg::Eof)) => finish(&mut s),
                Poll::Ready(Some(ChannelMsg::Close)) | Poll::Ready(None) => {
                    s.queue = None;
                    finish(&mut s);
                    return Drained::Closed;
                }
                Poll::Ready(Some(ChannelMsg::ExtendedData { .. })) => {
                    // A forwarded channel has no second stream (OpenSSH never sends one);
                    // what it took of the window would never be granted back.
                    if s.cut.is_none() {
                        self.cut(&mut s, "extended_data");
                        cut = true;
                    }
                }
                Poll::Ready(Some(_)) => {}
            }
        }
        if cut {
            Drained::Cut
        } else {
            Drained::Open
        }
    }

    /// Takes one chunk; false when the channel is (now) cut.
    fn push(&self, s: &mut State, data: Bytes) -> bool {
        if s.cut.is_some() {
            return false;
        }
        let len = data.len();
        let why = if s.bytes + len > self.budget.per_visitor {
            Some("visitor")
        } else if s.bytes + len > s.committed {
            Some("window")
        } else {
            None
        };
        if let Some(why) = why {
            self.cut(s, why);
            return false;
        }
        s.bytes += len;
        self.budget.waiting.add(len as i64);
        s.chunks.push_back(data);
        wake(s);
        true
    }

    /// Cuts the visitor (its reader gets an error) and counts it by `why`.
    fn cut(&self, s: &mut State, why: &'static str) {
        self.budget
            .cuts
            .with_label_values(&[&self.budget.transport, why])
            .inc();
        s.cut = Some(why);
        self.release(s);
        wake(s);
    }

    /// No more will come: what is already queued is taken, then the reader sees EOF once
    /// the backlog is read.
    fn end(&self) {
        let _ = self.drain();
        let mut s = lock(&self.state);
        s.queue = None;
        finish(&mut s);
    }

    /// Gives the channel's commitment back to the session's budget and drops what it held.
    fn release(&self, s: &mut State) {
        self.budget
            .committed
            .fetch_sub(s.committed, Ordering::Relaxed);
        s.committed = 0;
        self.budget.waiting.sub(s.bytes as i64);
        s.bytes = 0;
        s.chunks.clear();
    }
}

fn finish(s: &mut State) {
    s.eof = true;
    wake(s);
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
    pumps: Arc<Pumps>,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    handle: Handle,
    id: ChannelId,
}

impl ChannelIo {
    /// Splits `channel` and hands its queue to the session's pumps; its opening window was
    /// reserved ([`BacklogBudget::reserve`]).
    pub(crate) fn start(channel: Channel<Msg>, handle: Handle, pumps: Arc<Pumps>) -> Self {
        let id = channel.id();
        let (queue, write) = channel.split();
        let budget = pumps.budget.clone();
        // The channel opened with the floor as its window (russh's `window_size`), counted
        // when it was reserved.
        budget.open.fetch_add(1, Ordering::Relaxed);
        let backlog = Arc::new(Backlog {
            state: Mutex::new(State {
                queue: Some(queue),
                committed: budget.floor,
                ..State::default()
            }),
            budget,
        });
        if pumps.register(id, &backlog) == Drained::Cut {
            close_later(handle.clone(), id);
        } else {
            // The rest of its window at once, so a bulk answer never waits on the floor.
            backlog.grant(&mut lock(&backlog.state), &handle, id);
        }
        Self {
            backlog,
            pumps,
            writer: Box::pin(write.make_writer()),
            handle,
            id,
        }
    }
}

/// Closes channel `id` from a task of its own (a drop or a cut cannot wait for the session).
fn close_later(handle: Handle, id: ChannelId) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = handle.close(id).await;
        });
    }
}

impl Drop for ChannelIo {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.backlog.state);
            self.backlog.release(&mut s);
            self.backlog.budget.open.fetch_sub(1, Ordering::Relaxed);
            s.eof = true;
            // russh's sends to a dropped queue fail at once instead of filling it.
            s.queue = None;
        }
        self.pumps.forget(self.id, &self.backlog);
        close_later(self.handle.clone(), self.id);
    }
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut s = lock(&this.backlog.state);
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
            s.committed -= n;
            let budget = &this.backlog.budget;
            budget.committed.fetch_sub(n, Ordering::Relaxed);
            budget.waiting.sub(n as i64);
            this.backlog.grant(&mut s, &this.handle, this.id);
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = s.cut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the SSH client broke this visitor's flow control ({why}): cut"),
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

    const W: usize = 1 << 20;

    fn budget(per_visitor: usize, per_session: usize) -> Arc<BacklogBudget> {
        let cuts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("cuts", "test"),
            &["transport", "cap"],
        )
        .expect("counter");
        let waiting = prometheus::IntGauge::new("waiting", "test").expect("gauge");
        BacklogBudget::new(
            W as u32,
            per_visitor,
            per_session,
            cuts,
            waiting,
            "t".into(),
        )
    }

    /// A channel with `committed` bytes of window committed (counted in `b`).
    fn backlog(b: &Arc<BacklogBudget>, committed: usize) -> Backlog {
        b.committed.fetch_add(committed, Ordering::Relaxed);
        Backlog {
            state: Mutex::new(State {
                committed,
                ..State::default()
            }),
            budget: b.clone(),
        }
    }

    impl Backlog {
        fn take(&self, data: Bytes) -> bool {
            self.push(&mut lock(&self.state), data)
        }
    }

    #[test]
    fn a_visitor_over_its_cap_is_cut_and_gives_its_window_back() {
        let b = budget(100, 1000);
        let v = backlog(&b, 500);
        assert!(v.take(Bytes::from(vec![0u8; 60])));
        assert_eq!(lock(&v.state).bytes, 60);
        assert_eq!(b.waiting.get(), 60);
        assert!(!v.take(Bytes::from(vec![0u8; 60])), "over 100: cut");
        assert_eq!(b.committed(), 0);
        assert_eq!(b.waiting.get(), 0, "what it held is dropped");
        assert_eq!(lock(&v.state).cut, Some("visitor"));
        assert!(!v.take(Bytes::from_static(b"x")), "stays cut");
        assert_eq!(b.cuts.with_label_values(&["t", "visitor"]).get(), 1);
    }

    #[test]
    fn a_client_sending_past_the_window_it_was_granted_is_cut() {
        let b = budget(W * 4, W * 8);
        let v = backlog(&b, 100);
        assert!(v.take(Bytes::from(vec![0u8; 100])), "exactly its window");
        assert!(!v.take(Bytes::from_static(b"x")), "one byte past it");
        assert_eq!(lock(&v.state).cut, Some("window"));
        assert_eq!(b.committed(), 0);
    }
}
