//! `GET /create-tpot`: the request's checks, the `TPoT-1` key (throttled, on a bounded
//! number of PBKDF2 slots), the `101` upgrade, and for original TPoT clients the admission of
//! their one http tunnel under a random or asked-for name; `tunneld.1` upgrades go on in
//! `native`.

use super::native::NativeStart;
use super::visitor::WsOpener;
use super::{answer, WebsocketTransport, AUTH_SLOT_WAIT};
use crate::config::valid_subdomain;
use crate::head::Origin;
use crate::metrics::WsMetrics;
use crate::mux::{Mux, MuxMetrics};
use crate::tpot_auth::{AuthError, Verifier};
use crate::wire::{Msg, SUBPROTOCOL};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tunneld_core::auth::Identity;
use tunneld_core::http1::RequestHead;
use tunneld_core::hub::SessionGuard;
use tunneld_core::io::{BoxIo, Prefixed};
use tunneld_core::proto::{Hello, TunnelKind, TunnelRequest, VERSION};
use tunneld_core::transport::TransportContext;

/// What a well-formed `GET /create-tpot` upgrade asks for.
struct CreateRequest {
    /// The `Sec-WebSocket-Accept` answer.
    accept: String,
    /// `?subdomain=`, lowercased.
    subdomain: Option<String>,
    /// The `tunneld.1` subprotocol was offered.
    native: bool,
}

impl WebsocketTransport {
    /// `GET /create-tpot`: checks, authenticates, admits, upgrades.
    pub(super) async fn create(
        &self,
        mut io: BoxIo,
        leftover: Vec<u8>,
        head: RequestHead,
        host: String,
        origin: Origin,
        cx: TransportContext,
    ) {
        let refuse = |code: u16| self.count(&cx, "create", code);
        let CreateRequest {
            accept,
            subdomain,
            native,
        } = match check_create(&head) {
            Ok(request) => request,
            Err((code, why)) => {
                refuse(code);
                return answer(&mut io, code, &why).await;
            }
        };
        let tpot_ok = match self.authorize(&head, native, &origin, &cx).await {
            Ok(tpot_ok) => tpot_ok,
            Err((code, why)) => {
                refuse(code);
                return answer(&mut io, code, &why).await;
            }
        };
        let (mux, outbox) = Mux::new(
            native,
            self.cfg.max_conversations,
            mux_metrics(&self.metrics, &cx),
        );
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let opener = Arc::new(WsOpener {
            mux: mux.clone(),
            open_timeout: self.cfg.open_timeout,
            ready: ready_rx,
        });
        if !native {
            let name = subdomain.unwrap_or_else(random_subdomain);
            let Some(guard) = self.admit_tpot(&mut io, &name, opener, &origin, &cx).await else {
                return;
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

    /// TPoT-1: required for original clients when a key is set; optional for ours. Whether
    /// the request carried a valid key, or the refusal: code and text.
    async fn authorize(
        &self,
        head: &RequestHead,
        native: bool,
        origin: &Origin,
        cx: &TransportContext,
    ) -> Result<bool, (u16, String)> {
        let tpot_header = head.header("authorization").map(str::to_string);
        match (&self.verifier, &tpot_header) {
            (Some(v), Some(h)) if h.trim_start().starts_with("TPoT-1") || !native => {
                // An address over its failure budget gets no PBKDF2 time at all.
                let ip = origin.visitor.ip();
                if let Err(wait) = cx.hub.throttle.check(ip) {
                    let why = tunneld_core::hub::throttled_reason(ip, wait);
                    return Err((429, why));
                }
                match self.check_tpot(v.clone(), Some(h.clone())).await {
                    Ok(()) => Ok(true),
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
                        Err((code, e.to_string()))
                    }
                }
            }
            (Some(_), None) if !native => Err((401, AuthError::Missing.to_string())),
            (None, _) if !native && !self.cfg.allow_anonymous => Err((
                401,
                "this server takes TPoT clients only with a key: set auth_key (or allow_anonymous)"
                    .to_string(),
            )),
            (None, _) => Ok(!native),
            _ => Ok(false),
        }
    }

    /// Admits an original TPoT client as `tpot:<name>` with one http tunnel `name`. `None`
    /// once the refusal is answered (`409` when the name is held elsewhere).
    async fn admit_tpot(
        &self,
        io: &mut BoxIo,
        name: &str,
        opener: Arc<WsOpener>,
        origin: &Origin,
        cx: &TransportContext,
    ) -> Option<SessionGuard> {
        let refuse = |code: u16| self.count(cx, "create", code);
        let client_id = format!("tpot:{name}");
        if cx.hub.holder_alive(&client_id).await {
            refuse(409);
            answer(io, 409, &format!("subdomain `{name}` is in use")).await;
            return None;
        }
        let hello = self.tpot_hello(name);
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
        match admitted {
            Err(r) => {
                refuse(400);
                answer(io, 400, &r.reason).await;
                None
            }
            Ok((guard, statuses)) => match statuses.first().and_then(|s| s.error.clone()) {
                Some(e) => {
                    let code = if e.contains("held by another client") {
                        409
                    } else {
                        400
                    };
                    refuse(code);
                    answer(io, code, &e).await;
                    None
                }
                None => Some(guard),
            },
        }
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
}

/// Checks the request is a WebSocket upgrade of `GET /create-tpot` with a valid
/// `?subdomain=`: what it asks for, or the refusal: code and text.
fn check_create(head: &RequestHead) -> Result<CreateRequest, (u16, String)> {
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (head.target.as_str(), None),
    };
    if path != "/create-tpot" {
        return Err((404, "Not Found".to_string()));
    }
    if head.method != "GET" {
        return Err((405, "Method Not Allowed".to_string()));
    }
    if head.minor != 1 {
        return Err((400, "incorrect http version".to_string()));
    }
    let key = head.header("sec-websocket-key").map(str::trim);
    if !head.has_token("connection", "upgrade")
        || !head.has_token("upgrade", "websocket")
        || head.header("sec-websocket-version").map(str::trim) != Some("13")
        || key.is_none_or(str::is_empty)
    {
        return Err((400, "not a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)".to_string()));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        key.unwrap_or_default().as_bytes(),
    );
    let mut subdomain = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        if let Some(("subdomain", v)) = pair.split_once('=') {
            let v = v.to_ascii_lowercase();
            if !valid_subdomain(&v) {
                return Err((
                    400,
                    format!(
                        "invalid subdomain `{v}`: use 1-24 of a-z, 0-9 and -, not starting with -"
                    ),
                ));
            }
            subdomain = Some(v);
        }
    }
    Ok(CreateRequest {
        accept,
        subdomain,
        native: head.has_token("sec-websocket-protocol", SUBPROTOCOL),
    })
}

/// The mux's counters, with this transport's labels.
fn mux_metrics(own: &WsMetrics, cx: &TransportContext) -> MuxMetrics {
    MuxMetrics {
        active: Some(own.conversations_active.with_label_values(&[&cx.name])),
        pauses: Some(own.pauses_total.with_label_values(&[&cx.name])),
        overruns: Some(
            cx.metrics
                .protocol_errors_total
                .with_label_values(&[&cx.name, "ignored_pause"]),
        ),
    }
}

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
