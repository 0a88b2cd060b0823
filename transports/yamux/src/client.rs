//! tunnelc side of the yamux transport: connect, authenticate, then serve the streams tunneld
//! opens until the session ends.

use crate::config::Tuning;
use crate::control;
use crate::driver::{drive, OpenReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tunneld_core::proto::{
    read_frame, write_frame, Control, Hello, ServerHello, StreamReply, TunnelStatus, MAGIC,
};
use tunneld_core::session::{LocalConnector, StreamHeader};
use tunneld_core::splice::{splice, SpliceCounters};
use yamux::{Connection, Mode};

/// How to reach tunneld.
#[derive(Clone)]
pub struct DialOptions {
    /// `host:port`.
    pub server: String,
    /// The name the server certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    pub tuning: Tuning,
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
            }
        )
    }
}

/// An accepted session, ready to [`Connected::run`].
pub struct Connected {
    pub client_id: String,
    pub tunnels: Vec<TunnelStatus>,
    pub keepalive: Duration,
    conn: Connection<Compat<crate::coalesce::Coalesce<TlsStream<TcpStream>>>>,
}

/// Connects, sends `hello`, and waits for tunneld's answer.
pub async fn dial(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    tokio::time::timeout(opts.timeout, dial_inner(opts, hello))
        .await
        .map_err(|_| DialError::Timeout(opts.timeout))?
}

async fn dial_inner(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    let server = opts.server.clone();
    let tcp = TcpStream::connect(&opts.server)
        .await
        .map_err(|e| DialError::Connect {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let mut tls = TlsConnector::from(opts.tls.clone())
        .connect(opts.server_name.clone(), tcp)
        .await
        .map_err(|e| DialError::Tls {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    let mut preamble = MAGIC.to_vec();
    preamble.extend(
        tunneld_core::proto::encode_frame(hello).map_err(|e| DialError::Protocol(e.to_string()))?,
    );
    tokio::io::AsyncWriteExt::write_all(&mut tls, &preamble)
        .await
        .map_err(|e| DialError::Tls {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    tokio::io::AsyncWriteExt::flush(&mut tls)
        .await
        .map_err(|e| DialError::Tls {
            server: server.clone(),
            reason: e.to_string(),
        })?;
    // With TLS 1.3 a rejected client certificate shows up here, on the first read.
    let answer: ServerHello = read_frame(&mut tls).await.map_err(|e| match e {
        tunneld_core::proto::FrameError::Io(io) => DialError::Tls {
            server: server.clone(),
            reason: io.to_string(),
        },
        tunneld_core::proto::FrameError::Closed => {
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
        } => Ok(Connected {
            client_id,
            tunnels,
            keepalive: Duration::from_secs(keepalive_secs.clamp(1, 3600)),
            conn: Connection::new(
                crate::coalesce::Coalesce::new(tls).compat(),
                opts.tuning.yamux(),
                Mode::Client,
            ),
        }),
    }
}

impl Connected {
    /// Serves the session until it ends or `stop` is cancelled; returns why it ended.
    /// Tunnel list changes pushed by tunneld go to `updates`.
    pub async fn run(
        self,
        connector: Arc<dyn LocalConnector>,
        updates: mpsc::UnboundedSender<Vec<TunnelStatus>>,
        stop: CancellationToken,
    ) -> String {
        let (open_tx, open_rx) = mpsc::channel::<OpenReply>(4);
        let streams = CancellationToken::new();
        let streams_guard = streams.clone().drop_guard();
        let driver = drive(self.conn, open_rx, move |stream| {
            let connector = connector.clone();
            let cancel = streams.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = serve_stream(stream.compat(), connector) => {}
                    _ = cancel.cancelled() => {}
                }
            });
        });
        let interval = self.keepalive;
        let control = async move {
            let (tx, rx) = oneshot::channel();
            if open_tx.send(tx).await.is_err() {
                return "session closed before the control stream opened".to_string();
            }
            let stream = match rx.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return format!("cannot open the control stream: {e}"),
                Err(_) => return "session closed before the control stream opened".to_string(),
            };
            let (_outbox_tx, outbox) = mpsc::unbounded_channel();
            let (inbox, mut inbox_rx) = mpsc::unbounded_channel();
            let forward = async move {
                while let Some(msg) = inbox_rx.recv().await {
                    if let Control::Tunnels { tunnels } = msg {
                        let _ = updates.send(tunnels);
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                end = control::run(stream.compat(), interval, true, outbox, inbox) => end.to_string(),
                _ = forward => unreachable_end(),
            }
        };
        let reason = tokio::select! {
            r = driver => match r {
                Ok(()) => "tunneld closed the connection".to_string(),
                Err(e) => format!("connection failed: {e}"),
            },
            r = control => r,
            _ = stop.cancelled() => "stopped".to_string(),
        };
        drop(streams_guard);
        reason
    }
}

fn unreachable_end() -> String {
    "control forwarding ended".to_string()
}

/// One stream from tunneld: header, connect to the local service, answer, splice.
async fn serve_stream<S>(mut io: S, connector: Arc<dyn LocalConnector>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let header: StreamHeader =
        match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut io)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bad stream header from tunneld");
                return;
            }
            Err(_) => {
                tracing::warn!("tunneld opened a stream but sent no header");
                return;
            }
        };
    match connector.connect(&header).await {
        Ok(mut local) => {
            if write_frame(&mut io, &StreamReply { error: None })
                .await
                .is_err()
            {
                return;
            }
            if let Err(e) = splice(&mut io, &mut local, SpliceCounters::default()).await {
                tracing::debug!(tunnel = %header.tunnel, visitor = %header.visitor, error = %e, "stream ended with an error");
            }
        }
        Err(reason) => {
            tracing::warn!(tunnel = %header.tunnel, visitor = %header.visitor, "cannot reach the local service: {reason}");
            let _ = write_frame(
                &mut io,
                &StreamReply {
                    error: Some(reason),
                },
            )
            .await;
        }
    }
}
