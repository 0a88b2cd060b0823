//! One public port, five kinds of connection, told apart from the ClientHello:
//! 1. SNI names a `tls` tunnel: the raw TLS bytes are spliced to it (passthrough);
//! 2. ALPN offers the shared transport's id: TLS with its config, then the transport;
//! 3. ALPN offers `2ptth` (compat mode): the initiator becomes the 2ptth upstream;
//! 4. ALPN `acme-tls/1` (with ACME): a TLS-ALPN-01 validation, answered by the certificate;
//! 5. anything else: a visitor, TLS terminated here, HTTP/1.1 or HTTP/2 by ALPN.

use crate::frontend::HttpsFrontend;
use crate::names::Lookup;
use crate::visitor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tunneld_core::frontend::FrontendContext;
use tunneld_core::idle::{Activity, Touching};
use tunneld_core::io::Prefixed;
use tunneld_core::limits::AddressLimiter;
use tunneld_core::proto::TunnelKind;
use tunneld_core::session::StreamHeader;
use tunneld_core::sni::{self, SniError};
use tunneld_core::splice::{splice, SpliceCounters};
use tunneld_core::tls::common_name;
use tunneld_core::tls_listener::{accept_loop, set_keepalive, Tasks};

pub(crate) async fn run(fe: Arc<HttpsFrontend>, listener: TcpListener, cx: FrontendContext) {
    let open = AddressLimiter::visitors(fe.cfg.max_connections, &fe.limits);
    // Tunnel clients that share the port keep reaching it during the drain.
    let until = if fe.shared.is_some() || fe.compat_2ptth.is_some() {
        cx.closing.clone()
    } else {
        cx.shutdown.clone()
    };
    // Not a visitor yet: the connection takes a drain token once it is one.
    accept_loop(
        &listener,
        &until,
        &fe.name,
        Tasks::Untracked,
        |peer| open.admit(peer.ip(), &fe.metrics, &fe.name),
        |tcp, peer, permit| {
            let (fe, cx) = (fe.clone(), cx.clone());
            async move {
                connection(&fe, tcp, peer, &cx).await;
                drop(permit);
            }
        },
    )
    .await;
}

const NOT_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 39\r\nconnection: close\r\n\r\nThis port speaks HTTPS: use https://.\n";

/// One accepted connection: told apart by its ClientHello, then passed through to a `tls`
/// tunnel, handed to the shared transport or the 2ptth upstream, or served as a visitor.
async fn connection(
    fe: &Arc<HttpsFrontend>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    cx: &FrontendContext,
) {
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    let local = tcp.local_addr().unwrap_or(peer);
    let Some(peeked) = client_hello(fe, &mut tcp).await else {
        return;
    };
    let sni = peeked
        .server_name
        .as_deref()
        .map(str::to_ascii_lowercase)
        .map(|s| s.trim_end_matches('.').to_string());
    if let Some(rest) = tls_tunnel(fe, sni.as_deref()) {
        if draining(fe, cx) {
            return;
        }
        let _visiting = cx.tasks.token();
        if let (route, Lookup::Active { members, .. }) = fe.names.lookup_host(rest, true) {
            // Per-tunnel series count under the claimed name (`*.foo` for a wildcard), never
            // under a name the visitor made up.
            let label = format!("{route}.{}", fe.cfg.domain);
            let at = (sni.as_deref(), label.as_str());
            passthrough(fe, tcp, peeked.bytes, peer, local, at, members).await;
            return;
        }
    }

    let io = Prefixed::new(peeked.bytes, tcp);
    match handshake(fe, io).await {
        Ok(Ok(Kind::Transport(t, tls))) => {
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c));
            t.serve_shared(Box::new(tls), peer, cn).await;
        }
        Ok(Ok(Kind::AcmeValidation(mut tls))) => {
            // The certificate was the answer; nothing more is said.
            let _ = tls.shutdown().await;
        }
        Ok(Ok(Kind::Upstream2ptth(tls))) => upstream_2ptth(fe, Box::new(tls), peer).await,
        Ok(Ok(Kind::Visitor(tls))) => {
            if draining(fe, cx) {
                return;
            }
            let _visiting = cx.tasks.token();
            // The ALPN the handshake settled on decides the protocol.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            visitor::serve(fe.clone(), Box::new(tls), peer, local, sni, h2, cx).await;
        }
        Ok(Err(e)) => {
            fe.metrics
                .stream_open_failures_total
                .with_label_values(&[&fe.name, "tls_error"])
                .inc();
            tracing::debug!(frontend = %fe.name, %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            fe.metrics
                .stream_open_failures_total
                .with_label_values(&[&fe.name, "handshake_timeout"])
                .inc();
        }
    }
}

/// Whether the frontend is draining (no new visitors then); such a refusal is counted.
fn draining(fe: &HttpsFrontend, cx: &FrontendContext) -> bool {
    let d = cx.shutdown.is_cancelled();
    if d {
        fe.metrics
            .stream_open_failures_total
            .with_label_values(&[&fe.name, "draining"])
            .inc();
    }
    d
}

/// The ClientHello, read within the handshake timeout; a client that does not speak TLS is
/// told so in plain HTTP, other failures are counted.
async fn client_hello(fe: &HttpsFrontend, tcp: &mut TcpStream) -> Option<sni::Peeked> {
    match tokio::time::timeout(
        fe.limits.get().handshake_timeout,
        sni::read_client_hello(tcp),
    )
    .await
    {
        Ok(Ok(p)) => Some(p),
        Ok(Err(SniError::NotTls(_))) => {
            let _ = tcp.write_all(NOT_TLS).await;
            let _ = tcp.shutdown().await;
            None
        }
        Ok(Err(e)) => {
            fe.metrics
                .stream_open_failures_total
                .with_label_values(&[&fe.name, e.reason()])
                .inc();
            None
        }
        Err(_) => {
            fe.metrics
                .stream_open_failures_total
                .with_label_values(&[&fe.name, "client_hello_timeout"])
                .inc();
            None
        }
    }
}

/// The name below the domain that the server name `sni` asks for, when it is a `tls`
/// tunnel's (served by passthrough). A first look that moves no round-robin.
fn tls_tunnel<'a>(fe: &HttpsFrontend, sni: Option<&'a str>) -> Option<&'a str> {
    let rest = sni
        .and_then(|s| s.strip_suffix(fe.cfg.domain.as_str()))
        .and_then(|s| s.strip_suffix('.'))?;
    let is_tls = matches!(
        fe.names.lookup_host(rest, false),
        (
            _,
            Lookup::Active {
                kind: TunnelKind::Tls,
                ..
            }
        )
    );
    is_tls.then_some(rest)
}

/// The TLS handshake within the handshake timeout, with the config the client's ALPN picks:
/// the shared transport's, 2ptth's (compat mode), else the visitors' once the certificate
/// of the name asked for is ready.
async fn handshake(
    fe: &HttpsFrontend,
    io: Prefixed<TcpStream>,
) -> Result<std::io::Result<Kind>, tokio::time::error::Elapsed> {
    let started = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    tokio::time::timeout(fe.limits.get().handshake_timeout, async {
        let start = started.await?;
        let offered: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .map(|i| i.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let has = |p: &[u8]| offered.iter().any(|o| o == p);
        if let Some(acme) = fe.acme_tls.as_ref().filter(|_| has(crate::ACME_TLS_ALPN)) {
            let tls = start.into_stream(acme.clone()).await?;
            return Ok::<_, std::io::Error>(Kind::AcmeValidation(tls));
        }
        if let Some(t) = fe.shared.as_ref().filter(|t| has(t.alpn())) {
            let tls = start.into_stream(t.tls_config()).await?;
            return Ok(Kind::Transport(t.clone(), tls));
        }
        // A claimed name's certificate is minted off the runtime; wait for it here.
        fe.resolver.ready(start.client_hello().server_name()).await;
        if let Some(c) = fe
            .compat_2ptth
            .as_ref()
            .filter(|c| has(c.links.alpn_2ptth()))
        {
            return Ok(Kind::Upstream2ptth(start.into_stream(c.tls.clone()).await?));
        }
        Ok(Kind::Visitor(
            start.into_stream(fe.visitor_tls.clone()).await?,
        ))
    })
    .await
}

/// A terminated TLS connection of the public port.
type Tls = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// What a connection turned out to be, by its ALPN.
enum Kind {
    Transport(Arc<dyn tunneld_core::transport::SharedTransport>, Tls),
    Upstream2ptth(Tls),
    Visitor(Tls),
    /// An ACME CA's TLS-ALPN-01 validation (ALPN `acme-tls/1`).
    AcmeValidation(Tls),
}

async fn passthrough(
    fe: &Arc<HttpsFrontend>,
    visitor: TcpStream,
    hello: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    (sni, label): (Option<&str>, &str),
    members: Vec<crate::names::Member>,
) {
    let m = &fe.metrics;
    let count = |outcome: &str| {
        fe.own
            .passthrough_connections_total
            .with_label_values(&[&fe.name, outcome])
            .inc()
    };
    let Some(member) = members
        .iter()
        .find(|m| m.target.online())
        .or(members.first())
    else {
        count("offline");
        return;
    };
    let header = StreamHeader {
        tunnel: member.tunnel.clone(),
        target: None,
        visitor: peer,
        public: local,
        proxy_protocol: member.proxy_protocol,
    };
    let started = std::time::Instant::now();
    let mut stream = match tokio::time::timeout(
        fe.cfg.open_timeout,
        member.target.open(header, sni),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count(e.reason());
            tracing::debug!(frontend = %fe.name, %peer, error = %e, "passthrough visitor refused");
            return;
        }
        Err(_) => {
            count("timeout");
            return;
        }
    };
    m.stream_open_seconds
        .with_label_values(&[&fe.name])
        .observe(started.elapsed().as_secs_f64());
    m.streams_opened_total.with_label_values(&[&fe.name]).inc();
    count("ok");
    let active = m.streams_active.with_label_values(&[&fe.name]);
    active.inc();
    if stream.write_all(&hello).await.is_ok() {
        let counters = SpliceCounters {
            a_to_b: Some(m.bytes_total.with_label_values(&[&fe.name, "in"])),
            b_to_a: Some(m.bytes_total.with_label_values(&[&fe.name, "out"])),
            tunnel: m.tunnel_stream(&fe.name, label),
        };
        counters.count_in(hello.len() as u64);
        let activity = Activity::new();
        let mut visitor = Touching::new(visitor, activity.clone());
        let idle = fe.limits.get().idle_timeout;
        tokio::select! {
            r = splice(&mut visitor, &mut stream, counters) => if let Err(e) = r {
                tracing::debug!(frontend = %fe.name, %peer, error = %e, "passthrough stream ended with an error");
            },
            _ = activity.idle(idle, idle) => {
                m.visitors_idle_closed_total.with_label_values(&[&fe.name]).inc();
            }
        }
    }
    active.dec();
}

/// A 2ptth initiator: it runs the HTTP/2 server, we are its client. The first live one
/// serves `compat_2ptth.hostname`; others are turned away while it lives.
async fn upstream_2ptth(fe: &Arc<HttpsFrontend>, io: tunneld_core::BoxIo, peer: SocketAddr) {
    // Only a frontend configured for 2ptth has the TLS config that leads here.
    let Some(compat) = fe.compat_2ptth.as_ref() else {
        return;
    };
    let busy = tunneld_core::sync::lock(&fe.upstream_2ptth)
        .as_ref()
        .is_some_and(|o| !o.is_closed());
    if busy {
        tracing::warn!(frontend = %fe.name, %peer, "a 2ptth upstream is already connected; refusing another");
        return;
    }
    let (opener, driver) = match compat
        .links
        .connect_2ptth(
            io,
            &tunneld_core::http2::H2Tuning::default(),
            &fe.limits.get(),
            Duration::from_secs(10),
        )
        .await
    {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(frontend = %fe.name, %peer, error = %e, "2ptth HTTP/2 handshake failed");
            return;
        }
    };
    *tunneld_core::sync::lock(&fe.upstream_2ptth) = Some(opener.clone());
    let gauge = fe.own.upstreams_2ptth.with_label_values(&[&fe.name]);
    gauge.set(1);
    tracing::info!(frontend = %fe.name, %peer, "2ptth upstream connected");
    let r = driver.await;
    let mut slot = tunneld_core::sync::lock(&fe.upstream_2ptth);
    if slot.as_ref().is_some_and(|o| Arc::ptr_eq(o, &opener)) {
        *slot = None;
        gauge.set(0);
    }
    drop(slot);
    tracing::info!(frontend = %fe.name, %peer, result = ?r.err(), "2ptth upstream disconnected");
}
