//! Conversations over one WebSocket, for both ends.
//!
//! Each conversation is a byte stream ([`Conversation`], an `AsyncRead + AsyncWrite`).
//! Flow control is TPoT's pause/resume: a receiver whose buffer for a conversation passes
//! [`HIGH_WATER`] sends `P`, and `C` once its reader drained it below [`LOW_WATER`]; a sender
//! told `P` stops writing that conversation only. A peer that ignores `P` and pushes a
//! conversation past [`HARD_LIMIT`] gets that conversation closed. Outgoing data waits in one
//! bounded queue, so a slow WebSocket pushes back on every local reader.
//!
//! Closing: `X` is final both ways and frees the id on both sides at once (no echo to wait
//! for, so nothing leaks whichever side closes first). With the `tunneld.1` extension a
//! shutdown sends `F` (half-close) and the id is freed when both sides sent `F`.
//!
//! This file holds the id table, the outgoing queues and the dispatch of the peer's
//! messages; the byte-stream side of one conversation is in `conversation`.

mod conversation;

pub use conversation::Conversation;

use crate::wire::{encode, Msg};
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, PollSender};

/// Largest `D` payload we send.
pub const CHUNK: usize = 16 * 1024;
/// Buffered bytes of one conversation at which we send `P`.
pub const HIGH_WATER: usize = 256 * 1024;
/// Buffered bytes below which we send `C` again.
pub const LOW_WATER: usize = 64 * 1024;
/// Buffered bytes at which a peer that ignores `P` loses the conversation.
pub const HARD_LIMIT: usize = 16 * 1024 * 1024;
/// Outgoing `D` messages queued for the WebSocket, all conversations together.
pub const DATA_QUEUE: usize = 64;
/// Control messages queued beyond twice the conversation cap mean the peer has stopped
/// reading the WebSocket: the session is ended instead of queueing more.
const CTL_SLACK: usize = 64;

/// What the writer task sends.
#[derive(Debug)]
pub enum Out {
    Msg(Bytes),
    /// Close the WebSocket with this code and reason.
    Close(u16, String),
    /// A WebSocket ping (a liveness probe).
    Ping,
}

/// Counters the mux keeps (a transport's labels already applied).
#[derive(Clone, Default)]
pub struct MuxMetrics {
    pub active: Option<IntGauge>,
    /// `P` messages we sent.
    pub pauses: Option<IntCounter>,
    /// Conversations closed because the peer ignored `P`.
    pub overruns: Option<IntCounter>,
}

/// The receiving ends the writer task drains.
pub struct Outbox {
    pub ctl: mpsc::Receiver<Out>,
    pub data: mpsc::Receiver<Bytes>,
}

#[derive(Default)]
struct ConvState {
    rx: VecDeque<Bytes>,
    rx_bytes: usize,
    /// The peer sends no more (`F` or `X`).
    eof: bool,
    /// `X` seen or sent: writes fail.
    closed: bool,
    refused: Option<String>,
    read_waker: Option<Waker>,
    peer_paused: bool,
    write_waker: Option<Waker>,
    we_paused: bool,
    sent_fin: bool,
    ack: Option<oneshot::Sender<Result<(), NotAccepted>>>,
}

impl ConvState {
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

struct Conv {
    id: u16,
    st: Mutex<ConvState>,
}

impl Conv {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConvState> {
        tunneld_core::sync::lock(&self.st)
    }
}

struct Table {
    map: HashMap<u16, Arc<Conv>>,
    next: u16,
}

struct Shared {
    ctl: mpsc::Sender<Out>,
    /// Cancelled when the control queue overflows (the peer stopped reading).
    stalled: CancellationToken,
    data: mpsc::Sender<Bytes>,
    table: Mutex<Table>,
    native: bool,
    max: usize,
    /// The most conversations the peer takes at once, as its hello said (we open no more).
    peer_max: std::sync::atomic::AtomicUsize,
    metrics: MuxMetrics,
    /// Bumped at each WebSocket pong the peer sends.
    pongs: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        tunneld_core::sync::lock(&self.table)
    }

    fn send_ctl(&self, m: &Msg) {
        self.queue(Out::Msg(encode(m)));
    }

    /// Queues a control message; false when the session is over or the queue overflowed
    /// (which ends the session through [`Mux::stalled`]).
    fn queue(&self, o: Out) -> bool {
        match self.ctl.try_send(o) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stalled.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Frees `conv`'s id if it still names this conversation.
    fn remove(&self, conv: &Arc<Conv>) {
        let mut t = self.table();
        if t.map.get(&conv.id).is_some_and(|c| Arc::ptr_eq(c, conv)) {
            t.map.remove(&conv.id);
            if let Some(g) = &self.metrics.active {
                g.dec();
            }
        }
    }

    fn insert(&self, t: &mut Table, id: u16) -> Arc<Conv> {
        let conv = Arc::new(Conv {
            id,
            st: Mutex::new(ConvState::default()),
        });
        t.map.insert(id, conv.clone());
        if let Some(g) = &self.metrics.active {
            g.inc();
        }
        conv
    }
}

/// One end of a WebSocket's conversations.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

/// Resolves with the peer's answer to an open: `A` (Ok) or why not.
pub type Ack = oneshot::Receiver<Result<(), NotAccepted>>;

/// Why an opened conversation was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAccepted {
    /// `N`, with the peer's reason (or ours when it gave none).
    #[error("{0}")]
    Refused(String),
    #[error("the tunnel client closed the conversation")]
    Closed,
    #[error("the tunnel session ended")]
    SessionEnded,
}

/// Why a conversation could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenRefused {
    TooMany,
    Closed,
}

impl Mux {
    /// The most conversations open at once (ours, or the peer's when smaller).
    pub fn max_conversations(&self) -> usize {
        let peer_max = self
            .shared
            .peer_max
            .load(std::sync::atomic::Ordering::Relaxed);
        self.shared.max.min(peer_max)
    }

    /// Opens no more than `n` conversations at once from now on: the peer's own cap (the
    /// hello's `max_streams`), so a visitor past it is refused here, not reset by the peer.
    pub fn peer_accepts(&self, n: usize) {
        self.shared
            .peer_max
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// `native`: the `tunneld.1` extensions were negotiated.
    pub fn new(native: bool, max_conversations: usize, metrics: MuxMetrics) -> (Self, Outbox) {
        let max = max_conversations.max(1);
        let (ctl_tx, ctl) = mpsc::channel(2 * max + CTL_SLACK);
        let (data_tx, data) = mpsc::channel(DATA_QUEUE);
        (
            Self {
                shared: Arc::new(Shared {
                    ctl: ctl_tx,
                    stalled: CancellationToken::new(),
                    data: data_tx,
                    table: Mutex::new(Table {
                        map: HashMap::new(),
                        next: 0,
                    }),
                    native,
                    max,
                    peer_max: std::sync::atomic::AtomicUsize::new(usize::MAX),
                    metrics,
                    pongs: tokio::sync::watch::channel(0).0,
                }),
            },
            Outbox { ctl, data },
        )
    }

    pub fn native(&self) -> bool {
        self.shared.native
    }

    /// Queues a message ahead of conversation data.
    pub fn send(&self, m: &Msg) {
        self.shared.send_ctl(m);
    }

    /// Records a WebSocket pong from the peer.
    pub fn pong(&self) {
        self.shared.pongs.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends a WebSocket ping and waits up to `deadline` for a pong: whether the peer
    /// answered. Every WebSocket implementation answers pings on its own, so this works for
    /// original TPoT clients too.
    pub async fn probe(&self, deadline: std::time::Duration) -> bool {
        let mut pongs = self.shared.pongs.subscribe();
        pongs.mark_unchanged();
        if !self.shared.queue(Out::Ping) {
            return false;
        }
        matches!(
            tokio::time::timeout(deadline, pongs.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Closes the WebSocket with `code`.
    pub fn close(&self, code: u16, reason: &str) {
        self.shared.queue(Out::Close(code, reason.to_string()));
    }

    /// Resolves when the control queue overflowed: the peer has not read the WebSocket for
    /// as long as it took to queue twice the conversation cap in control messages.
    pub async fn stalled(&self) {
        self.shared.stalled.cancelled().await
    }

    /// Whether every place for a conversation is taken ([`Mux::open`] would refuse one for
    /// the cap).
    pub fn is_full(&self) -> bool {
        self.len() >= self.places()
    }

    /// The highest conversation id: 65535, or 32767 for original TPoT clients (they read
    /// ids as signed 16-bit numbers).
    fn top_id(&self) -> u16 {
        if self.shared.native {
            u16::MAX
        } else {
            i16::MAX as u16
        }
    }

    /// Conversations that may be open at once: the cap, within the ids there are.
    fn places(&self) -> usize {
        self.max_conversations().min(usize::from(self.top_id()))
    }

    /// Live conversations.
    pub fn len(&self) -> usize {
        self.shared.table().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn conversation(&self, conv: Arc<Conv>) -> Conversation {
        Conversation {
            conv,
            shared: self.shared.clone(),
            sender: PollSender::new(self.shared.data.clone()),
        }
    }

    /// Opens a conversation (the server side): allocates the next free id (1..=65535, or
    /// 1..=32767 for original TPoT clients, which read ids as signed 16-bit numbers; wrapping,
    /// skipping live ones) and sends the opening message `open(id)`. With `ack`, the receiver
    /// resolves when the peer answers `A` or `N`.
    pub fn open(
        &self,
        open: impl FnOnce(u16) -> Msg,
        ack: bool,
    ) -> Result<(Conversation, Option<Ack>), OpenRefused> {
        if self.shared.ctl.is_closed() {
            return Err(OpenRefused::Closed);
        }
        let mut t = self.shared.table();
        let top = self.top_id();
        if t.map.len() >= self.places() {
            return Err(OpenRefused::TooMany);
        }
        // While the WebSocket is not being written (a slow link), openings and closings pile
        // up in the control queue; past half of it, new visitors are refused (503 for them)
        // so the queue keeps room for the closings of live conversations and never overflows
        // because of visitors alone (an overflow ends the session).
        if self.shared.ctl.capacity() < self.shared.max + CTL_SLACK / 2 {
            return Err(OpenRefused::TooMany);
        }
        let mut id = t.next;
        loop {
            id = if id >= top { 1 } else { id + 1 };
            if !t.map.contains_key(&id) {
                break;
            }
        }
        t.next = id;
        let conv = self.shared.insert(&mut t, id);
        drop(t);
        let rx = ack.then(|| {
            let (tx, rx) = oneshot::channel();
            conv.lock().ack = Some(tx);
            rx
        });
        self.shared.send_ctl(&open(id));
        Ok((self.conversation(conv), rx))
    }

    /// Takes a conversation the peer opened (the client side). `None` when the id is in use
    /// or the cap is reached; the caller answers `N`.
    pub fn accept(&self, id: u16) -> Option<Conversation> {
        let mut t = self.shared.table();
        if t.map.contains_key(&id) || t.map.len() >= self.shared.max {
            return None;
        }
        let conv = self.shared.insert(&mut t, id);
        drop(t);
        Some(self.conversation(conv))
    }

    fn get(&self, id: u16) -> Option<Arc<Conv>> {
        self.shared.table().map.get(&id).cloned()
    }

    /// Applies one conversation message from the peer (`D`, `P`, `C`, `X`, `N`, `A`, `F`);
    /// unknown ids are ignored.
    pub fn dispatch(&self, msg: Msg) {
        let id = match &msg {
            Msg::Data { id, .. } | Msg::Refused { id, .. } => *id,
            Msg::Pause(id)
            | Msg::Resume(id)
            | Msg::Close(id)
            | Msg::Accepted(id)
            | Msg::Fin(id) => *id,
            _ => return,
        };
        let Some(conv) = self.get(id) else {
            return;
        };
        let mut st = conv.lock();
        let mut free = false;
        match msg {
            Msg::Data { payload, .. } => {
                if st.eof || payload.is_empty() {
                    return;
                }
                st.rx_bytes += payload.len();
                st.rx.push_back(payload);
                if st.rx_bytes > HARD_LIMIT {
                    tracing::warn!(
                        conversation = id,
                        "peer kept sending after pause; conversation closed"
                    );
                    if let Some(c) = &self.shared.metrics.overruns {
                        c.inc();
                    }
                    st.rx.clear();
                    st.rx_bytes = 0;
                    st.closed = true;
                    st.eof = true;
                    st.refused = Some("the peer ignored flow control".into());
                    self.shared.send_ctl(&Msg::Close(id));
                    free = true;
                } else if st.rx_bytes >= HIGH_WATER && !st.we_paused {
                    st.we_paused = true;
                    self.shared.send_ctl(&Msg::Pause(id));
                    if let Some(c) = &self.shared.metrics.pauses {
                        c.inc();
                    }
                }
            }
            Msg::Pause(_) => st.peer_paused = true,
            Msg::Resume(_) => st.peer_paused = false,
            Msg::Close(_) => {
                st.closed = true;
                st.eof = true;
                if let Some(a) = st.ack.take() {
                    let _ = a.send(Err(NotAccepted::Closed));
                }
                free = true;
            }
            Msg::Fin(_) => {
                st.eof = true;
                free = st.sent_fin;
            }
            Msg::Refused { reason, .. } => {
                let reason = if reason.is_empty() {
                    "the tunnel client could not reach its local service".to_string()
                } else {
                    reason
                };
                st.closed = true;
                st.eof = true;
                if let Some(a) = st.ack.take() {
                    let _ = a.send(Err(NotAccepted::Refused(reason.clone())));
                }
                st.refused = Some(reason);
                free = true;
            }
            Msg::Accepted(_) => {
                if let Some(a) = st.ack.take() {
                    let _ = a.send(Ok(()));
                }
            }
            _ => {}
        }
        st.wake();
        drop(st);
        if free {
            self.shared.remove(&conv);
        }
    }

    /// The WebSocket is gone: every conversation ends with a reset.
    pub fn shutdown(&self) {
        let convs: Vec<Arc<Conv>> = {
            let mut t = self.shared.table();
            let n = t.map.len() as i64;
            if let Some(g) = &self.shared.metrics.active {
                g.sub(n);
            }
            t.map.drain().map(|(_, c)| c).collect()
        };
        for conv in convs {
            let mut st = conv.lock();
            st.closed = true;
            st.eof = true;
            if let Some(a) = st.ack.take() {
                let _ = a.send(Err(NotAccepted::SessionEnded));
            }
            if st.refused.is_none() {
                st.refused = Some(NotAccepted::SessionEnded.to_string());
            }
            st.wake();
        }
    }
}

#[cfg(test)]
mod tests;
