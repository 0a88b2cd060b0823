//! One tunnel port: accept visitors, open a stream to the tunnel client for each, splice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tunneld_core::frontend::FrontendContext;
use tunneld_core::hub::Target;
use tunneld_core::idle::{splice_until_idle, splice_until_idle_or_bulk};
use tunneld_core::limits::AddressLimiter;
use tunneld_core::proxy_protocol;
use tunneld_core::session::StreamHeader;
use tunneld_core::sni;
use tunneld_core::splice::SpliceCounters;
use tunneld_core::tls_listener::{accept_loop, Tasks};

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) struct Listening {
    pub frontend: String,
    pub tunnel: String,
    pub proxy_protocol: Option<proxy_protocol::Version>,
    pub target: Arc<dyn Target>,
    pub open_timeout: Duration,
    pub max_conns: usize,
    pub cx: FrontendContext,
}

pub(crate) async fn run(listener: TcpListener, l: Listening, cancel: CancellationToken) {
    let l = Arc::new(l);
    let open = AddressLimiter::visitors(l.max_conns, &l.cx.limits);
    accept_loop(
        &listener,
        &cancel,
        &l.frontend,
        Tasks::Tracked(&l.cx.tasks),
        |peer| open.admit(peer.ip(), &l.cx.metrics, &l.frontend),
        |visitor, peer, permit| {
            let l2 = l.clone();
            let public = listener.local_addr().unwrap_or(peer);
            async move {
                serve_visitor(l2, visitor, peer, public, permit).await;
            }
        },
    )
    .await;
}

/// `held` (the visitor's place in the listener's caps) is held until the visitor leaves.
async fn serve_visitor<H: Send + 'static>(
    l: Arc<Listening>,
    mut visitor: TcpStream,
    peer: SocketAddr,
    public: SocketAddr,
    held: H,
) {
    let m = &l.cx.metrics;
    let _ = visitor.set_nodelay(true);
    let started = Instant::now();
    let header = StreamHeader {
        tunnel: l.tunnel.clone(),
        target: None,
        visitor: peer,
        public,
        proxy_protocol: l.proxy_protocol,
    };
    // Routing by TLS server name: peek the ClientHello (bounded in size and time) and
    // replay it to the tunnel once the stream is open.
    let mut peeked = Vec::new();
    let mut server_name = None;
    if l.target.routes_by_name() {
        match tokio::time::timeout(l.open_timeout, sni::read_client_hello(&mut visitor)).await {
            Ok(Ok(p)) => {
                peeked = p.bytes;
                server_name = p.server_name;
            }
            Ok(Err(e)) => {
                m.stream_open_failures_total
                    .with_label_values(&[&l.frontend, e.reason()])
                    .inc();
                tracing::debug!(frontend = %l.frontend, %peer, error = %e, "visitor refused: no usable ClientHello");
                return;
            }
            Err(_) => {
                m.stream_open_failures_total
                    .with_label_values(&[&l.frontend, "client_hello_timeout"])
                    .inc();
                return;
            }
        }
    }
    // The session's task runs the relay when the stream comes from the session that was
    // live before and after the opening ([`tunneld_core::home`]).
    let home = l.target.home();
    let opened = tokio::time::timeout(
        l.open_timeout,
        l.target.open(header, server_name.as_deref()),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            m.stream_open_failures_total
                .with_label_values(&[&l.frontend, e.reason()])
                .inc();
            tracing::debug!(frontend = %l.frontend, tunnel = %l.tunnel, %peer, error = %e, "visitor refused");
            return;
        }
        Err(_) => {
            m.stream_open_failures_total
                .with_label_values(&[&l.frontend, "timeout"])
                .inc();
            tracing::debug!(frontend = %l.frontend, tunnel = %l.tunnel, %peer, "tunnel client did not answer in time");
            return;
        }
    };
    m.stream_open_seconds
        .with_label_values(&[&l.frontend])
        .observe(started.elapsed().as_secs_f64());
    m.streams_opened_total
        .with_label_values(&[&l.frontend])
        .inc();
    let active = tunneld_core::metrics::Up::new(m.streams_active.with_label_values(&[&l.frontend]));
    let counters = SpliceCounters {
        a_to_b: Some(m.bytes_total.with_label_values(&[&l.frontend, "in"])),
        b_to_a: Some(m.bytes_total.with_label_values(&[&l.frontend, "out"])),
        tunnel: m.tunnel_stream(&l.frontend, &public.port().to_string()),
    };
    if !peeked.is_empty() {
        if let Err(e) = stream.write_all(&peeked).await {
            tracing::debug!(frontend = %l.frontend, %peer, error = %e, "replaying the ClientHello failed");
            return;
        }
        counters.count_in(peeked.len() as u64);
    }
    let held = (active, held);
    match home.filter(|h| l.target.home().is_some_and(|now| now.same(h))) {
        Some(h) => {
            let relay = relay(l.clone(), visitor, stream, counters, peer, held, true);
            if let Err(relay) = h.run(Box::pin(l.cx.tasks.track_future(relay))) {
                relay.await;
            }
        }
        None => relay(l.clone(), visitor, stream, counters, peer, held, false).await,
    }
}

/// Splices the visitor and its stream until either ends or the visitor idles out; `held`
/// lives as long. `at_home`: on the session's task ([`tunneld_core::home`]), which it leaves
/// for a task of its own once bulk data flows.
async fn relay<H: Send + 'static>(
    l: Arc<Listening>,
    visitor: TcpStream,
    mut stream: tunneld_core::io::BoxIo,
    counters: SpliceCounters,
    peer: SocketAddr,
    held: H,
    at_home: bool,
) {
    let m = &l.cx.metrics;
    // A visitor that stops reading frees its stream after the stall timeout.
    let mut visitor = tunneld_core::stream_budget::StallGuard::new(
        visitor,
        l.cx.limits.get().stream_stall_timeout,
        Some(m.streams_stalled_total.with_label_values(&[&l.frontend])),
    );
    let idled = m
        .visitors_idle_closed_total
        .with_label_values(&[&l.frontend]);
    let idle = l.cx.limits.get().idle_timeout;
    if at_home {
        match splice_until_idle_or_bulk(&mut visitor, &mut stream, &counters, idle, &idled).await {
            Ok(true) => {
                // Bulk data: the rest on a task of its own, so the copies get a core of
                // their own beside the session's (every byte read so far was written).
                let l2 = l.clone();
                l.cx.tasks.spawn(async move {
                    let r = splice_until_idle(&mut visitor, &mut stream, counters, idle, &idled);
                    if let Err(e) = r.await {
                        tracing::debug!(frontend = %l2.frontend, tunnel = %l2.tunnel, %peer, error = %e, "visitor stream ended with an error");
                    }
                    drop(held);
                });
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(frontend = %l.frontend, tunnel = %l.tunnel, %peer, error = %e, "visitor stream ended with an error");
            }
        }
    } else if let Err(e) =
        splice_until_idle(&mut visitor, &mut stream, counters, idle, &idled).await
    {
        tracing::debug!(frontend = %l.frontend, tunnel = %l.tunnel, %peer, error = %e, "visitor stream ended with an error");
    }
    drop(held);
}
