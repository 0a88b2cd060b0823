//! A session is one authenticated connection from a tunnelc, whatever the transport.
//!
//! The transport turns "give me a stream to the client for this visitor" into its own wire
//! form: a yamux stream with a header frame, an HTTP/2 request, a WebSocket conversation, or a
//! parked CONNECT socket. Frontends only see [`OpenStream`].

use crate::io::BoxIo;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::SystemTime;

/// What tunneld tells tunnelc about each stream it opens, so tunnelc knows where to connect
/// without guessing (no pairing race).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// The tunnel's name, as tunnelc registered it (or the admin mapping's name).
    pub tunnel: String,
    /// A local target chosen by tunneld (admin mappings); `None` means the client's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The visitor's address as tunneld saw it.
    pub visitor: SocketAddr,
    /// The public address the visitor connected to.
    pub public: SocketAddr,
    /// Whether tunnelc writes a PROXY protocol header toward the local service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// The longest a tunnel client may take to answer a new stream (it connects to its local
/// service first), whatever the frontend's own deadline: no open waits without end.
pub const OPEN_REPLY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a stream could not be opened, split by which side failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the tunnel client is not connected")]
    Offline,
    #[error("the tunnel client's session failed: {0}")]
    Session(String),
    #[error("the tunnel client could not reach its local service: {0}")]
    LocalRefused(String),
    #[error("the tunnel client did not answer in time")]
    Timeout,
    #[error("the tunnel client has too many open streams")]
    TooManyStreams,
    #[error("too many open streams {0}")]
    Capped(&'static str),
    #[error("no route matches server name {0:?}")]
    NoRoute(Option<String>),
}

impl OpenError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Offline => "offline",
            OpenError::Session(_) => "session",
            OpenError::LocalRefused(_) => "local_refused",
            OpenError::Timeout => "timeout",
            OpenError::TooManyStreams => "too_many_streams",
            OpenError::Capped(_) => "stream_cap",
            OpenError::NoRoute(_) => "no_route",
        }
    }
}

/// Opens a stream from tunneld to the tunnelc of one session.
#[async_trait]
pub trait OpenStream: Send + Sync + 'static {
    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError>;

    /// Where the relays of this session's visitors run ([`crate::home`]), when the transport
    /// runs them on the session's own task.
    fn home(&self) -> Option<crate::home::Home> {
        None
    }

    /// Whether a stream opened now would be refused for want of a place
    /// ([`OpenError::TooManyStreams`]), when the transport can tell (false when it cannot).
    fn is_full(&self) -> bool {
        false
    }

    /// The most streams the session may have open at once, when the transport caps them
    /// (kept-alive streams then take at most half of it).
    fn stream_cap(&self) -> Option<usize> {
        None
    }

    /// Forwards one visitor HTTP request that does not go on a kept-alive stream
    /// ([`crate::kept_streams`]). Transports that carry HTTP natively (h2-reverse) send it as
    /// a request of their own; the others open a stream and speak HTTP/1.1 on it.
    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<crate::http_forward::Body>,
    ) -> Result<http::Response<crate::http_forward::Body>, OpenError> {
        let io = self.open(header).await?;
        crate::http_forward::http1_over(io, req, crate::limits::DEFAULT_MAX_HEAD).await
    }

    /// Whether the tunnelc behind this session still answers, within `deadline`: asked before
    /// a second session of the same client may take over a claim. Transports that cannot ask
    /// say yes (the session stays until its keepalive gives up).
    async fn probe(&self, deadline: std::time::Duration) -> bool {
        let _ = deadline;
        true
    }
}

/// Facts about a live session, for `/clients` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub client_id: String,
    pub transport: String,
    pub transport_kind: &'static str,
    pub remote: SocketAddr,
    pub auth_method: &'static str,
    #[serde(with = "unix_seconds")]
    pub connected_at: SystemTime,
    /// The tunnelc instance id from the hello, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

mod unix_seconds {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }
}

/// Why tunnelc could not connect a stream to its local service; the text goes back to
/// tunneld (and from there to the visitor as a 502).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("tunnelc has no tunnel named `{0}`")]
    NoTunnel(String),
    #[error("tunnelc has no service (tunnel) named `{0}`")]
    NoService(String),
    #[error("this tunnelc does not accept server-defined targets")]
    TargetsRefused,
    #[error("connect to {target}: {error}")]
    Connect {
        target: String,
        error: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    Timeout(String),
    #[error("PROXY header to {target}: {error}")]
    Proxy {
        target: String,
        error: std::io::Error,
    },
}

/// tunnelc side: what tunneld tells a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNews {
    /// The tunnel list changed (a `tunnels` control message).
    Tunnels(Vec<crate::proto::TunnelStatus>),
    /// The node is leaving: open a session elsewhere now (a `handover` control message).
    Handover(String),
}

/// tunnelc side: a session a transport's dial made and tunneld welcomed.
#[async_trait]
pub trait ClientSession: Send {
    /// The client id and tunnel list of tunneld's welcome.
    fn welcome(&self) -> (String, Vec<crate::proto::TunnelStatus>);
    /// Serves tunneld's streams until the session ends or `stop` is cancelled; returns why
    /// it ended. Tunnel list changes and handovers pushed by tunneld go to `updates`.
    async fn run(
        self: Box<Self>,
        connector: std::sync::Arc<dyn LocalConnector>,
        updates: tokio::sync::mpsc::UnboundedSender<SessionNews>,
        stop: tokio_util::sync::CancellationToken,
    ) -> String;
}

/// tunnelc side: turns a stream header into a connection to the local service (resolving the
/// tunnel's target and writing a PROXY header when asked). The error is shown to tunneld.
#[async_trait]
pub trait LocalConnector: Send + Sync + 'static {
    async fn connect(&self, header: &StreamHeader) -> Result<BoxIo, LocalError>;
    /// The local service `header` goes to, when its HTTP requests may share kept-alive
    /// connections (`keepalive_pool`); `None` (the default) when
    /// every stream needs a connection of its own (a PROXY header per visitor).
    fn pool_key(&self, header: &StreamHeader) -> Option<String> {
        let _ = header;
        None
    }
}
