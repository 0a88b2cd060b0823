//! tunneld side of the yamux transport.

use crate::accept::Listener;
use crate::config::Config;
use crate::control;
use crate::driver::{drive, driver_end, widen_tls_buffer, Driven, OpenReply};
use crate::limit::{self, Counted};
use crate::metrics::YamuxMetrics;
use crate::threshold::{self};
use crate::threshold_session::run_threshold;
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;
use tunneld_core::futures_io::FuturesIoExt;
use tunneld_core::home::{Hearth, Home};
use tunneld_core::hub::SessionGuard;
use tunneld_core::io::BoxIo;
use tunneld_core::limits::Permit;
use tunneld_core::metrics::Metrics;
use tunneld_core::proto::{
    oversized_hello, read_frame, write_frame, FrameError, Hello, StreamReply, MAGIC,
};
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
use tunneld_core::tls::common_name;
use tunneld_core::tls_listener::BoundListener;
use tunneld_core::transport::{Transport, TransportContext, TransportError};
use yamux::{ConnectionError, Mode};

pub struct YamuxTransport {
    pub(crate) cfg: Config,
    listener: BoundListener,
    /// threshold's plain-TCP listener (`threshold.plain_listen`).
    pub(crate) plain: Option<BoundListener>,
    tls: TlsAcceptor,
    pub(crate) metrics: Arc<YamuxMetrics>,
}

impl YamuxTransport {
    /// Binds the listener now, so the caller learns the real address (port 0 works). Its
    /// series register on `metrics`.
    pub async fn bind(
        cfg: Config,
        tls: Arc<rustls::ServerConfig>,
        metrics: &Metrics,
    ) -> Result<Self, TransportError> {
        let own = metrics.plugin::<YamuxMetrics>()?;
        let listener = BoundListener::for_transport(cfg.listen).await?;
        let plain =
            BoundListener::for_transport_opt(cfg.threshold.as_ref().and_then(|t| t.plain_listen))
                .await?;
        Ok(Self {
            cfg,
            listener,
            plain,
            tls: TlsAcceptor::from(tls),
            metrics: own,
        })
    }

    /// The plain-TCP threshold listener's address, when configured.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().map(BoundListener::local_addr)
    }

    /// Counts a handshake that ended without a session.
    pub(crate) fn count_handshake(cx: &TransportContext, outcome: &str) {
        cx.metrics
            .handshakes_total
            .with_label_values(&[&cx.name, outcome])
            .inc();
    }
}

#[async_trait]
impl Transport for YamuxTransport {
    fn kind(&self) -> &'static str {
        "yamux"
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let listener = self.listener.take_for_serve()?;
        tracing::info!(transport = %cx.name, addr = %self.listener.local_addr(), "yamux transport listening");
        if let Some(plain) = self.plain.as_ref().and_then(BoundListener::take) {
            tracing::warn!(transport = %cx.name, addr = %self.plain_addr().map(|a| a.to_string()).unwrap_or_default(), "plain-TCP threshold listener (no TLS: trusted networks only)");
            let (me, cx2) = (self.clone(), cx.clone());
            tokio::spawn(async move { me.accept_on(plain, Listener::Plain, cx2).await });
        }
        self.accept_on(listener, Listener::Tls, cx).await;
        Ok(())
    }
}

/// Which protocol the client speaks.
enum Dialect {
    Native(Hello),
    /// A threshold or koding-tunnel client.
    Threshold(threshold::Caller),
    /// An HTTP request to threshold's management API from a verified client (its id), with
    /// the bytes read so far.
    Management(String, [u8; 8]),
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

/// The TLS stream of an accepted connection.
type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A finished handshake: the stream, the client certificate's common name, the dialect.
type Handshaken = (Tls, Option<String>, Dialect);

impl YamuxTransport {
    /// Serves one accepted connection: the handshake, then the session of its dialect.
    pub(crate) async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        cx: TransportContext,
    ) {
        let _ = tcp.set_nodelay(true);
        // Kernel keepalive finds peers that vanished without a FIN, whatever the dialect
        // (threshold clients have no tunneld-level ping).
        tunneld_core::tls_listener::set_keepalive(&tcp);
        cx.metrics.handshakes_pending.inc();
        let hs = tokio::time::timeout(cx.handshake_timeout(), self.handshake(tcp)).await;
        cx.metrics.handshakes_pending.dec();
        let Some((mut tls, cn, dialect)) = Self::handshake_outcome(hs, peer, &cx) else {
            return;
        };

        let hello = match dialect {
            Dialect::Native(h) => h,
            Dialect::Threshold(caller) => {
                let t = self.cfg.threshold.clone();
                if let Some(t) = t {
                    // Yamux sessions only: the management API's HTTP keeps rustls's default.
                    widen_tls_buffer(tls.get_mut().1);
                    run_threshold(tls, peer, caller, permit, &t, &self, cx).await;
                }
                return;
            }
            Dialect::Management(caller, first) => {
                Self::count_handshake(&cx, "management");
                // The handshake is over: its limiter slot goes back before the API is served.
                drop(permit);
                if let Some(m) = cx.management.clone() {
                    let io = tunneld_core::io::Prefixed::new(first.to_vec(), tls);
                    m.serve(Box::new(io), caller, peer).await;
                }
                return;
            }
        };
        let Some((guard, open_rx, probe_link, hearth)) = self
            .admit_native(&mut tls, &hello, cn.as_deref(), peer, &cx)
            .await
        else {
            return;
        };
        drop(permit);
        widen_tls_buffer(tls.get_mut().1);
        let conn = Driven::new(tls, self.cfg.yamux.yamux(), Mode::Server);
        run_session(conn, open_rx, probe_link, guard, hearth, cx).await;
    }

    /// Counts and logs a failed or timed-out handshake; the finished one otherwise.
    fn handshake_outcome(
        hs: Result<Result<Handshaken, HandshakeFailure>, tokio::time::error::Elapsed>,
        peer: SocketAddr,
        cx: &TransportContext,
    ) -> Option<Handshaken> {
        match hs {
            Ok(Ok(x)) => Some(x),
            Ok(Err(f)) => {
                Self::count_handshake(cx, f.outcome);
                if !matches!(f.outcome, "tls_error" | "bad_certificate" | "closed") {
                    cx.metrics
                        .protocol_errors_total
                        .with_label_values(&[&cx.name, f.outcome])
                        .inc();
                }
                tracing::warn!(transport = %cx.name, %peer, outcome = f.outcome, "handshake failed: {}", f.detail);
                None
            }
            Err(_) => {
                Self::count_handshake(cx, "timeout");
                tracing::warn!(transport = %cx.name, %peer, timeout = ?cx.handshake_timeout(), "handshake timed out");
                None
            }
        }
    }

    /// TLS, then the first eight bytes choose the dialect: tunneld's hello, threshold's
    /// management API or threshold's CONNECT.
    async fn handshake(&self, tcp: TcpStream) -> Result<Handshaken, HandshakeFailure> {
        let mut tls = self.tls.accept(tcp).await.map_err(|e| HandshakeFailure {
            outcome: if tunneld_core::tls::is_certificate_error(&e) {
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
        let mut first = [0u8; 8];
        tls.read_exact(&mut first)
            .await
            .map_err(|_| HandshakeFailure::from(FrameError::Closed))?;
        if &first == MAGIC {
            let hello = read_hello(&mut tls).await?;
            return Ok((tls, cn, Dialect::Native(hello)));
        }
        match &self.cfg.threshold {
            Some(t) if t.management_api && threshold::is_management(&first) => {
                let id = management_caller(&mut tls, cn.as_deref(), t).await?;
                Ok((tls, cn, Dialect::Management(id, first)))
            }
            Some(t) if &first == b"CONNECT " => {
                let caller = threshold_caller(&mut tls, &first, cn.as_deref(), t).await?;
                Ok((tls, cn, Dialect::Threshold(caller)))
            }
            _ => Err(FrameError::BadMagic.into()),
        }
    }

    /// Hub admission of a tunnelc, answered on `tls`: its session guard, and the receiving
    /// ends of its opener's stream requests and probes.
    async fn admit_native(
        &self,
        tls: &mut Tls,
        hello: &Hello,
        cn: Option<&str>,
        peer: SocketAddr,
        cx: &TransportContext,
    ) -> Option<(
        SessionGuard,
        mpsc::Receiver<OpenReply>,
        control::ProbeLink,
        Hearth,
    )> {
        let (open_tx, open_rx) = mpsc::channel::<OpenReply>(64);
        let (home, hearth) = tunneld_core::home::home();
        let (probes, probe_link) = control::Probes::new();
        // Never more than the client accepts: past its yamux ceiling it would end the
        // session.
        let cap = hello.max_streams.map_or(self.cfg.yamux.max_streams, |m| {
            (m as usize).clamp(1, self.cfg.yamux.max_streams)
        });
        let opener = Arc::new(YamuxOpener {
            tx: open_tx,
            probes,
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            home,
        });
        let guard = cx
            .hub
            .admit_answering(tls, hello, cn, &cx.name, "yamux", peer, opener)
            .await?;
        Some((guard, open_rx, probe_link, hearth))
    }
}

/// Reads tunneld's hello frame; an oversized one is answered before the failure.
async fn read_hello(tls: &mut Tls) -> Result<Hello, HandshakeFailure> {
    match read_frame(tls).await {
        Ok(h) => Ok(h),
        Err(e @ FrameError::TooLarge(_)) => {
            // Say why, so tunnelc stops instead of retrying the same hello.
            let _ = write_frame(tls, &oversized_hello(&e)).await;
            let _ = tls.shutdown().await;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The client id of a management API request, from its certificate; else a 403 answer.
async fn management_caller(
    tls: &mut Tls,
    cn: Option<&str>,
    t: &threshold::ThresholdConfig,
) -> Result<String, HandshakeFailure> {
    match cn.and_then(|c| threshold::cert_id(c, t)) {
        Some(id) => Ok(id.to_string()),
        None => {
            let body = "the management API needs a client certificate <id>@domain\n";
            let r = format!("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = tls.write_all(r.as_bytes()).await;
            let _ = tls.shutdown().await;
            Err(HandshakeFailure {
                outcome: "bad_certificate",
                detail: "management API request without a valid client certificate".into(),
            })
        }
    }
}

/// Reads and identifies a threshold CONNECT; a refused one is answered before the failure.
async fn threshold_caller(
    tls: &mut Tls,
    first: &[u8; 8],
    cn: Option<&str>,
    t: &threshold::ThresholdConfig,
) -> Result<threshold::Caller, HandshakeFailure> {
    let identified = match threshold::read_head(tls, first).await {
        Ok(head) => threshold::identify(&head, cn, t).map(|identity| threshold::Caller {
            identity,
            koding: threshold::is_koding(&head),
        }),
        Err(r) => Err(r),
    };
    match identified {
        Ok(caller) => Ok(caller),
        Err(r) => {
            let _ = tls.write_all(&r.response()).await;
            let _ = tls.shutdown().await;
            Err(HandshakeFailure {
                outcome: r.outcome,
                detail: format!("threshold CONNECT refused ({}): {}", r.status, r.message),
            })
        }
    }
}

async fn run_session<T>(
    conn: Driven<T>,
    open_rx: mpsc::Receiver<OpenReply>,
    probe_link: control::ProbeLink,
    mut guard: SessionGuard,
    mut hearth: Hearth,
    cx: TransportContext,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
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
    // The interval its welcome announced (a reload since then does not split the two).
    let interval = Duration::from_secs(guard.session.announced.keepalive_secs());
    let control = async {
        let stream = match tokio::time::timeout(interval * 3, ctl_rx).await {
            Ok(Ok(s)) => s,
            _ => return "no control stream opened".to_string(),
        };
        // tunneld acts on no message of tunnelc's but ping, pong and bye: others are
        // dropped as they arrive, never queued.
        control::run(
            stream.tokio_io(),
            interval,
            false,
            notifications,
            Some(probe_link),
            None,
        )
        .await
        .to_string()
    };
    // In this order: the control stream (pings and pongs) before the connection, whose
    // reads can use up the task's I/O budget (tokio's coop) in a transfer; the relays of
    // visitors whose data the connection just delivered after it, in the same poll, not in
    // one more. The relays spend no part of the budget, nor it theirs: with one budget, the
    // connection's reads used it up first and a download's relay got to write to its
    // visitor only once the session's windows were full (6.7-7.1 -> 5.8-6.0 Gbit/s).
    let reason = tokio::select! {
        biased;
        _ = closed.cancelled() => "replaced or closed by tunneld".to_string(),
        r = control => r,
        r = driver => driver_end(r, &cx),
        // The visitors' relays run on this task too (never ends).
        _ = tokio::task::unconstrained(hearth.run()) => "the visitors' relays ended".to_string(),
    };
    tracing::info!(transport = %cx.name, client = %client, "session closing: {reason}");
    drop(guard);
}

/// Opens yamux streams to one tunnelc.
struct YamuxOpener {
    tx: mpsc::Sender<OpenReply>,
    probes: control::Probes,
    /// Visitor streams this session may have open (`yamux.max_streams`).
    slots: Arc<Semaphore>,
    /// The number of `slots`.
    cap: usize,
    /// The session task, where its visitors' relays run.
    home: Home,
}

#[async_trait]
impl OpenStream for YamuxOpener {
    async fn probe(&self, deadline: Duration) -> bool {
        self.probes.probe(deadline).await
    }

    fn stream_cap(&self) -> Option<usize> {
        Some(self.cap)
    }

    fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    fn home(&self) -> Option<Home> {
        Some(self.home.clone())
    }

    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let slot = limit::acquire(&self.slots)?;
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
        let mut io = stream.tokio_io();
        write_frame(&mut io, &header)
            .await
            .map_err(|e| OpenError::Session(e.to_string()))?;
        let reply: StreamReply = tokio::time::timeout(
            tunneld_core::session::OPEN_REPLY_DEADLINE,
            read_frame(&mut io),
        )
        .await
        .map_err(|_| OpenError::Timeout)?
        .map_err(|e| OpenError::Session(e.to_string()))?;
        match reply.error {
            Some(e) => Err(OpenError::LocalRefused(e)),
            None => Ok(Box::new(Counted::new(io, slot))),
        }
    }
}
