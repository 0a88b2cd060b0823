//! The one accept loop every listener runs ([`accept_loop`]: accept until shut down, admit,
//! hand the connection to a task), and on top of it [`run`], the loop of the TLS listeners
//! that read HTTP/1 heads themselves (the `connect` and `websocket` transports and the
//! `rendezvous` frontend): a cap on open connections, TCP keepalive (so a peer that vanished
//! without a FIN is found), and one deadline for the TLS handshake.

use crate::io::BoxIo;
use crate::limits::{AddressLimiter, Setting};
use crate::metrics::Metrics;
use crate::transport::TransportError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A listener bound at construction (so the caller learns the real address, port 0 works)
/// and handed to the accept loop once, when the component starts serving.
pub struct BoundListener {
    listener: std::sync::Mutex<Option<TcpListener>>,
    local: SocketAddr,
}

impl BoundListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            listener: std::sync::Mutex::new(Some(listener)),
            local,
        })
    }

    /// Binds a transport's listener; the error names the address.
    pub async fn for_transport(addr: SocketAddr) -> Result<Self, TransportError> {
        Self::bind(addr)
            .await
            .map_err(|error| TransportError::Bind { addr, error })
    }

    /// [`Self::for_transport`] for an optional listener.
    pub async fn for_transport_opt(
        addr: Option<SocketAddr>,
    ) -> Result<Option<Self>, TransportError> {
        match addr {
            Some(addr) => Self::for_transport(addr).await.map(Some),
            None => Ok(None),
        }
    }

    /// The listener for a transport's `serve`, which runs once.
    pub fn take_for_serve(&self) -> Result<TcpListener, TransportError> {
        self.take()
            .ok_or_else(|| TransportError::Other("transport already serving".into()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The listener, the first time only.
    pub fn take(&self) -> Option<TcpListener> {
        crate::sync::lock(&self.listener).take()
    }
}

/// Kernel keepalive: about 60 s after the last packet a silent peer is gone.
pub fn set_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// The next connection, or `None` once `shutdown` is cancelled. Accept errors (out of file
/// descriptors, say) are logged and retried after a short pause instead of ending the loop.
pub async fn accept_next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    component: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            a = listener.accept() => match a {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(%component, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Where [`accept_loop`] runs each admitted connection.
#[derive(Clone, Copy)]
pub enum Tasks<'a> {
    /// On a task of this tracker (the drain can wait for it or count it).
    Tracked(&'a TaskTracker),
    /// On a free task (a connection that is not a visitor yet takes its own drain token).
    Untracked,
}

/// The one accept loop: accepts until `shutdown` is cancelled (accept errors are logged and
/// retried, see [`accept_next`]), asks `admit` about each peer (it refuses with `None`, or
/// returns what the connection holds for its life, such as its slot in a cap), and runs
/// `serve` on its own task. It never waits on a peer.
pub async fn accept_loop<P, A, F, Fut>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    component: &str,
    tasks: Tasks<'_>,
    mut admit: A,
    serve: F,
) where
    A: FnMut(SocketAddr) -> Option<P>,
    F: Fn(TcpStream, SocketAddr, P) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some((tcp, peer)) = accept_next(listener, shutdown, component).await {
        let Some(held) = admit(peer) else {
            continue;
        };
        let task = serve(tcp, peer, held);
        match tasks {
            Tasks::Tracked(t) => drop(t.spawn(task)),
            Tasks::Untracked => drop(tokio::spawn(task)),
        }
    }
}

/// A connection after its TLS handshake.
pub struct Accepted {
    pub io: BoxIo,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The common name of a verified client certificate.
    pub cert_cn: Option<String>,
    /// The connection's slot in the listener's caps, held for its life.
    pub permit: crate::limits::Permit,
}

/// How one listener runs.
pub struct ListenerSpec {
    /// `component` label of the metrics (`tunneld_stream_open_failures_total{frontend}`).
    pub component: String,
    /// `None` for a plain TCP listener (a TLS-terminating proxy in front).
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Setting<Duration>,
    pub max_connections: usize,
    /// Open connections from one source address.
    pub max_per_address: Setting<usize>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// The connection tasks (a handler that serves a visitor holds a token of the drain's
    /// tracker itself: tunnel clients on the same listener must not hold up a drain).
    pub tasks: TaskTracker,
}

/// Accepts until `spec.shutdown`, handing each connection that finishes its TLS handshake
/// to `handler` on its own task.
pub async fn run<F, Fut>(listener: TcpListener, spec: ListenerSpec, handler: F)
where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let open = AddressLimiter::with_caps(
        Setting::Fixed(spec.max_connections),
        spec.max_per_address.clone(),
    );
    let spec = Arc::new(spec);
    accept_loop(
        &listener,
        &spec.shutdown,
        &spec.component,
        Tasks::Tracked(&spec.tasks),
        |peer| open.admit(peer.ip(), &spec.metrics, &spec.component),
        |tcp, peer, permit| handshake(spec.clone(), handler.clone(), tcp, peer, permit),
    )
    .await;
}

/// One connection of [`run`]: its TLS handshake within the deadline (counted when it fails),
/// then the handler.
async fn handshake<F, Fut>(
    spec: Arc<ListenerSpec>,
    handler: Arc<F>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: crate::limits::Permit,
) where
    F: Fn(Accepted) -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    let local = tcp.local_addr().unwrap_or(peer);
    let Some(tls) = &spec.tls else {
        handler(Accepted {
            io: Box::new(tcp),
            peer,
            local,
            cert_cn: None,
            permit,
        })
        .await;
        return;
    };
    // Boxed, only while it runs: inline, the handshake (rustls's connection and the socket)
    // would size the connection's task for its life, besides the handler's own state.
    let accepting = Box::pin(tokio::time::timeout(
        spec.handshake_timeout.get(),
        tls.accept(tcp),
    ));
    let failure = match accepting.await {
        Ok(Ok(tls)) => {
            let cert_cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::common_name(c));
            handler(Accepted {
                io: Box::new(tls),
                peer,
                local,
                cert_cn,
                permit,
            })
            .await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(component = %spec.component, %peer, error = %e, "TLS handshake failed");
            "tls_error"
        }
        Err(_) => "handshake_timeout",
    };
    spec.metrics
        .stream_open_failures_total
        .with_label_values(&[&spec.component, failure])
        .inc();
}
