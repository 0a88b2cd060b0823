//! The transport plug-in trait (tunneld side).
//!
//! A transport accepts tunnelc connections, authenticates them through the [`Hub`], and keeps
//! each session alive while offering an [`OpenStream`](crate::session::OpenStream) to the
//! frontends. The tunnelc side of each transport is a plain async function in its crate, since
//! tunnelc runs exactly one transport per connection.

use crate::hub::Hub;
use crate::limits::HandshakeLimiter;
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a transport gets from the daemon.
#[derive(Clone)]
pub struct TransportContext {
    /// The component's name in the config (`transports.<name>`), used in logs and metrics.
    pub name: String,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<HandshakeLimiter>,
    /// Cancelled when the drain ends: stop accepting tunnel clients. Sessions end through
    /// the hub (`close_all`), not through this token, so their streams drain first.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain begins: a transport that also takes visitors (the websocket
    /// port) turns new ones away from then on.
    pub draining: CancellationToken,
    /// This transport's connection tasks (not waited for by the drain).
    pub tasks: TaskTracker,
    /// Visitors: the drain waits for everything tracked here.
    pub visitors: TaskTracker,
    /// The management API a transport may hand a verified caller's HTTP connection to
    /// (threshold's, on its tunnel port); `None` when the daemon offers none.
    pub management: Option<Arc<dyn ManagementApi>>,
}

/// An HTTP API served on a transport's own port to callers the transport verified (the
/// daemon implements it; threshold's management API is the one user).
#[async_trait]
pub trait ManagementApi: Send + Sync {
    /// Serves HTTP/1.1 on `io` for `caller` (a client id from a verified certificate).
    async fn serve(&self, io: crate::io::BoxIo, caller: String, peer: SocketAddr);
}

impl TransportContext {
    /// One deadline for TLS, hello and authentication together (`limits.handshake_timeout`
    /// as it is when the handshake starts).
    pub fn handshake_timeout(&self) -> Duration {
        self.hub.limits.get().handshake_timeout
    }

    /// Admission of one accepted tunnel-client connection: the failed-authentication budget,
    /// then the handshake limiter (a refusal is counted as a handshake outcome and logged
    /// within the refusal budget). The permit is held until the handshake ends.
    pub fn admit(&self, peer: SocketAddr) -> Option<crate::limits::Permit> {
        if self.throttled(peer.ip()) {
            return None;
        }
        match self.limiter.try_acquire(peer.ip()) {
            Ok(p) => Some(p),
            Err(refused) => {
                self.metrics
                    .handshakes_total
                    .with_label_values(&[&self.name, refused.reason()])
                    .inc();
                if self.hub.refusal_log.allow() {
                    tracing::warn!(transport = %self.name, %peer, reason = refused.reason(), "handshake refused");
                }
                None
            }
        }
    }

    /// Whether `ip` is over its failed-authentication budget; counted as a `throttled`
    /// handshake when it is (such a peer gets no TLS handshake at all).
    pub fn throttled(&self, ip: std::net::IpAddr) -> bool {
        let over = self.hub.throttle.check(ip).is_err();
        if over {
            self.metrics
                .handshakes_total
                .with_label_values(&[&self.name, "throttled"])
                .inc();
        }
        over
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot register its metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{0}")]
    Other(String),
}

/// The tunneld side of a transport.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The `type:` of the component (`yamux`, `h2-reverse`, ...).
    fn kind(&self) -> &'static str;
    /// The bound address (after binding port 0); `None` for a transport that only takes
    /// connections a frontend hands over (a shared port).
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Accepts sessions until `cx.shutdown` is cancelled.
    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError>;
}

/// A transport that also takes connections handed over by a frontend sharing its port: the
/// frontend reads the ClientHello, sees the transport's ALPN id, finishes TLS with
/// [`SharedTransport::tls_config`] and passes the stream on.
#[async_trait]
pub trait SharedTransport: Send + Sync + 'static {
    /// The ALPN id that selects this transport.
    fn alpn(&self) -> &'static [u8];
    /// The TLS config for connections that chose this transport (certificate, client
    /// certificate policy, ALPN).
    fn tls_config(&self) -> Arc<rustls::ServerConfig>;
    /// Runs one session on a connection whose TLS handshake is done.
    async fn serve_shared(
        self: Arc<Self>,
        io: crate::io::BoxIo,
        peer: SocketAddr,
        cert_cn: Option<String>,
    );
}
