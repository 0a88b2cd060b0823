//! tunnelc side of the yamux transport: connect, authenticate, then serve the streams tunneld
//! opens until the session ends.

use crate::config::Tuning;
use crate::control;
use crate::driver::{drive, Driven, OpenReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
pub use tunneld_core::dial::{DialError, DialTarget};
use tunneld_core::futures_io::FuturesIoExt;
use tunneld_core::proto::{read_frame, write_frame, Control, Hello, StreamReply, TunnelStatus};
use tunneld_core::session::{ClientSession, LocalConnector, SessionNews, StreamHeader};
use tunneld_core::splice::splice_at_home;
use yamux::Mode;

/// How to reach tunneld.
#[derive(Clone)]
pub struct DialOptions {
    pub target: DialTarget,
    pub tuning: Tuning,
}

/// An accepted session, ready to run ([`ClientSession::run`]).
pub struct Connected {
    pub client_id: String,
    pub tunnels: Vec<TunnelStatus>,
    pub keepalive: Duration,
    conn: Driven<TlsStream<TcpStream>>,
}

/// Connects, sends `hello`, and waits for tunneld's answer.
pub async fn dial(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    let mut w = tunneld_core::dial::dial(&opts.target, hello).await?;
    crate::driver::widen_tls_buffer(w.io.get_mut().1);
    Ok(Connected {
        client_id: w.client_id,
        tunnels: w.tunnels,
        keepalive: w.keepalive,
        conn: Driven::new(w.io, opts.tuning.yamux(), Mode::Client),
    })
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
        let (open_tx, open_rx) = mpsc::channel::<OpenReply>(4);
        // Streams run on this task while they carry small exchanges (their home, as at
        // tunneld: no hop between tasks per request); one that starts moving bulk data goes
        // on a task of its own, cancelled with the session.
        let (home, mut hearth) = tunneld_core::home::home();
        let streams = CancellationToken::new();
        let streams_guard = streams.clone().drop_guard();
        let driver = drive(this.conn, open_rx, move |stream| {
            let relay = serve_stream(stream.tokio_io(), connector.clone(), streams.clone());
            if let Err(relay) = home.run(Box::pin(relay)) {
                tokio::spawn(relay);
            }
        });
        let interval = this.keepalive;
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
            let (inbox, mut inbox_rx) = mpsc::channel(16);
            let forward = async move {
                while let Some(msg) = inbox_rx.recv().await {
                    let news = match msg {
                        Control::Tunnels { tunnels } => SessionNews::Tunnels(tunnels),
                        Control::Handover { reason } => SessionNews::Handover(reason),
                        _ => continue,
                    };
                    let _ = updates.send(news);
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                end = control::run(stream.tokio_io(), interval, true, outbox, None, Some(inbox)) => end.to_string(),
                _ = forward => unreachable_end(),
            }
        };
        // In this order, as at tunneld (`run_session`): the control stream before the
        // connection, the streams the connection just fed after it in the same poll, with a
        // budget of their own.
        let reason = tokio::select! {
            biased;
            _ = stop.cancelled() => "stopped".to_string(),
            r = control => r,
            r = driver => match r {
                Ok(()) => "tunneld closed the connection".to_string(),
                Err(e) => format!("connection failed: {e}"),
            },
            _ = tokio::task::unconstrained(hearth.run()) => "the streams' relays ended".to_string(),
        };
        drop(streams_guard);
        reason
    }
}

fn unreachable_end() -> String {
    "control forwarding ended".to_string()
}

/// One stream from tunneld: header, connect to the local service, answer, splice; at the
/// session's home until bulk data flows, then on a task of its own until `cancel`.
async fn serve_stream<S>(mut io: S, connector: Arc<dyn LocalConnector>, cancel: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
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
        Ok(local) => {
            if write_frame(&mut io, &StreamReply { error: None })
                .await
                .is_err()
            {
                return;
            }
            splice_at_home(io, local, cancel, move |e| {
                tracing::debug!(tunnel = %header.tunnel, visitor = %header.visitor, error = %e, "stream ended with an error");
            })
            .await;
        }
        Err(e) => {
            let reason = e.to_string();
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
