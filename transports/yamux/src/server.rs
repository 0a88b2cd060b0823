//! tunneld side of the yamux transport.

use crate::config::Config;
use crate::control;
use crate::driver::{drive, OpenReply};
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tunneld_core::hub::SessionGuard;
use tunneld_core::io::BoxIo;
use tunneld_core::limits::Permit;
use tunneld_core::proto::{
    read_frame, read_magic, write_frame, FrameError, Hello, ServerHello, StreamReply,
};
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
use tunneld_core::tls::common_name;
use tunneld_core::transport::{Transport, TransportContext, TransportError};
use yamux::{Connection, ConnectionError, Mode};

pub struct YamuxTransport {
    cfg: Config,
    listener: Mutex<Option<TcpListener>>,
    local: SocketAddr,
    tls: TlsAcceptor,
}

impl YamuxTransport {
    /// Binds the listener now, so the caller learns the real address (port 0 works).
    pub async fn bind(cfg: Config, tls: Arc<rustls::ServerConfig>) -> Result<Self, TransportError> {
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local = listener
            .local_addr()
            .map_err(|e| TransportError::Other(e.to_string()))?;
        Ok(Self {
            cfg,
            listener: Mutex::new(Some(listener)),
            local,
            tls: TlsAcceptor::from(tls),
        })
    }
}

#[async_trait]
impl Transport for YamuxTransport {
    fn kind(&self) -> &'static str {
        "yamux"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| TransportError::Other("transport already serving".into()))?;
        tracing::info!(transport = %cx.name, addr = %self.local, "yamux transport listening");
        loop {
            let (tcp, peer) = tokio::select! {
                _ = cx.shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(transport = %cx.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // The accept loop never waits on a peer: admission control, then a task.
            let permit = match cx.limiter.try_acquire(peer.ip()) {
                Ok(p) => p,
                Err(refused) => {
                    cx.metrics
                        .handshakes_total
                        .with_label_values(&[&cx.name, refused.reason()])
                        .inc();
                    tracing::warn!(transport = %cx.name, %peer, reason = refused.reason(), "handshake refused");
                    continue;
                }
            };
            let (me, cx2) = (self.clone(), cx.clone());
            cx.tasks
                .spawn(async move { me.handle(tcp, peer, permit, cx2).await });
        }
        Ok(())
    }
}

/// How a handshake failed, for the log and the `outcome` label.
struct HandshakeFailure {
    outcome: &'static str,
    detail: String,
}

impl From<FrameError> for HandshakeFailure {
    fn from(e: FrameError) -> Self {
        Self {
            outcome: e.reason(),
            detail: e.to_string(),
        }
    }
}

impl YamuxTransport {
    async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        cx: TransportContext,
    ) {
        let _ = tcp.set_nodelay(true);
        cx.metrics.handshakes_pending.inc();
        let hs = tokio::time::timeout(cx.handshake_timeout, async {
            let mut tls = self.tls.accept(tcp).await.map_err(|e| HandshakeFailure {
                outcome: if e.to_string().contains("certificate") {
                    "bad_certificate"
                } else {
                    "tls_error"
                },
                detail: format!("TLS handshake failed: {e}"),
            })?;
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c));
            read_magic(&mut tls).await?;
            let hello: Hello = read_frame(&mut tls).await?;
            Ok::<_, HandshakeFailure>((tls, cn, hello))
        })
        .await;
        cx.metrics.handshakes_pending.dec();
        let (mut tls, cn, hello) = match hs {
            Ok(Ok(x)) => x,
            Ok(Err(f)) => {
                cx.metrics
                    .handshakes_total
                    .with_label_values(&[&cx.name, f.outcome])
                    .inc();
                if !matches!(f.outcome, "tls_error" | "bad_certificate" | "closed") {
                    cx.metrics
                        .protocol_errors_total
                        .with_label_values(&[&cx.name, f.outcome])
                        .inc();
                }
                tracing::warn!(transport = %cx.name, %peer, outcome = f.outcome, "handshake failed: {}", f.detail);
                return;
            }
            Err(_) => {
                cx.metrics
                    .handshakes_total
                    .with_label_values(&[&cx.name, "timeout"])
                    .inc();
                tracing::warn!(transport = %cx.name, %peer, timeout = ?cx.handshake_timeout, "handshake timed out");
                return;
            }
        };

        let (open_tx, open_rx) = mpsc::channel::<OpenReply>(64);
        let opener = Arc::new(YamuxOpener { tx: open_tx });
        let admitted = cx
            .hub
            .admit(&hello, cn.as_deref(), &cx.name, "yamux", peer, opener)
            .await;
        let (guard, tunnels) = match admitted {
            Ok(x) => x,
            Err(rej) => {
                tracing::warn!(transport = %cx.name, %peer, outcome = rej.outcome, "client rejected: {}", rej.reason);
                let reply = ServerHello::Rejected {
                    reason: rej.reason,
                    permanent: rej.permanent,
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), write_frame(&mut tls, &reply))
                    .await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::io::AsyncWriteExt::shutdown(&mut tls),
                )
                .await;
                return;
            }
        };
        let welcome = ServerHello::Welcome {
            client_id: guard.session.info.client_id.clone(),
            tunnels,
            keepalive_secs: cx.hub.keepalive_secs,
        };
        if let Err(e) = write_frame(&mut tls, &welcome).await {
            tracing::warn!(transport = %cx.name, %peer, error = %e, "could not send welcome");
            return;
        }
        drop(permit);
        let conn = Connection::new(tls.compat(), self.cfg.yamux.yamux(), Mode::Server);
        run_session(conn, open_rx, guard, cx).await;
    }
}

async fn run_session<T>(
    conn: Connection<T>,
    open_rx: mpsc::Receiver<OpenReply>,
    mut guard: SessionGuard,
    cx: TransportContext,
) where
    T: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin,
{
    let client = guard.session.info.client_id.clone();
    let closed = guard.session.closed.clone();
    let notifications = std::mem::replace(&mut guard.notifications, mpsc::unbounded_channel().1);
    let (ctl_tx, ctl_rx) = oneshot::channel();
    let mut ctl_tx = Some(ctl_tx);
    let name = cx.name.clone();
    let metrics = cx.metrics.clone();
    let driver = drive(conn, open_rx, move |stream| match ctl_tx.take() {
        Some(tx) => {
            let _ = tx.send(stream);
        }
        None => {
            // Only tunneld opens data streams; a client-opened one is refused (dropped = reset).
            metrics
                .protocol_errors_total
                .with_label_values(&[&name, "unexpected_stream"])
                .inc();
        }
    });
    let interval = Duration::from_secs(cx.hub.keepalive_secs.max(1));
    let control = async {
        let stream = match tokio::time::timeout(interval * 3, ctl_rx).await {
            Ok(Ok(s)) => s,
            _ => return "no control stream opened".to_string(),
        };
        let (inbox, _ignored) = mpsc::unbounded_channel();
        control::run(stream.compat(), interval, false, notifications, inbox)
            .await
            .to_string()
    };
    let reason = tokio::select! {
        r = driver => match r {
            Ok(()) => "connection closed".to_string(),
            Err(ConnectionError::Decode(e)) => {
                cx.metrics.protocol_errors_total.with_label_values(&[&cx.name, "bad_yamux_frame"]).inc();
                format!("malformed yamux frame: {e}")
            }
            Err(e) => format!("yamux: {e}"),
        },
        r = control => r,
        _ = closed.cancelled() => "replaced or closed by tunneld".to_string(),
    };
    tracing::info!(transport = %cx.name, client = %client, "session closing: {reason}");
    drop(guard);
}

/// Opens yamux streams to one tunnelc.
struct YamuxOpener {
    tx: mpsc::Sender<OpenReply>,
}

#[async_trait]
impl OpenStream for YamuxOpener {
    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| OpenError::Offline)?;
        let stream = rx
            .await
            .map_err(|_| OpenError::Offline)?
            .map_err(|e| match e {
                ConnectionError::TooManyStreams => OpenError::TooManyStreams,
                ConnectionError::Closed => OpenError::Offline,
                e => OpenError::Session(e.to_string()),
            })?;
        let mut io = stream.compat();
        write_frame(&mut io, &header)
            .await
            .map_err(|e| OpenError::Session(e.to_string()))?;
        let reply: StreamReply = read_frame(&mut io)
            .await
            .map_err(|e| OpenError::Session(e.to_string()))?;
        match reply.error {
            Some(e) => Err(OpenError::LocalRefused(e)),
            None => Ok(Box::new(io)),
        }
    }
}
