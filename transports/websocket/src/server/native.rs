//! tunnelc's `tunneld.1` sessions after the upgrade: the hello as the first message,
//! admission by token (or as one TPoT name with a valid `TPoT-1` key), the welcome or the
//! refusal; and [`WebsocketTransport::run_session`], which runs any admitted session (TPoT or
//! native) until the hub or the client ends it.

use super::random_subdomain;
use super::visitor::WsOpener;
use super::WebsocketTransport;
use crate::head::Origin;
use crate::mux::{Mux, Outbox};
use crate::session::drive;
use crate::wire::{self, Msg, CLOSE_UNKNOWN_MESSAGE};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::Identity;
use tunneld_core::hub::{Rejection, SessionGuard};
use tunneld_core::proto::{Control, Hello, ServerHello, TunnelKind, TunnelStatus};
use tunneld_core::transport::TransportContext;

/// What the upgrade learned, for a `tunneld.1` session.
pub(super) struct NativeStart {
    pub(super) opener: Arc<WsOpener>,
    pub(super) ready: tokio::sync::watch::Sender<bool>,
    pub(super) tpot_ok: bool,
    pub(super) query_subdomain: Option<String>,
    pub(super) public_base: String,
    pub(super) origin: Origin,
}

impl WebsocketTransport {
    /// A `tunneld.1` session: the hello comes as the first message.
    pub(super) async fn native<S>(
        &self,
        mut ws: WebSocketStream<S>,
        mux: Mux,
        outbox: Outbox,
        start: NativeStart,
        cx: TransportContext,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let NativeStart {
            opener,
            ready,
            tpot_ok,
            query_subdomain,
            public_base,
            origin,
        } = start;
        let mut hello = match read_hello(&mut ws, &cx).await {
            Ok(h) => h,
            Err(e) => {
                cx.metrics
                    .protocol_errors_total
                    .with_label_values(&[&cx.name, "bad_hello"])
                    .inc();
                reject(&mut ws, e.to_string(), true).await;
                return;
            }
        };
        // tunnelc's own cap: a visitor past it is refused here (counted), not reset there.
        // (Older tunnelc sent yamux's cap whatever the transport: only the word says it is
        // this transport's.)
        if let (Some(m), true) = (
            hello.max_streams,
            hello.has_capability(tunneld_core::proto::CAP_MAX_STREAMS),
        ) {
            opener.mux.peer_accepts(m as usize);
        }
        let admitted = self
            .admit_native(
                &mut hello,
                tpot_ok,
                query_subdomain,
                origin.visitor,
                opener,
                &cx,
            )
            .await;
        match admitted {
            Err(r) => {
                if cx.hub.refusal_log.allow() {
                    tracing::warn!(transport = %cx.name, remote = %origin.visitor, "client rejected: {}", r.reason);
                }
                reject(&mut ws, r.reason, r.permanent).await;
            }
            Ok((_, tunnels))
                if hello.token.is_none() && tunnels.iter().any(|t| t.error.is_some()) =>
            {
                // A TPoT-key session holds one name: without it there is nothing to serve
                // (the name is live elsewhere: 409 for original clients, this for ours).
                let reason = tunnels
                    .iter()
                    .find_map(|t| t.error.clone())
                    .unwrap_or_default();
                if cx.hub.refusal_log.allow() {
                    tracing::warn!(transport = %cx.name, remote = %origin.visitor, "client rejected: {reason}");
                }
                reject(&mut ws, reason, true).await;
            }
            Ok((guard, mut tunnels)) => {
                self.show_endpoints(&hello, &mut tunnels, &public_base);
                let welcome = cx.hub.welcome(&guard.session, tunnels);
                let Ok(json) = serde_json::to_vec(&welcome) else {
                    return;
                };
                mux.send(&Msg::Control(Bytes::from(json)));
                self.run_session(ws, mux, outbox, guard, ready, cx).await;
            }
        }
    }

    /// Admits a hello: by its token, or as `tpot:<name>` when the upgrade carried a valid
    /// TPoT-1 key and the hello asks for exactly one http tunnel. Http and tls tunnels that
    /// name no frontend get this port's.
    async fn admit_native(
        &self,
        hello: &mut Hello,
        tpot_ok: bool,
        query_subdomain: Option<String>,
        visitor: SocketAddr,
        opener: Arc<WsOpener>,
        cx: &TransportContext,
    ) -> Result<(SessionGuard, Vec<TunnelStatus>), Rejection> {
        for t in &mut hello.tunnels {
            if t.frontend.is_none() && matches!(t.kind, TunnelKind::Http | TunnelKind::Tls) {
                t.frontend = Some(self.cfg.frontend.clone());
            }
        }
        if hello.token.is_some() {
            cx.hub
                .admit(hello, None, &cx.name, "websocket", visitor, opener)
                .await
        } else if tpot_ok && hello.tunnels.len() == 1 && hello.tunnels[0].kind == TunnelKind::Http {
            let name = hello.tunnels[0]
                .subdomain
                .clone()
                .or(query_subdomain)
                .unwrap_or_else(random_subdomain);
            hello.tunnels[0].subdomain = Some(name.clone());
            let identity = Identity::new(format!("tpot:{name}"), "tpot-1", None);
            cx.hub
                .admit_identity(identity, hello, &cx.name, "websocket", visitor, opener)
                .await
        } else {
            Err(Rejection {
                reason:
                    "no credentials: send a token, or a TPoT-1 key with exactly one http tunnel"
                        .into(),
                permanent: true,
                outcome: "missing_credentials",
            })
        }
    }

    /// Names served on this port: show the URL the client came through.
    fn show_endpoints(&self, hello: &Hello, tunnels: &mut [TunnelStatus], public_base: &str) {
        for s in tunnels {
            let here = hello.tunnels.iter().any(|t| {
                t.name == s.name
                    && t.kind == TunnelKind::Http
                    && t.frontend.as_deref() == Some(self.cfg.frontend.as_str())
            });
            if let (true, Some(sub)) = (here, &s.subdomain) {
                let (scheme, host) = public_base
                    .split_once("://")
                    .unwrap_or(("http", public_base));
                s.endpoint = Some(format!("{scheme}://{sub}.{host}"));
            }
        }
    }

    /// Runs an admitted session: opens the gate for conversations (the greeting or welcome
    /// is queued first), forwards mapping changes, ends with the hub's or tunneld's signal.
    pub(super) async fn run_session<S>(
        &self,
        ws: WebSocketStream<S>,
        mux: Mux,
        outbox: Outbox,
        mut guard: SessionGuard,
        ready: tokio::sync::watch::Sender<bool>,
        cx: TransportContext,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _ = ready.send(true);
        // The session ends when the hub closes it (after tunneld's drain) or the client
        // leaves, never when the drain begins: its conversations must finish first.
        let stop = CancellationToken::new();
        let closed = guard.session.closed.clone();
        let (_, empty) = tokio::sync::mpsc::unbounded_channel();
        let mut notes = std::mem::replace(&mut guard.notifications, empty);
        let forward = {
            let mux = mux.clone();
            async move {
                while let Some(c) = notes.recv().await {
                    if let Ok(json) = serde_json::to_vec(&c) {
                        mux.send(&Msg::Control(Bytes::from(json)));
                    }
                }
                std::future::pending::<()>().await;
            }
        };
        let watch_closed = {
            let stop = stop.clone();
            async move {
                closed.cancelled().await;
                stop.cancel();
                std::future::pending::<()>().await;
            }
        };
        let run = drive(
            ws,
            mux,
            outbox,
            None,
            self.cfg.idle_timeout,
            stop,
            |m| match m {
                Msg::Control(json) => match serde_json::from_slice::<Control>(&json) {
                    Ok(Control::Bye { reason }) => {
                        Err((1000, format!("the client said bye: {reason}")))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err((CLOSE_UNKNOWN_MESSAGE, format!("bad control message: {e}"))),
                },
                other => Err((
                    CLOSE_UNKNOWN_MESSAGE,
                    format!("a client may not send {}", kind_of(&other)),
                )),
            },
        );
        let ended = tokio::select! {
            e = run => e,
            _ = forward => return,
            _ = watch_closed => return,
        };
        if let Some(reason) = ended.protocol_error {
            cx.metrics
                .protocol_errors_total
                .with_label_values(&[&cx.name, reason])
                .inc();
        }
        tracing::info!(transport = %cx.name, client = %guard.session.info.client_id, "websocket session ended: {}", ended.reason);
    }
}

/// Why the first message was not a usable hello (the refusal's text).
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("the hello is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("the first message must be the hello (0x11 'T')")]
    NotHello,
    #[error("expected the hello message")]
    NotBinary,
    #[error("no hello in time")]
    Timeout,
}

/// Waits up to the handshake timeout for the first message, which must be the hello.
async fn read_hello<S>(
    ws: &mut WebSocketStream<S>,
    cx: &TransportContext,
) -> Result<Hello, HelloError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let first = tokio::time::timeout(cx.handshake_timeout(), ws.next()).await;
    match first {
        Ok(Some(Ok(Message::Binary(b)))) => match wire::decode(b) {
            Ok(Msg::Control(json)) => serde_json::from_slice(&json).map_err(HelloError::Json),
            _ => Err(HelloError::NotHello),
        },
        Ok(_) => Err(HelloError::NotBinary),
        Err(_) => Err(HelloError::Timeout),
    }
}

/// Answers the hello with a refusal, then closes the WebSocket.
async fn reject<S>(ws: &mut WebSocketStream<S>, reason: String, permanent: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = send_json(ws, &ServerHello::Rejected { reason, permanent }).await;
    let _ = ws.close(None).await;
}

fn kind_of(m: &Msg) -> &'static str {
    match m {
        Msg::Greeting(_) => "a greeting (G)",
        Msg::HttpOpen { .. } => "a conversation open (H)",
        Msg::Open { .. } => "a conversation open (R)",
        _ => "this message",
    }
}

/// Why an answer to the hello was not written.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("the client read no answer in time")]
    Timeout,
    #[error(transparent)]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

async fn send_json<S, T>(ws: &mut WebSocketStream<S>, msg: &T) -> Result<(), AnswerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: serde::Serialize,
{
    use futures::SinkExt;
    let json = serde_json::to_vec(msg)?;
    // A client that reads nothing cannot hold the handshake: the answer has a deadline.
    let sent = ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        wire::encode(&Msg::Control(Bytes::from(json))),
    ));
    Ok(tokio::time::timeout(ANSWER_DEADLINE, sent)
        .await
        .map_err(|_| AnswerError::Timeout)??)
}

/// How long a hello's answer (welcome or refusal) may take to write.
const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
