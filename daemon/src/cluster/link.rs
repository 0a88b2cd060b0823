//! The inter-node link: one TLS connection (mutual, the cluster's CA) per pair of nodes and
//! direction, multiplexed with yamux, reused by every visitor that crosses. The asking node
//! opens a stream per visitor; the holding node opens the tunnel stream to its session and
//! splices the two.

use super::link_wire::{read_line, write_line, LinkReply, LinkRequest, HTTP_ERROR_HEADER};
use super::metrics::ClusterMetrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunneld_core::futures_io::FuturesIoExt;
use tunneld_core::limits::AddressLimiter;
use tunneld_core::session::{OpenError, OPEN_REPLY_DEADLINE};
use tunneld_core::splice::{splice, SpliceCounters};
use tunneld_core::BoxIo;
use tunneld_transport_yamux::driver::{drive, widen_tls_buffer, Driven, OpenReply};
use yamux::Mode;

/// Deadline for dialling a node (TCP and TLS) and for a stream's request line.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Link connections one node keeps at once (after their TLS handshake).
const MAX_LINK_CONNECTIONS: usize = 256;
/// TLS handshakes on the link port in progress at once, overall and per source address: a
/// peer that connects and says nothing holds one for [`DIAL_TIMEOUT`] at most, and one
/// address cannot hold the slots other nodes need.
const MAX_PENDING: usize = 64;
const MAX_PENDING_PER_ADDRESS: usize = 8;

/// What the link server asks of the cluster: a stream to what `req` names here (a route
/// this node's session holds, or a connection parked here).
#[async_trait::async_trait]
pub trait LocalRoutes: Send + Sync + 'static {
    async fn open(&self, req: LinkRequest) -> Result<BoxIo, OpenError>;
    /// For an HTTP-mode stream: the route's target and the header its requests go with.
    fn http_target(
        &self,
        req: &LinkRequest,
    ) -> Result<
        (
            Arc<dyn tunneld_core::hub::Target>,
            tunneld_core::session::StreamHeader,
        ),
        OpenError,
    >;
}

/// Visitor streams one link carries at once. The dialling side stops here (its visitors
/// are refused as capped); the accepting side allows twice as many, so yamux's own ceiling,
/// which ends the whole connection, is never reached first.
const LINK_STREAMS: usize = 2048;

fn yamux_config(mode: Mode) -> yamux::Config {
    let max_streams = match mode {
        Mode::Client => LINK_STREAMS,
        Mode::Server => LINK_STREAMS * 2,
    };
    tunneld_transport_yamux::config::Tuning {
        max_streams,
        ..Default::default()
    }
    .yamux()
}

/// Accepts links from other nodes until `stop`. Each visitor stream is a task of `visitors`
/// (the node's drain waits for them as for its own visitors).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: Arc<dyn LocalRoutes>,
    (metrics, visitors): (Arc<ClusterMetrics>, TaskTracker),
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_LINK_CONNECTIONS));
    let pending = AddressLimiter::new(MAX_PENDING, MAX_PENDING_PER_ADDRESS);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster link: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handshake = match pending.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                metrics.connection(why.reason());
                tracing::debug!(%peer, reason = why.reason(), "cluster link: handshake refused");
                continue;
            }
        };
        let slots = slots.clone();
        let (acceptor, routes, metrics, stop, visitors) = (
            acceptor.clone(),
            routes.clone(),
            metrics.clone(),
            stop.clone(),
            visitors.clone(),
        );
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio::time::timeout(DIAL_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    metrics.connection("tls_error");
                    tracing::debug!(%peer, error = %e, "cluster link: TLS refused");
                    return;
                }
                Err(_) => {
                    metrics.connection("timeout");
                    tracing::debug!(%peer, "cluster link: TLS handshake timed out");
                    return;
                }
            };
            drop(handshake);
            let Ok(_slot) = slots.try_acquire_owned() else {
                metrics.connection("too_many_connections");
                tracing::warn!(%peer, "cluster link: too many link connections; refused");
                return;
            };
            metrics.connection("ok");
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tunneld_core::tls::common_name(c))
                .unwrap_or_else(|| "?".into());
            tracing::info!(%peer, %node, "cluster link from node");
            widen_tls_buffer(tls.get_mut().1);
            let conn = Driven::new(tls, yamux_config(Mode::Server), Mode::Server);
            let (_open_tx, open_rx) = mpsc::channel::<OpenReply>(1);
            let streams = CancellationToken::new();
            let guard = streams.clone().drop_guard();
            let ended = drive(conn, open_rx, |stream| {
                let (routes, metrics, node, streams) = (
                    routes.clone(),
                    metrics.clone(),
                    node.clone(),
                    streams.clone(),
                );
                visitors.spawn(async move {
                    tokio::select! {
                        _ = serve_stream(stream.tokio_io(), &*routes, &metrics, &node) => {}
                        _ = streams.cancelled() => {}
                    }
                });
            });
            tokio::select! {
                r = ended => tracing::info!(%node, result = ?r.err(), "cluster link closed"),
                _ = stop.cancelled() => {}
            }
            drop(guard);
        });
    }
}

/// One visitor stream from node `from`.
async fn serve_stream<S>(mut s: S, routes: &dyn LocalRoutes, metrics: &ClusterMetrics, from: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let req: LinkRequest = match tokio::time::timeout(DIAL_TIMEOUT, read_line(&mut s)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            metrics.stream(from, "in", "bad_request");
            tracing::warn!(node = %from, error = %e, "cluster link: bad stream request");
            return;
        }
        Err(_) => {
            metrics.stream(from, "in", "timeout");
            return;
        }
    };
    if req.http {
        return serve_http(s, routes.http_target(&req), metrics, from).await;
    }
    let opened = match tokio::time::timeout(OPEN_REPLY_DEADLINE, routes.open(req)).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Timeout),
    };
    match opened {
        Ok(mut io) => {
            metrics.stream(from, "in", "ok");
            if write_line(&mut s, &LinkReply::ok()).await.is_ok() {
                let _ = splice(&mut s, &mut io, SpliceCounters::default()).await;
            }
        }
        Err(e) => {
            metrics.stream(from, "in", e.reason());
            let _ = write_line(&mut s, &LinkReply::of(&e)).await;
        }
    }
}

/// An HTTP-mode stream: the reply line, then HTTP/1.1 requests, each forwarded through the
/// route's target; a refusal comes back as a 502 with [`HTTP_ERROR_HEADER`].
async fn serve_http<S>(
    mut s: S,
    target: Result<
        (
            Arc<dyn tunneld_core::hub::Target>,
            tunneld_core::session::StreamHeader,
        ),
        OpenError,
    >,
    metrics: &ClusterMetrics,
    from: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (target, header) = match target {
        Ok(t) => t,
        Err(e) => {
            metrics.stream(from, "in", e.reason());
            let _ = write_line(&mut s, &LinkReply::of(&e)).await;
            return;
        }
    };
    metrics.stream(from, "in", "ok");
    if write_line(&mut s, &LinkReply::ok()).await.is_err() {
        return;
    }
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (target, header) = (target.clone(), header.clone());
        async move {
            let resp = match target.request(header, absolute(req)).await {
                Ok(r) => r,
                Err(e) => {
                    let line = serde_json::to_string(&LinkReply::of(&e)).unwrap_or_default();
                    let mut r =
                        http::Response::new(tunneld_core::http_forward::full(e.to_string()));
                    *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                    if let Ok(v) = http::HeaderValue::from_str(&line) {
                        r.headers_mut().insert(HTTP_ERROR_HEADER, v);
                    }
                    r
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(node = %from, error = %e, "cluster link: HTTP stream ended");
    }
}

/// A request as the asking node's frontend made it (absolute URI from its Host, as an
/// HTTP/2 upstream needs), from the origin form it crossed the link in.
fn absolute(
    req: http::Request<hyper::body::Incoming>,
) -> http::Request<tunneld_core::http_forward::Body> {
    let (mut parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(host) = host {
        tunneld_core::http_forward::set_absolute_uri(&mut parts.uri, &host);
    }
    http::Request::from_parts(parts, tunneld_core::http_forward::boxed(body))
}

struct LinkConn {
    addr: SocketAddr,
    open_tx: mpsc::Sender<OpenReply>,
    closed: CancellationToken,
}

/// This node's links to the others, dialled when first needed and again after they drop.
pub struct Links {
    tls: tokio_rustls::TlsConnector,
    conns: Mutex<HashMap<String, Arc<LinkConn>>>,
    /// One dial at a time per node.
    dialing: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<ClusterMetrics>,
    stop: CancellationToken,
}

impl Links {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<ClusterMetrics>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(tls),
            conns: Mutex::default(),
            dialing: tokio::sync::Mutex::default(),
            metrics,
            stop,
        }
    }

    /// Node names with a live link now.
    pub fn connected(&self) -> Vec<String> {
        tunneld_core::sync::lock(&self.conns)
            .iter()
            .filter(|(_, c)| !c.closed.is_cancelled())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn live(&self, node: &str, addr: SocketAddr) -> Option<Arc<LinkConn>> {
        tunneld_core::sync::lock(&self.conns)
            .get(node)
            .filter(|c| !c.closed.is_cancelled() && c.addr == addr)
            .cloned()
    }

    async fn conn(&self, node: &str, addr: SocketAddr) -> Result<Arc<LinkConn>, String> {
        if let Some(c) = self.live(node, addr) {
            return Ok(c);
        }
        let lock = self
            .dialing
            .lock()
            .await
            .entry(node.to_string())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        if let Some(c) = self.live(node, addr) {
            return Ok(c);
        }
        let c = Arc::new(self.dial(node, addr).await?);
        tunneld_core::sync::lock(&self.conns).insert(node.to_string(), c.clone());
        Ok(c)
    }

    async fn dial(&self, node: &str, addr: SocketAddr) -> Result<LinkConn, String> {
        let name = rustls::pki_types::ServerName::try_from(node.to_string())
            .map_err(|e| format!("node name `{node}`: {e}"))?;
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tunneld_core::tls_listener::set_keepalive(&tcp);
        let mut tls = tokio::time::timeout(DIAL_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS to {addr}: timed out"))?
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        widen_tls_buffer(tls.get_mut().1);
        let conn = Driven::new(tls, yamux_config(Mode::Client), Mode::Client);
        let (open_tx, open_rx) = mpsc::channel::<OpenReply>(64);
        let closed = CancellationToken::new();
        let (ended, stop, node_name) = (closed.clone(), self.stop.clone(), node.to_string());
        tokio::spawn(async move {
            tokio::select! {
                r = drive(conn, open_rx, drop) => tracing::info!(node = %node_name, result = ?r.err(), "cluster link to node closed"),
                _ = stop.cancelled() => {}
            }
            ended.cancel();
        });
        tracing::info!(%node, %addr, "cluster link to node");
        Ok(LinkConn {
            addr,
            open_tx,
            closed,
        })
    }

    /// Opens a stream to the session holding `req.route` on `node` (its link at `addr`).
    pub async fn open(
        &self,
        node: &str,
        addr: SocketAddr,
        req: &LinkRequest,
    ) -> Result<BoxIo, OpenError> {
        let r = self.open_inner(node, addr, req).await;
        self.metrics.stream(
            node,
            "out",
            match &r {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            },
        );
        r
    }

    async fn open_inner(
        &self,
        node: &str,
        addr: SocketAddr,
        req: &LinkRequest,
    ) -> Result<BoxIo, OpenError> {
        let link = |e: String| OpenError::Session(format!("link to node `{node}`: {e}"));
        let conn = self.conn(node, addr).await.map_err(link)?;
        let (tx, rx) = oneshot::channel();
        conn.open_tx
            .send(tx)
            .await
            .map_err(|_| link("closed".into()))?;
        let stream = tokio::time::timeout(DIAL_TIMEOUT, rx)
            .await
            .map_err(|_| link("no stream in time".into()))?
            .map_err(|_| link("closed".into()))?
            .map_err(|e| match e {
                yamux::ConnectionError::TooManyStreams => {
                    OpenError::Capped("on the link between nodes")
                }
                e => link(e.to_string()),
            })?;
        let mut io = stream.tokio_io();
        write_line(&mut io, req)
            .await
            .map_err(|e| link(e.to_string()))?;
        let reply: LinkReply =
            tokio::time::timeout(OPEN_REPLY_DEADLINE + DIAL_TIMEOUT, read_line(&mut io))
                .await
                .map_err(|_| OpenError::Timeout)?
                .map_err(|e| link(e.to_string()))?;
        reply.into_result()?;
        Ok(Box::new(io))
    }
}
