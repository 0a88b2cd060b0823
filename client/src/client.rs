//! tunnelc: connects to tunneld, keeps the session alive, reconnects with jittered
//! exponential backoff (round robin over `server` and `servers`), and connects each stream
//! tunneld opens to the local service.

use crate::config::client::{ClientConfig, TransportKind};
use crate::inspect::Inspector;
use crate::rotation::ServerRotation;
use anyhow::Context;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_core::dial::{DialError, DialTarget};
use tunneld_core::io::BoxIo;
use tunneld_core::proto::{Hello, TunnelKind, TunnelStatus};
use tunneld_core::proxy_protocol;
use tunneld_core::session::{ClientSession, LocalConnector, LocalError, SessionNews, StreamHeader};
use tunneld_core::tls::{client_config, ClientTrust};
use tunneld_transport_yamux::{dial, DialOptions};

/// What tunnelc reports while it runs.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Connected {
        /// The tunneld address this session runs to (`server` or one of `servers`).
        server: String,
        client_id: String,
        tunnels: Vec<TunnelStatus>,
    },
    TunnelsChanged {
        tunnels: Vec<TunnelStatus>,
    },
    /// `transport: connect`: the first connection for this rendezvous id is parked.
    Parked {
        id: String,
    },
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// A reload (SIGHUP) ended: `reloaded: ...` or `reload failed: ...`, one line.
    Reloaded {
        line: String,
    },
}

/// A system CA bundle, used when neither `tls.ca` nor `tls.pin` is set.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How tunnelc trusts tunneld: a pin wins, then a CA file, else the system bundle.
pub fn trust_of(ca: Option<&PathBuf>, pin: Option<&String>) -> ClientTrust {
    match (pin, ca) {
        (Some(pin), _) => ClientTrust::Pin(pin.clone()),
        (None, Some(ca)) => ClientTrust::CaFile(ca.clone()),
        (None, None) => ClientTrust::CaFile(PathBuf::from(SYSTEM_BUNDLE)),
    }
}

/// The TLS client config and the name checked in tunneld's certificate.
pub(crate) fn tls_client(
    cfg: &ClientConfig,
    alpn: &[&[u8]],
) -> anyhow::Result<(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
)> {
    let trust = trust_of(cfg.tls.ca.as_ref(), cfg.tls.pin.as_ref());
    let cert = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let tls = client_config(&trust, cert, alpn).context("tls")?;
    let name = cfg.server_name();
    let server_name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
        anyhow::anyhow!("server_name: `{name}` is not a DNS name or IP address: {e}")
    })?;
    Ok((Arc::new(tls), server_name))
}

fn dial_target(cfg: &ClientConfig, alpn: &[u8]) -> anyhow::Result<DialTarget> {
    let (tls, server_name) = tls_client(cfg, &[alpn])?;
    Ok(DialTarget {
        server: cfg.server.clone(),
        server_name,
        tls,
        timeout: cfg.connect_timeout,
    })
}

/// The multiplexing transports tunnelc runs a session over.
enum Dialer {
    Yamux(DialOptions),
    H2(tunneld_transport_h2_reverse::DialOptions),
    Websocket(tunneld_transport_websocket::DialOptions),
}

impl Dialer {
    fn new(cfg: &ClientConfig) -> anyhow::Result<Self> {
        Ok(match cfg.transport {
            TransportKind::H2Reverse => Dialer::H2(tunneld_transport_h2_reverse::DialOptions {
                target: dial_target(cfg, tunneld_transport_h2_reverse::ALPN)?,
                max_streams: cfg.h2.max_streams,
            }),
            TransportKind::Websocket => {
                let url: tunneld_transport_websocket::client::ServerUrl = cfg
                    .server
                    .parse()
                    .map_err(|e| anyhow::anyhow!("server: {e}"))?;
                let tls = if url.tls {
                    Some(tls_client(cfg, &[b"http/1.1"])?)
                } else {
                    None
                };
                Dialer::Websocket(tunneld_transport_websocket::DialOptions {
                    url,
                    tls,
                    auth_key: cfg.auth_key.as_ref().map(|k| k.0.clone()),
                    max_message: cfg.max_message,
                    max_conversations: cfg.max_conversations,
                    timeout: cfg.connect_timeout,
                })
            }
            _ => Dialer::Yamux(DialOptions {
                target: dial_target(cfg, tunneld_transport_yamux::ALPN)?,
                tuning: cfg.yamux,
            }),
        })
    }

    async fn dial(&self, hello: &Hello) -> Result<Box<dyn ClientSession>, DialError> {
        Ok(match self {
            Dialer::Yamux(o) => Box::new(dial(o, hello).await?),
            Dialer::H2(o) => Box::new(tunneld_transport_h2_reverse::dial(o, hello).await?),
            Dialer::Websocket(o) => Box::new(tunneld_transport_websocket::dial(o, hello).await?),
        })
    }
}

/// When tunneld refused every tunnel this tunnelc asked for, the one line that says why:
/// retrying would get the same answer (a conflict with a live session, a quota, a bad
/// request), so tunnelc stops instead of looping.
fn all_refused(cfg: &ClientConfig, tunnels: &[TunnelStatus]) -> Option<String> {
    if cfg.tunnels.is_empty() || cfg.accept_server_mappings {
        return None;
    }
    let mut reasons = Vec::new();
    for name in cfg.tunnels.keys() {
        let status = tunnels.iter().find(|t| &t.name == name)?;
        if status.retrying {
            // Refused for now only (its port is busy): tunneld claims it again by itself.
            return None;
        }
        reasons.push(format!("{name}: {}", status.error.as_deref()?));
    }
    Some(format!(
        "tunneld refused every tunnel: {}",
        reasons.join("; ")
    ))
}

/// Runs tunnelc until `stop` is cancelled, or until tunneld refuses it for good (an error).
pub async fn run(
    cfg: ClientConfig,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    run_inspected(cfg, None, events, stop).await
}

/// [`run`], with `inspector` recording the requests of the `http` tunnels.
pub async fn run_inspected(
    cfg: ClientConfig,
    inspector: Option<Arc<Inspector>>,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if cfg.transport == TransportKind::Connect {
        return crate::client_connect::run(cfg, events, stop).await;
    }
    // One dialer per tunneld address (each checks its own host's name by default), tried
    // round robin; one hello, so the instance id stays the same on every server.
    let dialers = cfg
        .server_list()
        .into_iter()
        .map(|s| Ok((Dialer::new(&cfg.for_server(&s))?, s)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut hello = crate::hello::hello(&cfg, crate::hello::new_instance());
    let connector: Arc<dyn LocalConnector> = Arc::new(Connector {
        tunnels: cfg
            .tunnels
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    LocalTarget {
                        addr: t.local.clone(),
                        proxy: t.proxy_protocol,
                        host_header: t.host_header.clone(),
                        reuse: t.reuse_connections,
                        http: t.kind == TunnelKind::Http,
                    },
                )
            })
            .collect(),
        accept_server_mappings: cfg.accept_server_mappings,
        timeout: cfg.connect_timeout,
        inspector,
    });
    let mut rotation = ServerRotation::new(dialers.len(), cfg.reconnect.initial, cfg.reconnect.max);
    loop {
        let (dialer, server) = &dialers[rotation.current()];
        tracing::debug!(server = %server, "connecting");
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = dialer.dial(&hello) => r,
        };
        let (reason, (next, wait)) = match attempt {
            Ok(connected) => {
                let started = Instant::now();
                let (client_id, tunnels) = connected.welcome();
                tracing::info!(server = %server, client_id = %client_id, "connected");
                if let Some(why) = all_refused(&cfg, &tunnels) {
                    return Err(anyhow::anyhow!("{why}"));
                }
                keep_names(&mut hello, &tunnels);
                drop_conflicts(&mut hello, &tunnels);
                let _ = events.send(ClientEvent::Connected {
                    server: server.clone(),
                    client_id,
                    tunnels,
                });
                match serve_session(connected, &connector, &cfg, &events, &stop).await {
                    SessionEnd::Stopped => return Ok(()),
                    SessionEnd::Refused(why) => return Err(anyhow::anyhow!("{why}")),
                    SessionEnd::HandedOver(why) => {
                        let next = rotation.handed_over();
                        tracing::info!(server = %server, next = %dialers[next].1, "{why}: connecting to {} now; the old session finishes its open streams", dialers[next].1);
                        continue;
                    }
                    // A session that lasted waits about `reconnect.initial`, on the next server.
                    SessionEnd::Ended(reason) => {
                        (reason, rotation.after_session(started.elapsed()))
                    }
                }
            }
            Err(e) if e.is_permanent() => return Err(anyhow::anyhow!("{e}")),
            Err(e) => (e.to_string(), rotation.next_after_failure()),
        };
        let secs = wait.as_secs_f64();
        match &dialers[next].1 {
            next if next == server => {
                tracing::warn!(server = %server, "disconnected: {reason}; retrying in {secs:.1} s")
            }
            next => {
                tracing::warn!(server = %server, next = %next, "disconnected: {reason}; trying {next} in {secs:.1} s")
            }
        }
        let _ = events.send(ClientEvent::Disconnected {
            reason,
            retry_in: wait,
        });
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How a session ended.
enum SessionEnd {
    /// tunnelc is stopping.
    Stopped,
    /// tunneld refused every tunnel for good.
    Refused(String),
    /// tunneld's node is leaving: the session keeps running in the background until that
    /// node closes it, and tunnelc opens a new one elsewhere now.
    HandedOver(String),
    /// The connection ended (why).
    Ended(String),
}

/// Runs one welcomed session: forwards its news as events, and ends it when tunnelc stops,
/// the session ends, every tunnel is refused for good, or tunneld hands it over.
async fn serve_session(
    connected: Box<dyn ClientSession>,
    connector: &Arc<dyn LocalConnector>,
    cfg: &ClientConfig,
    events: &mpsc::UnboundedSender<ClientEvent>,
    stop: &CancellationToken,
) -> SessionEnd {
    let (utx, mut urx) = mpsc::unbounded_channel::<SessionNews>();
    let (handover_tx, handover) = tokio::sync::oneshot::channel::<String>();
    // A tunnel tunneld was retrying may end refused for good: when then every tunnel is
    // refused, stop as at the welcome.
    let session_stop = stop.child_token();
    let refused = Arc::new(std::sync::Mutex::new(None::<String>));
    let (ended, cfg_fwd, why, ev) = (
        session_stop.clone(),
        cfg.clone(),
        refused.clone(),
        events.clone(),
    );
    let fwd = tokio::spawn(async move {
        let mut handover_tx = Some(handover_tx);
        while let Some(news) = urx.recv().await {
            let tunnels = match news {
                SessionNews::Tunnels(t) => t,
                SessionNews::Handover(reason) => {
                    if let Some(tx) = handover_tx.take() {
                        let _ = tx.send(reason);
                    }
                    continue;
                }
            };
            let all = all_refused(&cfg_fwd, &tunnels);
            let _ = ev.send(ClientEvent::TunnelsChanged { tunnels });
            if let Some(all) = all {
                *tunneld_core::sync::lock(&why) = Some(all);
                ended.cancel();
                return;
            }
        }
    });
    let mut run = tokio::spawn(connected.run(connector.clone(), utx, session_stop));
    let end = tokio::select! {
        r = &mut run => SessionEnd::Ended(r.unwrap_or_else(|e| format!("session task failed: {e}"))),
        Ok(why) = handover => {
            // `run` goes on by itself (stopped with tunnelc); its news are no longer read.
            SessionEnd::HandedOver(format!("tunneld hands this session over ({why})"))
        }
    };
    fwd.abort();
    if stop.is_cancelled() {
        return SessionEnd::Stopped;
    }
    if let Some(why) = tunneld_core::sync::lock(&refused).take() {
        return SessionEnd::Refused(why);
    }
    end
}

/// Stops asking for tunnels another live session of this client holds: after a reconnect
/// (a tunneld restart, say) asking again would race the holder and could take its port or
/// name from it. Restart tunnelc to ask again.
fn drop_conflicts(hello: &mut Hello, tunnels: &[TunnelStatus]) {
    hello.tunnels.retain(|t| {
        let held = tunnels.iter().find(|s| s.name == t.name).and_then(|s| {
            s.error
                .as_deref()
                .filter(|e| e.contains("held by another session"))
        });
        if let Some(e) = held {
            tracing::warn!(tunnel = %t.name, "not asked for again until tunnelc restarts: {e}");
        }
        held.is_none()
    });
}

/// Asks for the names tunneld picked again after a reconnect, so a random subdomain stays.
fn keep_names(hello: &mut Hello, tunnels: &[TunnelStatus]) {
    for t in hello.tunnels.iter_mut().filter(|t| t.subdomain.is_none()) {
        if let Some(s) = tunnels.iter().find(|s| s.name == t.name) {
            t.subdomain = s.subdomain.clone();
        }
    }
}

/// Where one tunnel's streams go.
#[derive(Clone)]
struct LocalTarget {
    addr: String,
    proxy: Option<proxy_protocol::Version>,
    /// Rewrite each request's `Host` to this.
    host_header: Option<String>,
    /// Whether HTTP requests may share kept-alive connections (`reuse_connections`).
    reuse: bool,
    /// A `type: http` tunnel: its connections are inspected when the inspector runs.
    http: bool,
}

/// Connects tunneld's streams to local services.
struct Connector {
    tunnels: BTreeMap<String, LocalTarget>,
    accept_server_mappings: bool,
    timeout: Duration,
    inspector: Option<Arc<Inspector>>,
}

impl Connector {
    /// Whether the inspector records this stream's connection (its own `http` tunnel).
    fn inspected(&self, h: &StreamHeader) -> bool {
        self.inspector.is_some()
            && h.target.is_none()
            && self.tunnels.get(&h.tunnel).is_some_and(|t| t.http)
    }

    /// Where a stream goes: (local address, PROXY version, Host to write).
    fn resolve(
        &self,
        h: &StreamHeader,
    ) -> Result<(String, Option<proxy_protocol::Version>, Option<String>), LocalError> {
        Ok(match &h.target {
            // A service name (no port): the local address of this tunnelc's tunnel of that
            // name, as threshold's service map did.
            Some(t) if self.accept_server_mappings && !t.contains(':') => {
                let local = self
                    .tunnels
                    .get(t)
                    .cloned()
                    .ok_or_else(|| LocalError::NoService(t.clone()))?;
                (local.addr, h.proxy_protocol, None)
            }
            Some(t) if self.accept_server_mappings => (t.clone(), h.proxy_protocol, None),
            Some(_) => return Err(LocalError::TargetsRefused),
            None => {
                let local = self
                    .tunnels
                    .get(&h.tunnel)
                    .cloned()
                    .ok_or_else(|| LocalError::NoTunnel(h.tunnel.clone()))?;
                (local.addr, local.proxy, local.host_header)
            }
        })
    }
}

#[async_trait]
impl LocalConnector for Connector {
    fn pool_key(&self, h: &StreamHeader) -> Option<String> {
        // The tunnel whose local service the stream reaches: its own, or the one a
        // service-name mapping names; that tunnel's `reuse_connections` holds.
        let service = match &h.target {
            None => Some(&h.tunnel),
            Some(t) if !t.contains(':') => Some(t),
            Some(_) => None,
        };
        if service.is_some_and(|t| !self.tunnels.get(t).is_some_and(|t| t.reuse)) {
            return None;
        }
        let (target, proxy, host_header) = self.resolve(h).ok()?;
        // A PROXY header names one visitor: such connections are never shared.
        if proxy.is_some() {
            return None;
        }
        let host = host_header.unwrap_or_default();
        // An inspected connection records under its tunnel's name: shared by that tunnel only.
        Some(match self.inspected(h) {
            true => format!("{target} {host} inspected:{}", h.tunnel),
            false => format!("{target} {host}"),
        })
    }

    async fn connect(&self, h: &StreamHeader) -> Result<BoxIo, LocalError> {
        let (target, proxy, host_header) = self.resolve(h)?;
        let inspected = self.inspected(h);
        let mut s = match tokio::time::timeout(self.timeout, TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => return Err(LocalError::Connect { target, error }),
            Err(_) => return Err(LocalError::Timeout(target)),
        };
        let _ = s.set_nodelay(true);
        let proxy_header = proxy.map(|v| proxy_protocol::encode(v, h.visitor, h.public));
        if let Some(header) = &proxy_header {
            s.write_all(header)
                .await
                .map_err(|error| LocalError::Proxy {
                    target: target.clone(),
                    error,
                })?;
        }
        // The inspector sees what the service sees: inside the Host rewrite.
        let io: BoxIo = match &self.inspector {
            Some(i) if inspected => Box::new(i.tap(s, &h.tunnel, &target, proxy_header)),
            _ => Box::new(s),
        };
        Ok(match host_header {
            Some(host) => Box::new(crate::host_rewrite::HostRewrite::new(io, host)),
            None => io,
        })
    }
}
