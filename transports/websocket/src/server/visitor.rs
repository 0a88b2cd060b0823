//! Visitors by subdomain (`Host: <name>.<domain>`): the whole connection becomes one
//! conversation of the named tunnel, tried on each member of the name in turn; and
//! [`WsOpener`], how frontends open conversations on a session, with [`FirstByte`], which
//! lets a refusal before the answer's first byte still become a `503` for the visitor.

use super::{answer, WebsocketTransport};
use crate::head::Origin;
use crate::mux::{Mux, OpenRefused};
use crate::wire::{self, Msg};
use async_trait::async_trait;
use bytes::Bytes;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tunneld_core::frontend::{NameMember, NameRoute};
use tunneld_core::idle::{Activity, Touching};
use tunneld_core::io::BoxIo;
use tunneld_core::proto::TunnelKind;
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
use tunneld_core::transport::TransportContext;

impl WebsocketTransport {
    /// A visitor: the whole connection becomes one conversation of the named tunnel.
    pub(super) async fn visitor(
        &self,
        mut io: BoxIo,
        raw: Vec<u8>,
        rest: &str,
        origin: Origin,
        local: SocketAddr,
        cx: TransportContext,
    ) {
        let Some(frontend) = cx.hub.frontend(&self.cfg.frontend) else {
            return;
        };
        if cx.draining.is_cancelled() {
            self.count(&cx, "visitor", 503);
            return answer(&mut io, 503, "tunneld is restarting: try again in a moment").await;
        }
        // The drain waits for this conversation.
        let _visiting = cx.visitors.token();
        let members = match route_members(frontend.route_name(rest), rest) {
            Ok(members) => members,
            Err((code, why)) => {
                self.count(&cx, "visitor", code);
                return answer(&mut io, code, &why).await;
            }
        };
        let started = std::time::Instant::now();
        let conv = match self.open_member(members, rest, &origin, local).await {
            Ok(conv) => conv,
            Err((code, why)) => {
                self.count(&cx, "visitor", code);
                return answer(&mut io, code, &why).await;
            }
        };
        // The port acts as a frontend: its stream and byte series carry the transport's
        // name in their `frontend` label.
        cx.metrics
            .stream_open_seconds
            .with_label_values(&[&cx.name])
            .observe(started.elapsed().as_secs_f64());
        cx.metrics
            .streams_opened_total
            .with_label_values(&[&cx.name])
            .inc();
        self.splice_visitor(io, conv, raw, (&cx, rest)).await;
    }

    /// Opens the conversation on the first member that takes it (an offline one is skipped);
    /// otherwise the visitor's answer: code and text.
    async fn open_member(
        &self,
        members: Vec<NameMember>,
        rest: &str,
        origin: &Origin,
        local: SocketAddr,
    ) -> Result<BoxIo, (u16, String)> {
        let mut failure = (502, format!("tunnel `{rest}` is offline"));
        let mut conv = None;
        for m in members {
            let header = StreamHeader {
                tunnel: m.tunnel.clone(),
                target: None,
                visitor: origin.visitor,
                public: local,
                proxy_protocol: m.proxy_protocol,
            };
            let opened = tokio::time::timeout(self.cfg.open_timeout, m.target.open(header, None))
                .await
                .unwrap_or(Err(OpenError::Timeout));
            match opened {
                Ok(c) => {
                    conv = Some(c);
                    break;
                }
                Err(OpenError::Offline) => continue,
                Err(
                    e @ (OpenError::LocalRefused(_)
                    | OpenError::TooManyStreams
                    | OpenError::Capped(_)),
                ) => {
                    failure = (503, e.to_string());
                    break;
                }
                Err(e @ OpenError::Timeout) => {
                    failure = (504, e.to_string());
                    break;
                }
                Err(e) => {
                    failure = (502, e.to_string());
                    break;
                }
            }
        }
        conv.ok_or(failure)
    }

    /// Sends the visitor's bytes read so far, then splices the visitor and the conversation
    /// until either ends or both are idle; a refusal before the answer's first byte is
    /// answered `503`.
    async fn splice_visitor(
        &self,
        mut io: BoxIo,
        conv: BoxIo,
        raw: Vec<u8>,
        (cx, name): (&TransportContext, &str),
    ) {
        let mut conv = FirstByte::new(conv);
        if conv.inner.write_all(&raw).await.is_err() {
            self.count(cx, "visitor", 502);
            return answer(&mut io, 502, "the tunnel session ended").await;
        }
        let counters = tunneld_core::splice::SpliceCounters {
            a_to_b: Some(cx.metrics.bytes_total.with_label_values(&[&cx.name, "in"])),
            b_to_a: Some(cx.metrics.bytes_total.with_label_values(&[&cx.name, "out"])),
            tunnel: cx.metrics.tunnel_stream(&cx.name, name),
        };
        counters.count_in(raw.len() as u64);
        // A visitor that stops reading frees its conversation after the stall timeout.
        let io = tunneld_core::stream_budget::StallGuard::new(
            io,
            cx.hub.limits.get().stream_stall_timeout,
            Some(
                cx.metrics
                    .streams_stalled_total
                    .with_label_values(&[&cx.name]),
            ),
        );
        // A conversation with no byte either way for the idle timeout is closed.
        let activity = Activity::new();
        let mut io = Touching::new(io, activity.clone());
        let idle = cx.hub.limits.get().idle_timeout;
        let spliced = tokio::select! {
            r = tunneld_core::splice(&mut io, &mut conv, counters) => r.map(drop),
            _ = activity.idle(idle, idle) => {
                cx.metrics.visitors_idle_closed_total.with_label_values(&[&cx.name]).inc();
                Ok(())
            }
        };
        match spliced {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && !conv.seen => {
                self.count(cx, "visitor", 503);
                answer(&mut io, 503, &e.to_string()).await;
            }
            _ => self.count(cx, "visitor", 200),
        }
    }
}

/// The members to try for a name, or the visitor's answer: code and text.
fn route_members(route: NameRoute, rest: &str) -> Result<Vec<NameMember>, (u16, String)> {
    match route {
        NameRoute::Unknown => Err((404, format!("no tunnel is named `{rest}`"))),
        NameRoute::Reserved => Err((502, format!("tunnel `{rest}` is offline"))),
        NameRoute::Active { kind, .. } if kind != TunnelKind::Http => Err((
            404,
            format!("`{rest}` is a TLS passthrough tunnel: use the HTTPS port"),
        )),
        NameRoute::Active { members, .. } => Ok(members),
    }
}

/// Opens conversations of one session for the frontends.
pub(crate) struct WsOpener {
    pub(super) mux: Mux,
    pub(super) open_timeout: std::time::Duration,
    /// Set once the greeting or welcome is queued: conversations wait for it.
    pub(super) ready: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl OpenStream for WsOpener {
    async fn probe(&self, deadline: std::time::Duration) -> bool {
        self.mux.probe(deadline).await
    }

    fn stream_cap(&self) -> Option<usize> {
        Some(self.mux.max_conversations())
    }

    fn is_full(&self) -> bool {
        self.mux.is_full()
    }

    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let refused = |e: OpenRefused| match e {
            OpenRefused::TooMany => OpenError::TooManyStreams,
            OpenRefused::Closed => OpenError::Offline,
        };
        let mut ready = self.ready.clone();
        match tokio::time::timeout(self.open_timeout, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(OpenError::Offline),
            Err(_) => return Err(OpenError::Timeout),
        }
        if !self.mux.native() {
            // TPoT: fire and forget; an `N` shows as a refused read.
            let (conv, _) = self
                .mux
                .open(
                    |id| Msg::HttpOpen {
                        id,
                        visitor: wire::v4_visitor(header.visitor),
                    },
                    false,
                )
                .map_err(refused)?;
            return Ok(Box::new(conv));
        }
        let json = serde_json::to_vec(&header).map_err(|e| OpenError::Session(e.to_string()))?;
        let (conv, ack) = self
            .mux
            .open(
                |id| Msg::Open {
                    id,
                    header: Bytes::from(json),
                },
                true,
            )
            .map_err(refused)?;
        let Some(ack) = ack else {
            return Err(OpenError::Session("no answer channel".into()));
        };
        match tokio::time::timeout(self.open_timeout, ack).await {
            Ok(Ok(Ok(()))) => Ok(Box::new(conv)),
            Ok(Ok(Err(reason))) => Err(OpenError::LocalRefused(reason.to_string())),
            Ok(Err(_)) => Err(OpenError::Session("the tunnel session ended".into())),
            Err(_) => Err(OpenError::Timeout),
        }
    }
}

/// Remembers whether any byte was read, so a refusal before the first byte of the answer
/// can still become a `503` for the visitor.
struct FirstByte<T> {
    inner: T,
    seen: bool,
}

impl<T> FirstByte<T> {
    fn new(inner: T) -> Self {
        Self { inner, seen: false }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByte<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen = true;
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByte<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
