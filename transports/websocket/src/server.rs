//! tunneld's side: one port for tunnel creation (`GET /create-tpot`, a WebSocket upgrade at
//! the server's own Host) and for visitors (`Host: <name>.<domain>`, the whole connection one
//! conversation), as TPoT served them.
//!
//! This file holds the transport itself and the routing of each connection by its Host; the
//! paths live in submodules: `tpot` (the `/create-tpot` upgrade: checks, TPoT-1, admitting
//! original TPoT clients), `native` (tunnelc's `tunneld.1` sessions and running any admitted
//! session) and `visitor` (visitors by subdomain, and the opener frontends use).

mod native;
mod tpot;
mod visitor;

pub use tpot::random_subdomain;

use crate::config::Config;
use crate::head::{absolute_authority, origin, read_head, strip_port, Origin};
use crate::metrics::WsMetrics;
use crate::tpot_auth::Verifier;
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tunneld_core::http1::RequestHead;
use tunneld_core::limits::Setting;
use tunneld_core::metrics::Metrics;
use tunneld_core::tls_listener::{Accepted, BoundListener, ListenerSpec};
use tunneld_core::transport::{Transport, TransportContext, TransportError};

/// PBKDF2 checks running at once (each takes tens of milliseconds of CPU).
const AUTH_SLOTS: usize = 2;
/// How long a TPoT-1 login waits for a PBKDF2 slot before it is answered 503.
const AUTH_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct WebsocketTransport {
    cfg: Config,
    listener: BoundListener,
    tls: Option<TlsAcceptor>,
    verifier: Option<Arc<Verifier>>,
    auth_slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<WsMetrics>,
}

impl WebsocketTransport {
    /// Binds now so the caller learns the address. `tls` is the server config when the port
    /// does TLS itself (`cert`/`key` set). Its series register on `metrics`.
    pub async fn bind(
        cfg: Config,
        tls: Option<Arc<rustls::ServerConfig>>,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, TransportError> {
        let own = metrics.plugin::<WsMetrics>()?;
        let listener = BoundListener::for_transport(cfg.listen).await?;
        let verifier = cfg
            .auth_key
            .as_ref()
            .map(|k| Arc::new(Verifier::new(k.0.clone())));
        Ok(Arc::new(Self {
            cfg,
            listener,
            tls: tls.map(TlsAcceptor::from),
            verifier,
            auth_slots: Arc::new(tokio::sync::Semaphore::new(AUTH_SLOTS)),
            metrics: own,
        }))
    }

    pub fn ws_config(&self) -> WebSocketConfig {
        ws_config(self.cfg.max_message)
    }
}

/// WebSocket limits: messages and frames capped at `max_message` (tungstenite's defaults of
/// 64 MiB / 16 MiB are far too big for a tunnel), a bounded write buffer.
pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .write_buffer_size(64 << 10)
        .max_write_buffer_size((max_message + (64 << 10)) * 2)
}

#[async_trait]
impl Transport for WebsocketTransport {
    fn kind(&self) -> &'static str {
        "websocket"
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        if cx.hub.frontend(&self.cfg.frontend).is_none() {
            return Err(TransportError::Other(format!(
                "transports.{}.frontend: frontend `{}` does not exist",
                cx.name, self.cfg.frontend
            )));
        }
        if self.cfg.auth_key.is_none() && self.cfg.allow_anonymous {
            tracing::warn!(transport = %cx.name, "allow_anonymous: anyone who reaches this port can create tunnels");
        }
        tracing::info!(transport = %cx.name, addr = %self.listener.local_addr(), domain = %self.cfg.domain, tls = self.tls.is_some(), "websocket transport listening");
        let spec = ListenerSpec {
            component: cx.name.clone(),
            tls: self.tls.clone(),
            handshake_timeout: Setting::Fixed(self.cfg.header_timeout),
            max_connections: self.cfg.max_connections,
            max_per_address: Setting::Live(cx.hub.limits.clone(), |l| {
                l.max_connections_per_address
            }),
            metrics: cx.metrics.clone(),
            shutdown: cx.shutdown.clone(),
            tasks: cx.tasks.clone(),
        };
        let me = self.clone();
        tunneld_core::tls_listener::run(listener, spec, move |a| {
            let (me, cx) = (me.clone(), cx.clone());
            async move { me.connection(a, cx).await }
        })
        .await;
        Ok(())
    }
}

/// A plain-text answer, then close.
async fn answer<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, code: u16, text: &str) {
    let reason = match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("{text}\n");
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let wait = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(wait, async {
        io.write_all(msg.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

impl WebsocketTransport {
    fn origin(&self, head: &RequestHead, peer: SocketAddr) -> Origin {
        let own = if self.tls.is_some() { "https" } else { "http" };
        origin(head, peer, own, &self.cfg.trusted_proxies)
    }

    fn count(&self, cx: &TransportContext, route: &str, code: u16) {
        self.metrics
            .requests_total
            .with_label_values(&[&cx.name, route, &code.to_string()])
            .inc();
    }

    async fn connection(self: Arc<Self>, a: Accepted, cx: TransportContext) {
        let Accepted {
            mut io,
            peer,
            local,
            ..
        } = a;
        let head = match tokio::time::timeout(
            self.cfg.header_timeout,
            read_head(&mut io, cx.hub.limits.get().max_request_head),
        )
        .await
        {
            Ok(Ok(h)) => h,
            Ok(Err((0, _))) | Err(_) => return,
            Ok(Err((code, why))) => {
                self.count(&cx, "other", code);
                answer(&mut io, code, &why).await;
                return;
            }
        };
        let (head, head_len, raw) = head;
        // Exactly one Host, and an absolute-form target must name the same host: what routes
        // the request is never ambiguous (as on the https frontend).
        if head.values("host").count() > 1 {
            self.count(&cx, "other", 400);
            return answer(&mut io, 400, "more than one Host header").await;
        }
        let Some(host) = head.header("host").map(|h| h.trim().to_ascii_lowercase()) else {
            self.count(&cx, "other", 400);
            return answer(&mut io, 400, "missing Host header").await;
        };
        if let Some(named) = absolute_authority(&head.target) {
            if strip_port(&named) != strip_port(&host) {
                self.count(&cx, "other", 400);
                return answer(
                    &mut io,
                    400,
                    &format!("the request target names `{named}` but Host is `{host}`"),
                )
                .await;
            }
        }
        let bare = strip_port(&host);
        let origin = self.origin(&head, peer);
        if bare == self.cfg.domain {
            let leftover = raw[head_len..].to_vec();
            self.create(io, leftover, head, host, origin, cx).await;
        } else if let Some(rest) = bare
            .strip_suffix(&self.cfg.domain)
            .and_then(|r| r.strip_suffix('.'))
            .filter(|r| !r.is_empty())
        {
            let rest = rest.to_string();
            self.visitor(io, raw, &rest, origin, local, cx).await;
        } else {
            self.count(&cx, "other", 404);
            answer(&mut io, 404, "Not Found").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::valid_subdomain;

    #[test]
    fn hosts_and_names() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        let n = random_subdomain();
        assert_eq!(n.len(), 8);
        assert!(valid_subdomain(&n));
    }
}
