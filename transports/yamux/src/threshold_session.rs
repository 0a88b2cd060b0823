//! A threshold / koding client's session once its CONNECT is accepted (over TLS or the
//! plain listener): admission by the hub, the `Connected to Tunnel` answer, the yamux server
//! and the FIFO-paired control stream.

use crate::driver::{drive, driver_end, Driven, OpenReply};
use crate::threshold::{self, Pairs, ThresholdConfig, ThresholdOpener};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tunneld_core::auth::Identity;
use tunneld_core::futures_io::FuturesIoExt;
use tunneld_core::hub::SessionGuard;
use tunneld_core::limits::Permit;
use tunneld_core::proto::{Hello, VERSION};
use tunneld_core::transport::TransportContext;
use yamux::Mode;

/// Runs a threshold-dialect session: admission, the `200 Connected to Tunnel` answer, then
/// yamux with tunneld as the server and FIFO pairing of client-opened streams.
pub(crate) async fn run_threshold<T>(
    mut tls: T,
    peer: SocketAddr,
    caller: threshold::Caller,
    permit: Permit,
    t: &ThresholdConfig,
    yt: &crate::server::YamuxTransport,
    cx: TransportContext,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let threshold::Caller { identity, koding } = caller;
    let cfg = &yt.cfg;
    let pairs = Arc::new(Pairs::new(
        yt.metrics
            .threshold_pairs_pending
            .with_label_values(&[&cx.name]),
    ));
    let (line_tx, line_rx) = mpsc::channel::<Vec<u8>>(256);
    let opener = Arc::new(ThresholdOpener {
        pairs: pairs.clone(),
        order: tokio::sync::Mutex::new(line_tx),
        max_pending: t.max_pending,
        slots: Arc::new(Semaphore::new(cfg.yamux.max_streams)),
        koding,
    });
    let Some(guard) = admit(&mut tls, peer, identity, koding, opener, &cx).await else {
        return;
    };
    if !answer(&mut tls, peer, &cx).await {
        return;
    }
    drop(permit);
    let conn = Driven::new(tls, cfg.yamux.yamux(), Mode::Server);
    let timeouts = yt
        .metrics
        .threshold_pair_timeouts_total
        .with_label_values(&[&cx.name]);
    serve(conn, guard, pairs, line_rx, t.pair_timeout, timeouts, &cx).await;
}

/// Hub admission of the client's identity; a rejection is answered 403 (within 2 s).
async fn admit<T>(
    tls: &mut T,
    peer: SocketAddr,
    identity: Identity,
    koding: bool,
    opener: Arc<ThresholdOpener>,
    cx: &TransportContext,
) -> Option<SessionGuard>
where
    T: tokio::io::AsyncWrite + Unpin,
{
    // Threshold clients take whatever the admin API maps to them.
    let hello = Hello {
        version: VERSION,
        token: None,
        tunnels: Vec::new(),
        accept_server_mappings: true,
        agent: if koding { "koding" } else { "threshold" }.into(),
        max_streams: None,
        instance: None,
    };
    let admitted = cx
        .hub
        .admit_identity(identity, &hello, &cx.name, "yamux-threshold", peer, opener)
        .await;
    match admitted {
        Ok((g, _)) => Some(g),
        Err(rej) => {
            if cx.hub.refusal_log.allow() {
                tracing::warn!(transport = %cx.name, %peer, outcome = rej.outcome, "threshold client rejected: {}", rej.reason);
            }
            let r = threshold::Refusal {
                status: 403,
                outcome: rej.outcome,
                message: rej.reason,
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(2), tls.write_all(&r.response())).await;
            None
        }
    }
}

/// Writes `200 Connected to Tunnel` within the handshake timeout; `false` if it failed.
async fn answer<T>(tls: &mut T, peer: SocketAddr, cx: &TransportContext) -> bool
where
    T: tokio::io::AsyncWrite + Unpin,
{
    let answered = tokio::time::timeout(cx.handshake_timeout(), async {
        tls.write_all(threshold::CONNECTED).await?;
        tls.flush().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::warn!(transport = %cx.name, %peer, "could not answer the threshold CONNECT");
        return false;
    }
    true
}

/// The yamux session: client-opened streams go to the control stream first, then to the
/// FIFO pairs, until the connection, control, pairing watchdog or hub ends it.
async fn serve<C>(
    conn: Driven<C>,
    guard: SessionGuard,
    pairs: Arc<Pairs>,
    line_rx: mpsc::Receiver<Vec<u8>>,
    pair_timeout: Duration,
    timeouts: prometheus::IntCounter,
    cx: &TransportContext,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let client = guard.session.info.client_id.clone();
    let closed = guard.session.closed.clone();
    // tunneld never opens streams in this dialect: the opener channel stays empty.
    let (_no_opens, open_rx) = mpsc::channel::<OpenReply>(1);
    let (ctl_tx, ctl_rx) = oneshot::channel();
    let mut ctl_tx = Some(ctl_tx);
    let (name, metrics, pairs2) = (cx.name.clone(), cx.metrics.clone(), pairs.clone());
    let driver = drive(conn, open_rx, move |stream| {
        if let Some(tx) = ctl_tx.take() {
            let _ = tx.send(stream);
        } else if !pairs2.deliver(stream) {
            metrics
                .protocol_errors_total
                .with_label_values(&[&name, "unexpected_stream"])
                .inc();
        }
    });
    let control = async {
        match tokio::time::timeout(Duration::from_secs(10), ctl_rx).await {
            Ok(Ok(s)) => threshold::run_control(s.tokio_io(), line_rx).await,
            _ => "no control stream opened".to_string(),
        }
    };
    let reason = tokio::select! {
        r = driver => driver_end(r, cx),
        r = control => r,
        r = watchdog(&pairs, pair_timeout, &timeouts) => r,
        _ = closed.cancelled() => "replaced or closed by tunneld".to_string(),
    };
    pairs.clear();
    tracing::info!(transport = %cx.name, client = %client, "threshold session closing: {reason}");
    drop(guard);
}

/// Ends the session when the oldest pair has waited over `pair_timeout` for its stream.
async fn watchdog(
    pairs: &Pairs,
    pair_timeout: Duration,
    timeouts: &prometheus::IntCounter,
) -> String {
    let mut tick = tokio::time::interval((pair_timeout / 4).max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        if pairs.oldest().is_some_and(|age| age > pair_timeout) {
            timeouts.inc();
            return format!("the client opened no stream for a visitor within {pair_timeout:?}");
        }
    }
}
