//! tunneld side of the h2-reverse transport.

use crate::config::Config;
use crate::link::{self, H2Opener, ALPN};
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tunneld_core::home::{Hearth, Home};
use tunneld_core::http2::h2_reason;
use tunneld_core::http_forward::Body;
use tunneld_core::hub::SessionGuard;
use tunneld_core::io::BoxIo;
use tunneld_core::proto::{
    oversized_hello, read_frame, write_frame, Control, FrameError, Hello, MAGIC,
};
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
use tunneld_core::tls::common_name;
use tunneld_core::tls_listener::{accept_next, set_keepalive, BoundListener};
use tunneld_core::transport::{SharedTransport, Transport, TransportContext, TransportError};

pub struct H2ReverseTransport {
    cfg: Config,
    listener: Option<BoundListener>,
    tls: Arc<rustls::ServerConfig>,
    /// Set when serving starts; connections handed over before that are dropped.
    cx: OnceLock<TransportContext>,
}

impl H2ReverseTransport {
    /// Binds the own listener (when configured) now, so port 0 works.
    pub async fn bind(cfg: Config, tls: Arc<rustls::ServerConfig>) -> Result<Self, TransportError> {
        let listener = BoundListener::for_transport_opt(cfg.listen).await?;
        Ok(Self {
            cfg,
            listener,
            tls,
            cx: OnceLock::new(),
        })
    }
}

#[async_trait]
impl Transport for H2ReverseTransport {
    fn kind(&self) -> &'static str {
        "h2-reverse"
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|l| l.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let _ = self.cx.set(cx.clone());
        let Some(listener) = self.listener.as_ref().and_then(|l| l.take()) else {
            // Shared port only: sessions arrive through `serve_shared`.
            cx.shutdown.cancelled().await;
            return Ok(());
        };
        tracing::info!(transport = %cx.name, addr = ?self.local_addr(), "h2-reverse transport listening");
        let acceptor = TlsAcceptor::from(self.tls.clone());
        loop {
            let Some((tcp, peer)) = accept_next(&listener, &cx.shutdown, &cx.name).await else {
                break;
            };
            let Some(permit) = cx.admit(peer) else {
                continue;
            };
            let (me, acceptor) = (self.clone(), acceptor.clone());
            cx.tasks.spawn(async move {
                let cx = match me.cx.get() {
                    Some(cx) => cx.clone(),
                    None => return,
                };
                let accepted = tls_accept(&acceptor, tcp, &cx).await;
                drop(permit);
                if let Some((io, cn)) = accepted {
                    me.session(io, peer, cn, cx).await;
                }
            });
        }
        Ok(())
    }
}

async fn tls_accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    cx: &TransportContext,
) -> Option<(BoxIo, Option<String>)> {
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    match tokio::time::timeout(cx.handshake_timeout(), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c));
            Some((Box::new(tls), cn))
        }
        Ok(Err(e)) => {
            let outcome = if tunneld_core::tls::is_certificate_error(&e) {
                "bad_certificate"
            } else {
                "tls_error"
            };
            count_handshake(cx, outcome);
            None
        }
        Err(_) => {
            count_handshake(cx, "timeout");
            None
        }
    }
}

#[async_trait]
impl SharedTransport for H2ReverseTransport {
    fn alpn(&self) -> &'static [u8] {
        ALPN
    }

    fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.clone()
    }

    async fn serve_shared(self: Arc<Self>, io: BoxIo, peer: SocketAddr, cert_cn: Option<String>) {
        let Some(cx) = self.cx.get().cloned() else {
            return;
        };
        self.session(io, peer, cert_cn, cx).await;
    }
}

/// The opener a session is admitted with: the HTTP/2 link exists only after the welcome went
/// out, so it is filled in then.
///
/// The session's opener, once the reversed HTTP/2 handshake after the welcome is done.
/// Visitors that arrive between the welcome and the end of that handshake (tunnelc
/// announces its tunnels at the welcome) wait for it instead of being refused.
/// Its stream cap is the link's, known before the link is: idle kept-alive streams
/// ([`tunneld_core::kept_streams`]) take at most half of it.
struct LinkSlot {
    link: tokio::sync::watch::Sender<Link>,
    cap: usize,
    /// Where the link's HTTP/2 connection and its ports visitors' relays run: the session's
    /// task ([`tunneld_core::home`]).
    home: Home,
}

#[derive(Clone)]
enum Link {
    Pending,
    Ready(Arc<H2Opener>),
    Failed,
}

/// How long a visitor waits for the handshake after the welcome.
const LINK_WAIT: Duration = Duration::from_secs(10);

impl LinkSlot {
    fn new(cap: usize, home: Home) -> Self {
        Self {
            link: tokio::sync::watch::channel(Link::Pending).0,
            cap,
            home,
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    async fn get(&self) -> Result<Arc<H2Opener>, OpenError> {
        let mut rx = self.link.subscribe();
        let ready =
            tokio::time::timeout(LINK_WAIT, rx.wait_for(|l| !matches!(l, Link::Pending))).await;
        match ready {
            Ok(Ok(l)) => match &*l {
                Link::Ready(o) => Ok(o.clone()),
                _ => Err(OpenError::Offline),
            },
            _ => Err(OpenError::Offline),
        }
    }
}

#[async_trait]
impl OpenStream for LinkSlot {
    async fn probe(&self, deadline: Duration) -> bool {
        match tokio::time::timeout(deadline, self.get()).await {
            Ok(Ok(o)) => o.probe(deadline).await,
            _ => false,
        }
    }

    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        self.get().await?.open(header).await
    }

    fn stream_cap(&self) -> Option<usize> {
        Some(self.cap)
    }

    fn home(&self) -> Option<Home> {
        Some(self.home.clone())
    }

    fn is_full(&self) -> bool {
        match &*self.link.borrow() {
            Link::Ready(o) => o.is_full(),
            _ => false,
        }
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OpenError> {
        self.get().await?.request(header, req).await
    }
}

impl H2ReverseTransport {
    async fn session(
        self: Arc<Self>,
        mut io: BoxIo,
        peer: SocketAddr,
        cn: Option<String>,
        cx: TransportContext,
    ) {
        let Some(hello) = read_hello(&mut io, peer, &cx).await else {
            return;
        };
        // tunnelc's own cap, when its hello says the number is that (tunnelc before the word
        // sent yamux's, whatever the transport).
        let peer_max = hello
            .max_streams
            .filter(|_| hello.has_capability(tunneld_core::proto::CAP_H2_MAX_STREAMS));
        let (home, hearth) = tunneld_core::home::home();
        let slot = Arc::new(LinkSlot::new(
            link::stream_cap(&self.cfg.h2, peer_max),
            home.clone(),
        ));
        let Some(guard) = cx
            .hub
            .admit_answering(
                &mut io,
                &hello,
                cn.as_deref(),
                &cx.name,
                "h2-reverse",
                peer,
                slot.clone(),
            )
            .await
        else {
            return;
        };
        // What its welcome announced: the link is sized and pinged by the same.
        let limits = guard.session.announced;
        let keepalive = Duration::from_secs(limits.keepalive_secs());
        let (opener, driver) = match link::connect(
            io,
            &self.cfg.h2,
            &limits,
            keepalive,
            (false, Some(home)),
            peer_max,
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                slot.set(Link::Failed);
                tracing::warn!(transport = %cx.name, %peer, error = %e, "HTTP/2 handshake failed");
                return;
            }
        };
        slot.set(Link::Ready(opener.clone()));
        run_session(driver, opener, guard, hearth, cx).await;
    }
}

/// Reads a session's magic and hello within the handshake timeout; a failure is counted
/// (`handshakes_total`, and `protocol_errors_total` unless the peer just closed) and logged.
async fn read_hello(io: &mut BoxIo, peer: SocketAddr, cx: &TransportContext) -> Option<Hello> {
    cx.metrics.handshakes_pending.inc();
    let hello = tokio::time::timeout(cx.handshake_timeout(), async {
        let mut magic = [0u8; 8];
        io.read_exact(&mut magic)
            .await
            .map_err(|_| ("closed", "closed before the hello".to_string()))?;
        if &magic != MAGIC {
            return Err(("bad_magic", "the client did not send TUNNELD1".to_string()));
        }
        match read_frame::<Hello, _>(&mut *io).await {
            Ok(h) => Ok(h),
            Err(e @ FrameError::TooLarge(_)) => {
                // Say why, so tunnelc stops instead of retrying the same hello.
                let _ = write_frame(&mut *io, &oversized_hello(&e)).await;
                let _ = io.shutdown().await;
                Err((e.reason(), e.to_string()))
            }
            Err(e) => Err((e.reason(), e.to_string())),
        }
    })
    .await;
    cx.metrics.handshakes_pending.dec();
    match hello {
        Ok(Ok(h)) => Some(h),
        Ok(Err((outcome, detail))) => {
            count_handshake(cx, outcome);
            if outcome != "closed" {
                cx.metrics
                    .protocol_errors_total
                    .with_label_values(&[&cx.name, outcome])
                    .inc();
            }
            tracing::warn!(transport = %cx.name, %peer, outcome, "handshake failed: {detail}");
            None
        }
        Err(_) => {
            count_handshake(cx, "timeout");
            None
        }
    }
}

async fn run_session(
    driver: link::LinkDriver,
    opener: Arc<H2Opener>,
    mut guard: SessionGuard,
    mut hearth: Hearth,
    cx: TransportContext,
) {
    let client = guard.session.info.client_id.clone();
    let closed = guard.session.closed.clone();
    let mut notifications =
        std::mem::replace(&mut guard.notifications, mpsc::unbounded_channel().1);
    let notify = async {
        while let Some(msg) = notifications.recv().await {
            let json = match serde_json::to_vec(&msg) {
                Ok(j) => j,
                Err(_) => continue,
            };
            if let Err(e) = opener.control(json).await {
                return format!("control message failed: {e}");
            }
            if matches!(msg, Control::Bye { .. }) {
                return "said goodbye".to_string();
            }
        }
        std::future::pending::<String>().await
    };
    // As on yamux sessions (`run_session` there): the HTTP/2 connection's own task (hyper
    // runs it apart from `driver`, which takes the requests; the socket's I/O happens
    // there), hyper's CONNECT upgrade pipes and the relays of ports visitors run here too,
    // outside tokio's I/O budget (as there; unlike there, that includes the socket's reads:
    // one poll may read all the socket holds before the relays get their turn).
    let reason = tokio::select! {
        biased;
        _ = closed.cancelled() => "replaced or closed by tunneld".to_string(),
        r = notify => r,
        r = driver => match r {
            Ok(()) => "connection closed".to_string(),
            Err(e) => {
                if let Some(reason) = h2_reason(&e) {
                    cx.metrics
                        .protocol_errors_total
                        .with_label_values(&[&cx.name, &format!("h2_{reason}")])
                        .inc();
                }
                format!("HTTP/2 connection failed: {e}")
            }
        },
        _ = tokio::task::unconstrained(hearth.run()) => "the relays ended".to_string(),
    };
    tracing::info!(transport = %cx.name, client = %client, "session closing: {reason}");
    drop(guard);
    // The connection's task goes on while streams remain (a replaced session's visitors
    // finish on it), as it did on a task of its own.
    tokio::spawn(hearth.finish());
}

/// Counts a handshake that ended without a session (`tunneld_handshakes_total`).
fn count_handshake(cx: &TransportContext, outcome: &str) {
    cx.metrics
        .handshakes_total
        .with_label_values(&[&cx.name, outcome])
        .inc();
}
