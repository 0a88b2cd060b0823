//! tunneld's side: one port for tunnel creation (`GET /create-tpot`, a WebSocket upgrade at
//! the server's own Host) and for visitors (`Host: <name>.<domain>`, the whole connection one
//! conversation), as TPoT served them.

use crate::config::{valid_subdomain, Config};
use crate::head::{absolute_authority, origin, read_head, strip_port, Origin};
use crate::mux::{Mux, MuxMetrics, OpenRefused, Outbox};
use crate::session::drive;
use crate::tpot_auth::{AuthError, Verifier};
use crate::wire::{self, Msg, CLOSE_UNKNOWN_MESSAGE, SUBPROTOCOL};
use async_trait::async_trait;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::Identity;
use tunneld_core::frontend::NameRoute;
use tunneld_core::http1::RequestHead;
use tunneld_core::hub::Rejection;
use tunneld_core::idle::{Activity, Touching};
use tunneld_core::io::{BoxIo, Prefixed};
use tunneld_core::proto::{Control, Hello, ServerHello, TunnelKind, TunnelRequest, VERSION};
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
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
}

impl WebsocketTransport {
    /// Binds now so the caller learns the address. `tls` is the server config when the port
    /// does TLS itself (`cert`/`key` set).
    pub async fn bind(
        cfg: Config,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Arc<Self>, TransportError> {
        let listener =
            BoundListener::bind(cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
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
            handshake_timeout: self.cfg.header_timeout,
            max_connections: self.cfg.max_connections,
            max_per_address: cx.hub.limits.max_connections_per_address,
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
        cx.metrics
            .ws_requests_total
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
            read_head(&mut io, cx.hub.limits.max_request_head),
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

    /// A visitor: the whole connection becomes one conversation of the named tunnel.
    async fn visitor(
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
        let members = match frontend.route_name(rest) {
            NameRoute::Unknown => {
                self.count(&cx, "visitor", 404);
                return answer(&mut io, 404, &format!("no tunnel is named `{rest}`")).await;
            }
            NameRoute::Reserved => {
                self.count(&cx, "visitor", 502);
                return answer(&mut io, 502, &format!("tunnel `{rest}` is offline")).await;
            }
            NameRoute::Active { kind, .. } if kind != TunnelKind::Http => {
                self.count(&cx, "visitor", 404);
                return answer(
                    &mut io,
                    404,
                    &format!("`{rest}` is a TLS passthrough tunnel: use the HTTPS port"),
                )
                .await;
            }
            NameRoute::Active { members, .. } => members,
        };
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
        let Some(conv) = conv else {
            self.count(&cx, "visitor", failure.0);
            return answer(&mut io, failure.0, &failure.1).await;
        };
        let mut conv = FirstByte::new(conv);
        if conv.inner.write_all(&raw).await.is_err() {
            self.count(&cx, "visitor", 502);
            return answer(&mut io, 502, "the tunnel session ended").await;
        }
        let counters = tunneld_core::splice::SpliceCounters::default();
        // A visitor that stops reading frees its conversation after the stall timeout.
        let io = tunneld_core::stream_budget::StallGuard::new(
            io,
            cx.hub.limits.stream_stall_timeout,
            Some(
                cx.metrics
                    .streams_stalled_total
                    .with_label_values(&[&cx.name]),
            ),
        );
        // A conversation with no byte either way for the idle timeout is closed.
        let activity = Activity::new();
        let mut io = Touching::new(io, activity.clone());
        let idle = cx.hub.limits.idle_timeout;
        let spliced = tokio::select! {
            r = tunneld_core::splice(&mut io, &mut conv, counters) => r.map(drop),
            _ = activity.idle(idle, idle) => {
                cx.metrics.visitors_idle_closed_total.with_label_values(&[&cx.name]).inc();
                Ok(())
            }
        };
        match spliced {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && !conv.seen => {
                self.count(&cx, "visitor", 503);
                answer(&mut io, 503, &e.to_string()).await;
            }
            _ => self.count(&cx, "visitor", 200),
        }
    }

    /// `GET /create-tpot`: checks, authenticates, admits, upgrades.
    async fn create(
        &self,
        mut io: BoxIo,
        leftover: Vec<u8>,
        head: RequestHead,
        host: String,
        origin: Origin,
        cx: TransportContext,
    ) {
        let refuse = |code: u16| self.count(&cx, "create", code);
        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (head.target.as_str(), None),
        };
        if path != "/create-tpot" {
            refuse(404);
            return answer(&mut io, 404, "Not Found").await;
        }
        if head.method != "GET" {
            refuse(405);
            return answer(&mut io, 405, "Method Not Allowed").await;
        }
        if head.minor != 1 {
            refuse(400);
            return answer(&mut io, 400, "incorrect http version").await;
        }
        let key = head.header("sec-websocket-key").map(str::trim);
        if !head.has_token("connection", "upgrade")
            || !head.has_token("upgrade", "websocket")
            || head.header("sec-websocket-version").map(str::trim) != Some("13")
            || key.is_none_or(str::is_empty)
        {
            refuse(400);
            return answer(&mut io, 400, "not a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)").await;
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
            key.unwrap_or_default().as_bytes(),
        );
        let mut subdomain = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if let Some(("subdomain", v)) = pair.split_once('=') {
                let v = v.to_ascii_lowercase();
                if !valid_subdomain(&v) {
                    refuse(400);
                    return answer(&mut io, 400, &format!("invalid subdomain `{v}`: use 1-24 of a-z, 0-9 and -, not starting with -")).await;
                }
                subdomain = Some(v);
            }
        }
        let native = head.has_token("sec-websocket-protocol", SUBPROTOCOL);
        // TPoT-1: required for original clients when a key is set; optional for ours.
        let tpot_header = head.header("authorization").map(str::to_string);
        let tpot_ok = match (&self.verifier, &tpot_header) {
            (Some(v), Some(h)) if h.trim_start().starts_with("TPoT-1") || !native => {
                // An address over its failure budget gets no PBKDF2 time at all.
                let ip = origin.visitor.ip();
                if let Err(wait) = cx.hub.throttle.check(ip) {
                    refuse(429);
                    let why = tunneld_core::hub::throttled_reason(ip, wait);
                    return answer(&mut io, 429, &why).await;
                }
                match self.check_tpot(v.clone(), Some(h.clone())).await {
                    Ok(()) => true,
                    Err(e) => {
                        if !matches!(e, AuthError::Busy) {
                            cx.hub.throttle.failed(ip);
                        }
                        if cx.hub.refusal_log.allow() {
                            tracing::warn!(transport = %cx.name, visitor = %origin.visitor, reason = e.reason(), "TPoT-1 refused: {e}");
                        }
                        let code = if matches!(e, AuthError::Busy) {
                            503
                        } else {
                            401
                        };
                        refuse(code);
                        return answer(&mut io, code, &e.to_string()).await;
                    }
                }
            }
            (Some(_), None) if !native => {
                refuse(401);
                return answer(&mut io, 401, &AuthError::Missing.to_string()).await;
            }
            (None, _) if !native && !self.cfg.allow_anonymous => {
                refuse(401);
                return answer(&mut io, 401, "this server takes TPoT clients only with a key: set auth_key (or allow_anonymous)").await;
            }
            (None, _) => !native,
            _ => false,
        };
        let metrics = MuxMetrics {
            active: Some(
                cx.metrics
                    .ws_conversations_active
                    .with_label_values(&[&cx.name]),
            ),
            pauses: Some(cx.metrics.ws_pauses_total.with_label_values(&[&cx.name])),
            overruns: Some(
                cx.metrics
                    .protocol_errors_total
                    .with_label_values(&[&cx.name, "ignored_pause"]),
            ),
        };
        let (mux, outbox) = Mux::new(native, self.cfg.max_conversations, metrics);
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let opener = Arc::new(WsOpener {
            mux: mux.clone(),
            open_timeout: self.cfg.open_timeout,
            ready: ready_rx,
        });
        if !native {
            let name = subdomain.unwrap_or_else(random_subdomain);
            let client_id = format!("tpot:{name}");
            if cx.hub.holder_alive(&client_id).await {
                refuse(409);
                return answer(&mut io, 409, &format!("subdomain `{name}` is in use")).await;
            }
            let hello = self.tpot_hello(&name);
            let method = if self.verifier.is_some() {
                "tpot-1"
            } else {
                "anonymous"
            };
            let identity = Identity::new(client_id, method, None);
            let admitted = cx
                .hub
                .admit_identity(
                    identity,
                    &hello,
                    &cx.name,
                    "websocket",
                    origin.visitor,
                    opener,
                )
                .await;
            let guard = match admitted {
                Err(r) => {
                    refuse(400);
                    return answer(&mut io, 400, &r.reason).await;
                }
                Ok((guard, statuses)) => match statuses.first().and_then(|s| s.error.clone()) {
                    Some(e) => {
                        let code = if e.contains("held by another client") {
                            409
                        } else {
                            400
                        };
                        refuse(code);
                        return answer(&mut io, code, &e).await;
                    }
                    None => guard,
                },
            };
            if upgrade(&mut io, &accept, None).await.is_err() {
                return;
            }
            refuse(101);
            mux.send(&Msg::Greeting(format!("TPoT/1 {name}")));
            let ws = WebSocketStream::from_raw_socket(
                Prefixed::new(leftover, io),
                Role::Server,
                Some(self.ws_config()),
            )
            .await;
            tracing::info!(transport = %cx.name, subdomain = %name, "TPoT tunnel created");
            self.run_session(ws, mux, outbox, guard, ready, cx).await;
            return;
        }
        if upgrade(&mut io, &accept, Some(SUBPROTOCOL)).await.is_err() {
            return;
        }
        refuse(101);
        let ws = WebSocketStream::from_raw_socket(
            Prefixed::new(leftover, io),
            Role::Server,
            Some(self.ws_config()),
        )
        .await;
        let public_base = format!("{}://{}", origin.scheme, host);
        let session = NativeStart {
            opener,
            ready,
            tpot_ok,
            query_subdomain: subdomain,
            public_base,
            origin,
        };
        self.native(ws, mux, outbox, session, cx).await;
    }

    fn tpot_hello(&self, name: &str) -> Hello {
        Hello {
            version: VERSION,
            token: None,
            tunnels: vec![TunnelRequest {
                name: name.to_string(),
                kind: TunnelKind::Http,
                remote_port: None,
                frontend: Some(self.cfg.frontend.clone()),
                proxy_protocol: None,
                subdomain: Some(name.to_string()),
            }],
            accept_server_mappings: false,
            agent: "TPoT".into(),
            max_streams: None,
            instance: None,
        }
    }

    async fn check_tpot(&self, v: Arc<Verifier>, header: Option<String>) -> Result<(), AuthError> {
        // A bounded wait for a PBKDF2 slot: a queue of guesses cannot grow without end.
        let _slot = tokio::time::timeout(AUTH_SLOT_WAIT, self.auth_slots.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        tokio::task::spawn_blocking(move || v.verify(header.as_deref()))
            .await
            .unwrap_or(Err(AuthError::Busy))
    }

    /// A `tunneld.1` session: the hello comes as the first message.
    async fn native<S>(
        &self,
        mut ws: WebSocketStream<S>,
        mux: Mux,
        outbox: Outbox,
        start: NativeStart,
        cx: TransportContext,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use futures::StreamExt;
        let NativeStart {
            opener,
            ready,
            tpot_ok,
            query_subdomain,
            public_base,
            origin,
        } = start;
        use tokio_tungstenite::tungstenite::Message;
        let first = tokio::time::timeout(cx.handshake_timeout, ws.next()).await;
        let hello: Result<Hello, String> = match first {
            Ok(Some(Ok(Message::Binary(b)))) => match wire::decode(b) {
                Ok(Msg::Control(json)) => serde_json::from_slice(&json)
                    .map_err(|e| format!("the hello is not valid JSON: {e}")),
                _ => Err("the first message must be the hello (0x11 'T')".into()),
            },
            Ok(_) => Err("expected the hello message".into()),
            Err(_) => Err("no hello in time".into()),
        };
        let mut hello = match hello {
            Ok(h) => h,
            Err(e) => {
                cx.metrics
                    .protocol_errors_total
                    .with_label_values(&[&cx.name, "bad_hello"])
                    .inc();
                let _ = send_json(
                    &mut ws,
                    &ServerHello::Rejected {
                        reason: e,
                        permanent: true,
                    },
                )
                .await;
                let _ = ws.close(None).await;
                return;
            }
        };
        for t in &mut hello.tunnels {
            if t.frontend.is_none() && matches!(t.kind, TunnelKind::Http | TunnelKind::Tls) {
                t.frontend = Some(self.cfg.frontend.clone());
            }
        }
        let admitted: Result<_, Rejection> = if hello.token.is_some() {
            cx.hub
                .admit(&hello, None, &cx.name, "websocket", origin.visitor, opener)
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
                .admit_identity(
                    identity,
                    &hello,
                    &cx.name,
                    "websocket",
                    origin.visitor,
                    opener,
                )
                .await
        } else {
            Err(Rejection {
                reason:
                    "no credentials: send a token, or a TPoT-1 key with exactly one http tunnel"
                        .into(),
                permanent: true,
                outcome: "missing_credentials",
            })
        };
        match admitted {
            Err(r) => {
                if cx.hub.refusal_log.allow() {
                    tracing::warn!(transport = %cx.name, remote = %origin.visitor, "client rejected: {}", r.reason);
                }
                let _ = send_json(
                    &mut ws,
                    &ServerHello::Rejected {
                        reason: r.reason,
                        permanent: r.permanent,
                    },
                )
                .await;
                let _ = ws.close(None).await;
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
                let _ = send_json(
                    &mut ws,
                    &ServerHello::Rejected {
                        reason,
                        permanent: true,
                    },
                )
                .await;
                let _ = ws.close(None).await;
            }
            Ok((guard, mut tunnels)) => {
                // Names served on this port: show the URL the client came through.
                for s in &mut tunnels {
                    let here = hello.tunnels.iter().any(|t| {
                        t.name == s.name
                            && t.kind == TunnelKind::Http
                            && t.frontend.as_deref() == Some(self.cfg.frontend.as_str())
                    });
                    if let (true, Some(sub)) = (here, &s.subdomain) {
                        let (scheme, host) = public_base
                            .split_once("://")
                            .unwrap_or(("http", &public_base));
                        s.endpoint = Some(format!("{scheme}://{sub}.{host}"));
                    }
                }
                let welcome = cx
                    .hub
                    .welcome(guard.session.info.client_id.clone(), tunnels);
                let Ok(json) = serde_json::to_vec(&welcome) else {
                    return;
                };
                mux.send(&Msg::Control(Bytes::from(json)));
                self.run_session(ws, mux, outbox, guard, ready, cx).await;
            }
        }
    }
}

/// What the upgrade learned, for a `tunneld.1` session.
struct NativeStart {
    opener: Arc<WsOpener>,
    ready: tokio::sync::watch::Sender<bool>,
    tpot_ok: bool,
    query_subdomain: Option<String>,
    public_base: String,
    origin: Origin,
}

impl WebsocketTransport {
    /// Runs an admitted session: opens the gate for conversations (the greeting or welcome
    /// is queued first), forwards mapping changes, ends with the hub's or tunneld's signal.
    async fn run_session<S>(
        &self,
        ws: WebSocketStream<S>,
        mux: Mux,
        outbox: Outbox,
        mut guard: tunneld_core::hub::SessionGuard,
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

fn kind_of(m: &Msg) -> &'static str {
    match m {
        Msg::Greeting(_) => "a greeting (G)",
        Msg::HttpOpen { .. } => "a conversation open (H)",
        Msg::Open { .. } => "a conversation open (R)",
        _ => "this message",
    }
}

async fn send_json<S, T>(ws: &mut WebSocketStream<S>, msg: &T) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: serde::Serialize,
{
    use futures::SinkExt;
    let json = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
    // A client that reads nothing cannot hold the handshake: the answer has a deadline.
    let sent = ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        wire::encode(&Msg::Control(Bytes::from(json))),
    ));
    tokio::time::timeout(ANSWER_DEADLINE, sent)
        .await
        .map_err(|_| "the client read no answer in time".to_string())?
        .map_err(|e| e.to_string())
}

/// How long a hello's answer (welcome or refusal) may take to write.
const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the `101 Switching Protocols` answer.
async fn upgrade<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    accept: &str,
    protocol: Option<&str>,
) -> std::io::Result<()> {
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    io.write_all(resp.as_bytes()).await?;
    io.flush().await
}

/// TPoT's random names: 8 characters of `[0-9a-z]`.
pub fn random_subdomain() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    tunneld_core::auth::random_bytes::<8>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Opens conversations of one session for the frontends.
pub(crate) struct WsOpener {
    mux: Mux,
    open_timeout: std::time::Duration,
    /// Set once the greeting or welcome is queued: conversations wait for it.
    ready: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl OpenStream for WsOpener {
    async fn probe(&self, deadline: std::time::Duration) -> bool {
        self.mux.probe(deadline).await
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
            Ok(Ok(Err(reason))) => Err(OpenError::LocalRefused(reason)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_names() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        let n = random_subdomain();
        assert_eq!(n.len(), 8);
        assert!(valid_subdomain(&n));
    }
}
