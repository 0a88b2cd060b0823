//! tunnelc's side of the handshake every native transport shares: TCP, TLS, the `TUNNELD1`
//! preamble with the hello frame, and tunneld's answer, under one deadline.

mod connect_any;
pub use connect_any::{connect_any, PER_ADDRESS};

use crate::proto::{encode_frame, read_frame, FrameError, Hello, ServerHello, TunnelStatus, MAGIC};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How to reach tunneld.
#[derive(Clone)]
pub struct DialTarget {
    /// `host:port`.
    pub server: String,
    /// The name the server certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The TLS config, with the transport's ALPN id.
    pub tls: Arc<rustls::ClientConfig>,
    /// Deadline for TCP, TLS and the hello exchange together.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("TLS handshake with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("tunneld refused the session: {reason}")]
    Rejected { reason: String, permanent: bool },
    /// The server's certificate is not trusted, or not for the name asked: retrying cannot
    /// help.
    #[error("{server}'s certificate is not trusted ({reason}): trust tunneld's CA with `tls: {{ ca: state/tls/ca.pem }}` (--ca), or pin it with `tls: {{ pin: SHA256:... }}` (the `pin=` tunneld prints at start); for a name mismatch set `server_name` to a name the certificate carries")]
    Untrusted { server: String, reason: String },
    /// The port does not speak this transport: retrying cannot help.
    #[error("{server} does not speak this transport ({reason}): {fix}")]
    WrongPort {
        server: String,
        reason: String,
        fix: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl DialError {
    /// Whether retrying may help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DialError::Rejected {
                permanent: true,
                ..
            } | DialError::Untrusted { .. }
                | DialError::WrongPort { .. }
        )
    }

    /// The error of a failed TLS handshake with `server`, told apart: an untrusted
    /// certificate, a port of another transport (no common ALPN id) or of no TLS at all, or
    /// anything else (retried).
    pub fn of_tls(server: &str, e: std::io::Error) -> Self {
        use rustls::{AlertDescription, Error as E};
        let reason = e.to_string();
        let server = server.to_string();
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match inner {
            Some(E::InvalidCertificate(_)) => DialError::Untrusted { server, reason },
            Some(E::AlertReceived(AlertDescription::NoApplicationProtocol)) => {
                DialError::WrongPort {
                    server,
                    reason,
                    fix: "that port is another transport's (each of yamux, h2-reverse and connect has its own ALPN id; an https-subdomain port takes h2-reverse only when it shares its port with one): check `server:` and `transport:`".into(),
                }
            }
            Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => DialError::WrongPort {
                server,
                reason,
                fix: NOT_TLS.into(),
            },
            _ => DialError::Tls { server, reason },
        }
    }
}

/// The fix when a port answered a TLS client in something else, and the probe could not tell
/// what.
const NOT_TLS: &str = "that port does not answer in TLS: a websocket transport's plain-HTTP port wants `transport: websocket` and `server: http://HOST:PORT`; an ssh transport's port wants OpenSSH (`ssh -R`)";

impl DialError {
    /// [`DialError::of_tls`], and when the port answered in something other than TLS, which
    /// protocol that was ([`crate::port_probe`]: one more short connection to `addr`).
    pub async fn of_tls_probed<A: tokio::net::ToSocketAddrs>(
        server: &str,
        addr: A,
        e: std::io::Error,
    ) -> Self {
        Self::of_tls(server, e).probed(addr).await
    }

    /// When this is a port that answered TLS in something else, which protocol that was
    /// (one more short connection to `addr`); any other error as it is.
    pub async fn probed<A: tokio::net::ToSocketAddrs>(self, addr: A) -> Self {
        match self {
            DialError::WrongPort {
                server,
                reason,
                fix,
            } if fix == NOT_TLS => {
                let fix = crate::port_probe::probe(addr).await.fix().unwrap_or(fix);
                DialError::WrongPort {
                    server,
                    reason,
                    fix,
                }
            }
            other => other,
        }
    }
}

/// What tunneld answered.
pub struct Welcomed {
    pub io: TlsStream<TcpStream>,
    pub client_id: String,
    pub tunnels: Vec<TunnelStatus>,
    pub keepalive: Duration,
    /// The head limits tunneld announced (its defaults when it announced none).
    pub limits: crate::limits::DataLimits,
}

/// The data limits a welcome announces, over tunnelc's defaults.
pub fn announced_limits(
    max_request_head: Option<u32>,
    max_response_head: Option<u32>,
) -> crate::limits::DataLimits {
    let d = crate::limits::DataLimits::default();
    crate::limits::DataLimits {
        max_request_head: max_request_head.map_or(d.max_request_head, |v| v as usize),
        max_response_head: max_response_head.map_or(d.max_response_head, |v| v as usize),
        ..d
    }
}

/// Connects, sends `hello`, and waits for tunneld's answer.
pub async fn dial(target: &DialTarget, hello: &Hello) -> Result<Welcomed, DialError> {
    match tokio::time::timeout(target.timeout, dial_inner(target, hello)).await {
        Ok(Ok(w)) => Ok(w),
        // The probe runs outside the deadline: a slow handshake must not turn a wrong port
        // (permanent) into a timeout (retried).
        Ok(Err(e)) => Err(e.probed(target.server.as_str()).await),
        Err(_) => Err(DialError::Timeout(target.timeout)),
    }
}

async fn dial_inner(target: &DialTarget, hello: &Hello) -> Result<Welcomed, DialError> {
    let server = target.server.clone();
    let tls_err = |e: std::io::Error| DialError::Tls {
        server: server.clone(),
        reason: e.to_string(),
    };
    let tcp = connect_any(target.server.as_str())
        .await
        .map_err(|e| DialError::Connect {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let mut tls = match TlsConnector::from(target.tls.clone())
        .connect(target.server_name.clone(), tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return Err(DialError::of_tls(&server, e)),
    };
    let mut preamble = MAGIC.to_vec();
    preamble.extend(encode_frame(hello).map_err(|e| DialError::Protocol(e.to_string()))?);
    tls.write_all(&preamble).await.map_err(tls_err)?;
    tls.flush().await.map_err(tls_err)?;
    // With TLS 1.3 a rejected client certificate shows up here, on the first read.
    let answer: ServerHello = read_frame(&mut tls).await.map_err(|e| match e {
        FrameError::Io(io) => tls_err(io),
        FrameError::Closed => {
            DialError::Protocol("tunneld closed the connection without answering".into())
        }
        other => DialError::Protocol(other.to_string()),
    })?;
    match answer {
        ServerHello::Rejected { reason, permanent } => {
            Err(DialError::Rejected { reason, permanent })
        }
        ServerHello::Welcome {
            client_id,
            tunnels,
            keepalive_secs,
            max_request_head,
            max_response_head,
        } => Ok(Welcomed {
            io: tls,
            client_id,
            tunnels,
            keepalive: Duration::from_secs(keepalive_secs.clamp(1, 3600)),
            limits: announced_limits(max_request_head, max_response_head),
        }),
    }
}
