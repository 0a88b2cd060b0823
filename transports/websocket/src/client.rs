//! tunnelc side: `GET /create-tpot` upgraded to a WebSocket with the `tunneld.1`
//! subprotocol, the hello and welcome as `0x11 'T'` messages, then conversations tunneld
//! opens with `R` (the stream header as JSON), answered `A` or `N`.

use crate::mux::Mux;
use crate::server::ws_config;
use crate::session::drive;
use crate::wire::{self, Msg, CLOSE_UNKNOWN_MESSAGE, SUBPROTOCOL};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
pub use tunneld_core::dial::DialError;
use tunneld_core::io::BoxIo;
use tunneld_core::port_probe::Speaks;
use tunneld_core::proto::{Control, Hello, ServerHello, TunnelStatus};
use tunneld_core::session::{ClientSession, LocalConnector, SessionNews, StreamHeader};
use tunneld_core::splice::{splice, SpliceCounters};

/// A server URL: `http://`, `https://`, `ws://` or `wss://`, host and optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written (the `Host` header).
    pub authority: String,
}

/// Why a `server:` URL was refused (the text names the URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUrlError {
    #[error("`{0}`: expected http://, https://, ws:// or wss://")]
    NoScheme(String),
    #[error("`{url}`: unknown scheme `{scheme}`")]
    UnknownScheme { url: String, scheme: String },
    #[error("`{0}`: give only scheme, host and port (no path or user)")]
    NotJustAuthority(String),
    #[error("`{url}`: `{port}` is not a port")]
    BadPort { url: String, port: String },
}

impl std::str::FromStr for ServerUrl {
    type Err = ServerUrlError;
    fn from_str(s: &str) -> Result<Self, ServerUrlError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| ServerUrlError::NoScheme(s.to_string()))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            other => {
                return Err(ServerUrlError::UnknownScheme {
                    url: s.to_string(),
                    scheme: other.to_string(),
                })
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(ServerUrlError::NotJustAuthority(s.to_string()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| ServerUrlError::BadPort {
                    url: s.to_string(),
                    port: p.to_string(),
                })?;
                (h.trim_matches(['[', ']']).to_string(), port)
            }
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        Ok(ServerUrl {
            tls,
            host,
            port,
            authority: authority.to_string(),
        })
    }
}

/// How to reach tunneld.
#[derive(Clone)]
pub struct DialOptions {
    pub url: ServerUrl,
    /// The TLS config (ALPN `http/1.1`) and checked name, for `https`/`wss` URLs.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// A TPoT key, sent as `Authorization: TPoT-1` (instead of a token in the hello).
    pub auth_key: Option<String>,
    pub max_message: usize,
    /// Conversations accepted at once on the session (the hello tells tunneld).
    pub max_conversations: usize,
    /// Deadline for TCP, TLS, the upgrade and the hello exchange together.
    pub timeout: Duration,
}

/// An accepted session, ready to run ([`ClientSession::run`]).
pub struct Connected {
    pub client_id: String,
    pub tunnels: Vec<TunnelStatus>,
    pub keepalive: Duration,
    max_conversations: usize,
    ws: WebSocketStream<BoxIo>,
}

/// Connects, upgrades, sends `hello` and waits for tunneld's answer.
pub async fn dial(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    tokio::time::timeout(opts.timeout, dial_inner(opts, hello))
        .await
        .map_err(|_| DialError::Timeout(opts.timeout))?
}

async fn dial_inner(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    let io = connect(opts).await?;
    let mut ws = upgrade(opts, io).await?;
    let answer = exchange_hello(&mut ws, hello).await?;
    match serde_json::from_slice::<ServerHello>(&answer)
        .map_err(|e| DialError::Protocol(format!("bad welcome: {e}")))?
    {
        ServerHello::Rejected { reason, permanent } => {
            Err(DialError::Rejected { reason, permanent })
        }
        ServerHello::Welcome {
            client_id,
            tunnels,
            keepalive_secs,
            ..
        } => Ok(Connected {
            client_id,
            tunnels,
            keepalive: Duration::from_secs(keepalive_secs.clamp(1, 3600)),
            max_conversations: opts.max_conversations,
            ws,
        }),
    }
}

/// TCP, then TLS for `https`/`wss` URLs.
async fn connect(opts: &DialOptions) -> Result<BoxIo, DialError> {
    let server = opts.url.authority.clone();
    let tcp = tunneld_core::dial::connect_any((opts.url.host.as_str(), opts.url.port))
        .await
        .map_err(|e| DialError::Connect {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let io: BoxIo = match &opts.tls {
        Some((cfg, name)) => match tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name.clone(), tcp)
            .await
        {
            Ok(t) => Box::new(t),
            Err(e) => {
                let addr = (opts.url.host.as_str(), opts.url.port);
                return Err(DialError::of_tls_probed(&server, addr, e).await);
            }
        },
        None => Box::new(tcp),
    };
    Ok(io)
}

/// `GET /create-tpot` upgraded with the `tunneld.1` subprotocol (and the TPoT-1 key, if
/// any); an HTTP refusal becomes [`DialError::Rejected`].
async fn upgrade(opts: &DialOptions, io: BoxIo) -> Result<WebSocketStream<BoxIo>, DialError> {
    let scheme = if opts.url.tls { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{}/create-tpot", opts.url.authority)
        .into_client_request()
        .map_err(|e| DialError::Protocol(e.to_string()))?;
    let h = req.headers_mut();
    h.insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(key) = &opts.auth_key {
        let v = crate::tpot_auth::new_header_value(key);
        h.insert(
            "authorization",
            http::HeaderValue::from_str(&v).map_err(|e| DialError::Protocol(e.to_string()))?,
        );
    }
    let upgraded =
        tokio_tungstenite::client_async_with_config(req, io, Some(ws_config(opts.max_message)))
            .await;
    let (ws, resp) = match upgraded {
        Ok(ok) => ok,
        Err(WsError::Http(r)) => {
            let code = r.status().as_u16();
            let body = r
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            return Err(DialError::Rejected {
                reason: format!("HTTP {code}: {body}"),
                permanent: matches!(code, 400 | 401 | 404 | 405 | 409 | 413 | 431),
            });
        }
        Err(other) => {
            let reason = format!("WebSocket upgrade failed: {other}");
            // A plain-HTTP client that got no HTTP answer: find out what the port speaks.
            if !opts.url.tls {
                let speaks =
                    tunneld_core::port_probe::probe((opts.url.host.as_str(), opts.url.port)).await;
                if let (Speaks::Tls | Speaks::Ssh(_), Some(fix)) = (&speaks, speaks.fix()) {
                    return Err(DialError::WrongPort {
                        server: opts.url.authority.clone(),
                        reason,
                        fix,
                    });
                }
            }
            return Err(DialError::Protocol(reason));
        }
    };
    if resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        != Some(SUBPROTOCOL)
    {
        return Err(DialError::Protocol(format!(
            "the server did not accept the `{SUBPROTOCOL}` subprotocol (an original TPoT server?)"
        )));
    }
    Ok(ws)
}

/// Sends the hello and waits for tunneld's answer (the first control message).
async fn exchange_hello(
    ws: &mut WebSocketStream<BoxIo>,
    hello: &Hello,
) -> Result<Bytes, DialError> {
    let json = serde_json::to_vec(hello).map_err(|e| DialError::Protocol(e.to_string()))?;
    ws.send(Message::Binary(wire::encode(&Msg::Control(Bytes::from(
        json,
    )))))
    .await
    .map_err(|e| DialError::Protocol(e.to_string()))?;
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match wire::decode(b) {
                Ok(Msg::Control(json)) => break json,
                Ok(_) => {
                    return Err(DialError::Protocol(
                        "tunneld sent a conversation before its welcome".into(),
                    ))
                }
                Err(e) => return Err(DialError::Protocol(e.to_string())),
            },
            Some(Ok(Message::Close(f))) => {
                return Err(DialError::Protocol(format!(
                    "tunneld closed the WebSocket: {}",
                    f.map(|f| f.reason.to_string()).unwrap_or_default()
                )))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DialError::Protocol(e.to_string())),
            None => {
                return Err(DialError::Protocol(
                    "tunneld closed the connection without answering".into(),
                ))
            }
        }
    };
    Ok(answer)
}

#[async_trait::async_trait]
impl ClientSession for Connected {
    fn welcome(&self) -> (String, Vec<TunnelStatus>) {
        (self.client_id.clone(), self.tunnels.clone())
    }

    async fn run(
        self: Box<Self>,
        connector: Arc<dyn LocalConnector>,
        updates: mpsc::UnboundedSender<SessionNews>,
        stop: CancellationToken,
    ) -> String {
        let this = *self;
        // tunneld opens no more than `max_conversations` (the hello said so), but it frees an
        // id when its own `F` is queued behind data while a new `O` goes ahead of data: up to
        // a data queue's worth of openings may arrive before the closings they replace.
        let (mux, outbox) = Mux::new(
            true,
            (this.max_conversations + crate::mux::DATA_QUEUE).min(usize::from(u16::MAX)),
            Default::default(),
        );
        let m = mux.clone();
        // tunneld answers our pings; silence for three intervals means the path is dead.
        let idle = this.keepalive * 3;
        let ended = drive(
            this.ws,
            mux,
            outbox,
            Some(this.keepalive),
            idle,
            stop,
            move |msg| match msg {
                Msg::Open { id, header } => {
                    let Some(conv) = m.accept(id) else {
                        m.send(&Msg::Refused {
                            id,
                            reason: "tunnelc has too many conversations".into(),
                        });
                        return Ok(());
                    };
                    let header: StreamHeader = match serde_json::from_slice(&header) {
                        Ok(h) => h,
                        Err(e) => {
                            conv.answer(Err(&format!("bad stream header: {e}")));
                            return Ok(());
                        }
                    };
                    let connector = connector.clone();
                    tokio::spawn(async move {
                        let mut conv = conv;
                        match connector.connect(&header).await {
                            Ok(mut local) => {
                                conv.answer(Ok(()));
                                let _ = splice(&mut local, &mut conv, SpliceCounters::default())
                                    .await;
                            }
                            Err(e) => {
                                tracing::warn!(tunnel = %header.tunnel, "local connect failed: {e}");
                                conv.answer(Err(&e.to_string()));
                            }
                        }
                    });
                    Ok(())
                }
                Msg::Control(json) => match serde_json::from_slice::<Control>(&json) {
                    Ok(Control::Tunnels { tunnels }) => {
                        let _ = updates.send(SessionNews::Tunnels(tunnels));
                        Ok(())
                    }
                    Ok(Control::Handover { reason }) => {
                        let _ = updates.send(SessionNews::Handover(reason));
                        Ok(())
                    }
                    Ok(Control::Bye { reason }) => Err((1000, format!("tunneld said bye: {reason}"))),
                    Ok(_) => Ok(()),
                    Err(e) => Err((CLOSE_UNKNOWN_MESSAGE, format!("bad control message: {e}"))),
                },
                Msg::Greeting(_) => Ok(()),
                other => Err((
                    CLOSE_UNKNOWN_MESSAGE,
                    format!("unexpected message from tunneld: {other:?}"),
                )),
            },
        )
        .await;
        ended.reason.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let u: ServerUrl = "http://localhost:8080".parse().expect("url");
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "localhost", 8080));
        let u: ServerUrl = "https://tunnel.example.com/".parse().expect("url");
        assert_eq!(
            (u.tls, u.port, u.authority.as_str()),
            (true, 443, "tunnel.example.com")
        );
        let u: ServerUrl = "ws://[::1]:9".parse().expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert!("ftp://x".parse::<ServerUrl>().is_err());
        assert!("localhost:80".parse::<ServerUrl>().is_err());
        assert!("http://x/path".parse::<ServerUrl>().is_err());
    }
}
