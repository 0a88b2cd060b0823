//! Runs one WebSocket for either end: a writer task drains the mux's queues (control first,
//! `feed` many then one flush), the reader applies conversation messages and hands the rest
//! to the role's handler.

use crate::mux::{Mux, Out, Outbox};
use crate::wire::{self, Msg, CLOSE_UNKNOWN_MESSAGE};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Messages fed before one flush.
const BATCH: usize = 64;

/// What ended a session, and whether it was the peer's protocol error (metrics).
pub struct Ended {
    pub reason: SessionEnd,
    pub protocol_error: Option<&'static str>,
}

/// Why a session ended, in words for the logs.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("the session was closed")]
    Stopped,
    #[error("the WebSocket could not be written")]
    WriteFailed,
    #[error("the peer stopped reading the WebSocket (its control queue is full)")]
    Stalled,
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("the WebSocket closed")]
    StreamEnded,
    #[error("message too big: {0}")]
    TooBig(String),
    #[error("WebSocket error: {0}")]
    WebSocket(WsError),
    /// The role's handler refused a message (its close reason).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Undecodable(#[from] wire::WireError),
    #[error("text messages are not part of the protocol")]
    Text,
    #[error("the peer closed the WebSocket")]
    PeerClosed,
}

/// What the writer does with one outgoing item: `false` once the WebSocket is done (a
/// write failed or the item was the close).
async fn put<S>(sink: &mut SplitSink<WebSocketStream<S>, Message>, o: Out) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match o {
        Out::Msg(b) => sink.feed(Message::Binary(b)).await.is_ok(),
        Out::Ping => sink.feed(Message::Ping(Bytes::new())).await.is_ok(),
        Out::Close(code, reason) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
            let _ = sink.close().await;
            false
        }
    }
}

/// Feeds a conversation's data message, after every control message queued before it: a
/// conversation's opening (`H`, `O`) is queued before its data, and taking the data from
/// its queue makes those earlier control messages visible, so draining the control queue
/// first keeps them in order (checking the control queue only before taking the data left a
/// window where the data overtook its own opening).
async fn put_data<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    out: &mut Outbox,
    data: Bytes,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Ok(c) = out.ctl.try_recv() {
        if !put(sink, c).await {
            return false;
        }
    }
    put(sink, Out::Msg(data)).await
}

async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut out: Outbox,
    ping_every: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut tick = ping_every.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    loop {
        let fed = tokio::select! {
            biased;
            m = out.ctl.recv() => match m {
                Some(o) => put(&mut sink, o).await,
                None => return,
            },
            d = out.data.recv() => match d {
                Some(b) => put_data(&mut sink, &mut out, b).await,
                None => return,
            },
            _ = async {
                match &mut tick {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if !fed {
            return;
        }
        let mut n = 1;
        while n < BATCH {
            let ok = if let Ok(c) = out.ctl.try_recv() {
                put(&mut sink, c).await
            } else if let Ok(d) = out.data.try_recv() {
                put_data(&mut sink, &mut out, d).await
            } else {
                break;
            };
            if !ok {
                return;
            }
            n += 1;
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Drives `ws` until it ends, `stop` is cancelled or nothing arrives for `idle`. Control
/// messages other than conversation ones go to `on_msg`; an `Err((code, why))` from it closes
/// the WebSocket with that code.
pub async fn drive<S, F>(
    ws: WebSocketStream<S>,
    mux: Mux,
    outbox: Outbox,
    ping_every: Option<Duration>,
    idle: Duration,
    stop: CancellationToken,
    mut on_msg: F,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Msg) -> Result<(), (u16, String)>,
{
    let (sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(write_loop(sink, outbox, ping_every));
    let mut protocol_error = None;
    // Set once the writer task has been awaited to completion: a JoinHandle must not be
    // polled again after that (it panics).
    let mut writer_done = false;
    let reason = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                mux.close(1001, "going away");
                break SessionEnd::Stopped;
            }
            _ = &mut writer => {
                writer_done = true;
                break SessionEnd::WriteFailed;
            }
            _ = mux.stalled() => {
                break SessionEnd::Stalled;
            }
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match received(next, &mux, idle, &mut protocol_error) {
            Ok(m) => m,
            Err(why) => break why,
        };
        if let Err(why) = apply(msg, &mux, &mut on_msg, &mut protocol_error) {
            break why;
        }
    };
    mux.shutdown();
    mux.close(1000, "");
    if !writer_done
        && tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    Ended {
        reason,
        protocol_error,
    }
}

/// What the reader got from the WebSocket: the next message, or why the session ends (with
/// the close that calls for queued, and the protocol error noted).
fn received(
    next: Result<Option<Result<Message, WsError>>, tokio::time::error::Elapsed>,
    mux: &Mux,
    idle: Duration,
    protocol_error: &mut Option<&'static str>,
) -> Result<Message, SessionEnd> {
    match next {
        Err(_) => {
            mux.close(1001, "idle");
            Err(SessionEnd::Idle(idle))
        }
        Ok(None) => Err(SessionEnd::StreamEnded),
        Ok(Some(Err(WsError::Capacity(e)))) => {
            *protocol_error = Some("message_too_large");
            mux.close(1009, "message too big");
            Err(SessionEnd::TooBig(e.to_string()))
        }
        Ok(Some(Err(e))) => {
            *protocol_error = Some("websocket");
            Err(SessionEnd::WebSocket(e))
        }
        Ok(Some(Ok(m))) => Ok(m),
    }
}

/// Applies one message: conversation messages go to the mux, the others to `on_msg`, pongs
/// to the liveness probe. `Err` with why the session ends (with the close that calls for
/// queued, and the protocol error noted).
fn apply<F>(
    msg: Message,
    mux: &Mux,
    on_msg: &mut F,
    protocol_error: &mut Option<&'static str>,
) -> Result<(), SessionEnd>
where
    F: FnMut(Msg) -> Result<(), (u16, String)>,
{
    match msg {
        Message::Binary(b) => match wire::decode(b) {
            Ok(
                m @ (Msg::Data { .. }
                | Msg::Pause(_)
                | Msg::Resume(_)
                | Msg::Close(_)
                | Msg::Refused { .. }
                | Msg::Accepted(_)
                | Msg::Fin(_)),
            ) => {
                mux.dispatch(m);
                Ok(())
            }
            Ok(other) => {
                if let Err((code, why)) = on_msg(other) {
                    if code == CLOSE_UNKNOWN_MESSAGE {
                        *protocol_error = Some("unknown_message");
                    }
                    mux.close(code, &why);
                    return Err(SessionEnd::Refused(why));
                }
                Ok(())
            }
            Err(e) => {
                *protocol_error = Some("unknown_message");
                mux.close(CLOSE_UNKNOWN_MESSAGE, &e.to_string());
                Err(e.into())
            }
        },
        Message::Text(_) => {
            *protocol_error = Some("unknown_message");
            mux.close(CLOSE_UNKNOWN_MESSAGE, &SessionEnd::Text.to_string());
            Err(SessionEnd::Text)
        }
        Message::Close(_) => Err(SessionEnd::PeerClosed),
        Message::Pong(_) => {
            mux.pong();
            Ok(())
        }
        _ => Ok(()),
    }
}
