//! Keepalive and notifications on the control stream, shared by both sides.
//!
//! tunnelc sends `ping` every `interval`; tunneld answers `pong`. Either side that hears
//! nothing for three intervals declares the peer dead, so a dead peer is detected within
//! about 30 s with the default 10 s interval.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tunneld_core::proto::{read_frame, write_frame, Control, FrameError};

/// Why a control loop ended.
#[derive(Debug)]
pub(crate) enum End {
    PeerSilent(Duration),
    Bye(String),
    Frame(FrameError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerSilent(d) => write!(f, "peer silent for {}s (keepalive)", d.as_secs()),
            End::Bye(r) => write!(f, "peer said goodbye: {r}"),
            End::Frame(e) => write!(f, "control stream: {e}"),
        }
    }
}

/// Probes of the peer asked for by tunneld (see [`Probes`]).
pub(crate) struct ProbeLink {
    /// Each message sends one ping (asks made while one waits share it).
    pub asks: mpsc::Receiver<()>,
    /// Bumped at each pong.
    pub pongs: tokio::sync::watch::Sender<u64>,
}

/// The asking end of a [`ProbeLink`]: whether the peer answers a ping in time.
#[derive(Clone)]
pub(crate) struct Probes {
    asks: mpsc::Sender<()>,
    pongs: tokio::sync::watch::Receiver<u64>,
}

impl Probes {
    pub(crate) fn new() -> (Self, ProbeLink) {
        let (asks_tx, asks) = mpsc::channel(1);
        let (pongs, pongs_rx) = tokio::sync::watch::channel(0);
        (
            Self {
                asks: asks_tx,
                pongs: pongs_rx,
            },
            ProbeLink { asks, pongs },
        )
    }

    pub(crate) async fn probe(&self, deadline: Duration) -> bool {
        let mut pongs = self.pongs.clone();
        pongs.mark_unchanged();
        // A full queue already holds a ping that will answer this probe too.
        if let Err(mpsc::error::TrySendError::Closed(())) = self.asks.try_send(()) {
            return false;
        }
        matches!(
            tokio::time::timeout(deadline, pongs.changed()).await,
            Ok(Ok(()))
        )
    }
}

/// Pongs waiting to be written at most: a peer that pings faster than it reads loses the
/// extra pongs (a pong only says "alive"), it does not grow a queue.
const PONG_QUEUE: usize = 4;

/// Runs the control stream. `send_pings` is true on tunnelc. Messages from `outbox` are
/// forwarded to the peer; messages other than ping/pong/bye go to `inbox` (a bounded queue:
/// reading waits while it is full), or are dropped without one (tunneld reads none). With
/// `probes`, each ask sends a ping and each pong is reported.
pub(crate) async fn run<S>(
    stream: S,
    interval: Duration,
    send_pings: bool,
    mut outbox: mpsc::UnboundedReceiver<Control>,
    probes: Option<ProbeLink>,
    inbox: Option<mpsc::Sender<Control>>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let dead_after = interval * 3;
    let (to_write_tx, mut to_write) = mpsc::channel::<Control>(PONG_QUEUE);
    let (mut asks, pongs) = match probes {
        Some(p) => (Some(p.asks), Some(p.pongs)),
        None => (None, None),
    };
    let writer = async move {
        let mut seq = 0u64;
        // The first tick fires at once: tunnelc's first ping also opens the stream.
        let mut tick = tokio::time::interval(interval);
        loop {
            let msg = tokio::select! {
                _ = tick.tick(), if send_pings => { seq += 1; Control::Ping { seq } }
                Some(m) = to_write.recv() => m,
                Some(m) = outbox.recv() => m,
                Some(()) = async {
                    match &mut asks {
                        Some(a) => a.recv().await,
                        None => std::future::pending().await,
                    }
                } => { seq += 1; Control::Ping { seq } }
                else => std::future::pending().await,
            };
            if let Err(e) = write_frame(&mut wr, &msg).await {
                return End::Frame(e);
            }
        }
    };
    let reader = async move {
        let mut deadline = Instant::now() + dead_after;
        loop {
            let msg = tokio::select! {
                m = read_frame::<Control, _>(&mut rd) => m,
                _ = tokio::time::sleep_until(deadline) => return End::PeerSilent(dead_after),
            };
            deadline = Instant::now() + dead_after;
            match msg {
                Ok(Control::Ping { seq }) => {
                    let _ = to_write_tx.try_send(Control::Pong { seq });
                }
                Ok(Control::Pong { .. }) => {
                    if let Some(p) = &pongs {
                        p.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Ok(Control::Bye { reason }) => return End::Bye(reason),
                Ok(other) => {
                    if let Some(inbox) = &inbox {
                        if inbox.send(other).await.is_err() {
                            return End::Bye("the control reader stopped".into());
                        }
                    }
                }
                Err(e) => return End::Frame(e),
            }
        }
    };
    tokio::select! {
        e = writer => e,
        e = reader => e,
    }
}
