//! Who holds which port, in core's claim table. A port is active (bound, a listener task
//! serving it) or reserved (released by a client tunnel; only the same client may take it back
//! until the grace period ends). Releasing is synchronous, in the claim guard's `Drop`, so a replacing session of the
//! same client always finds its ports free for it.

use crate::config::Config;
use crate::listener::{self, Listening};
use crate::metrics::PortsMetrics;
use async_trait::async_trait;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunneld_core::claim_table::{check_quota, ClaimTable, Refusal, ReleaseGuard, Releases, Status};
use tunneld_core::frontend::{
    Ask, Claim, ClaimError, ClaimRequest, Frontend, FrontendContext, RouteInfo,
};
use tunneld_core::proto::TunnelKind;

/// A port's listener: being bound, or bound and served; after release, still winding down
/// until `task` finishes.
struct PortData {
    tunnel: String,
    bind: IpAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PortData {
    fn task_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

/// Ports with their owners; one holder (the claim) per active port.
type Table = ClaimTable<u16, PortData, ()>;

/// A port marked active for a claim that is about to bind it.
struct Slot {
    port: u16,
    gen: u64,
    bind: IpAddr,
    /// The previous listener of this port, still closing.
    old_task: Option<JoinHandle<()>>,
    /// Further free ports to try when an assigned port turns out to be taken.
    candidates: Vec<u16>,
}

pub struct PortsFrontend {
    name: String,
    cfg: Config,
    cx: FrontendContext,
    /// This frontend's own series.
    own: Arc<PortsMetrics>,
    table: Mutex<Table>,
    me: Weak<PortsFrontend>,
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    tunneld_core::sync::lock(t)
}

impl PortsFrontend {
    /// Its series register on the context's metrics.
    pub fn new(
        name: &str,
        cfg: Config,
        cx: FrontendContext,
    ) -> Result<Arc<Self>, tunneld_core::metrics::MetricsError> {
        let own = cx.metrics.plugin::<PortsMetrics>()?;
        Ok(Arc::new_cyclic(|me| Self {
            name: name.to_string(),
            cfg,
            cx,
            own,
            table: Mutex::new(Table::default()),
            me: me.clone(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Picks the port for a request and marks it active, under the lock. Returns the port, the
    /// generation, the bind address and an old listener task to wait for.
    fn reserve_slot(&self, req: &ClaimRequest) -> Result<Slot, ClaimError> {
        let mut t = lock(&self.table);
        let now = Instant::now();
        // Expired reservations whose listener has closed are forgotten; the others stay
        // until a claim takes the port over and waits for their task.
        t.retain(|_, e| e.status(now) != Status::Expired || !e.data.task_finished());
        let active_of_owner = t
            .owned(&req.owner, now)
            .filter(|(_, e)| e.is_active())
            .count();
        check_quota(active_of_owner, req.quota.ports, "max_ports", "ports")?;
        let bind = req.ask.bind().unwrap_or(self.cfg.bind);
        let mut candidates = Vec::new();
        let port = match req.ask.port() {
            Some(p) => {
                if !self.cfg.range.contains(p) {
                    return Err(ClaimError::OutOfRange {
                        port: p,
                        range: self.cfg.range.to_string(),
                        frontend: self.name.clone(),
                    });
                }
                match t.check(&p, &req.owner, now) {
                    Err(Refusal::OtherOwner) => return Err(ClaimError::HeldByOther(p)),
                    Err(Refusal::Active) => {
                        return Err(ClaimError::HeldBySession {
                            port: Some(p),
                            name: None,
                        })
                    }
                    Ok(()) => p,
                }
            }
            None => {
                let reserved = t.iter().find(|(_, e)| {
                    e.owner == req.owner
                        && e.data.tunnel == req.tunnel
                        && e.status(now) == Status::Reserved
                });
                match reserved {
                    Some((p, _)) => *p,
                    None => {
                        // Free ports, starting at a varying offset so ports are not all reused
                        // in the same order; the caller binds the first that works.
                        let len = self.cfg.range.len();
                        let start = (t.generation() as usize).wrapping_mul(7919) % len;
                        candidates = (0..len)
                            .map(|i| self.cfg.range.first + ((start + i) % len) as u16)
                            .filter(|p| t.get(p).is_none_or(|e| e.status(now) == Status::Expired))
                            .take(64)
                            .collect();
                        match candidates.first() {
                            Some(p) => *p,
                            None => return Err(ClaimError::Exhausted(self.cfg.range.to_string())),
                        }
                    }
                }
            }
        };
        let mut old_task = None;
        let gen = t.join(port, &req.owner, (), |old| {
            old_task = old.and_then(|d| d.task);
            PortData {
                tunnel: req.tunnel.clone(),
                bind,
                cancel: CancellationToken::new(),
                task: None,
            }
        });
        Ok(Slot {
            port,
            gen,
            bind,
            old_task,
            candidates,
        })
    }

    fn forget(&self, port: u16, gen: u64) {
        lock(&self.table).forget(&port, gen);
    }

    async fn bind_claimed(
        self: &Arc<Self>,
        req: &ClaimRequest,
    ) -> Result<(u16, u64, tokio::net::TcpListener), ClaimError> {
        let Slot {
            port,
            gen,
            bind,
            old_task,
            candidates,
        } = self.reserve_slot(req)?;
        if let Some(task) = old_task {
            let _ = task.await;
        }
        match bind_retrying(
            SocketAddr::new(bind, port),
            req.ask.port().is_some() || candidates.is_empty(),
        )
        .await
        {
            Ok(l) => return Ok((port, gen, l)),
            Err(e) if req.ask.port().is_some() || candidates.is_empty() => {
                self.forget(port, gen);
                let reason = e.to_string();
                return Err(match e.kind() {
                    std::io::ErrorKind::AddrInUse => ClaimError::Busy { port, reason },
                    _ => ClaimError::Unavailable { port, reason },
                });
            }
            Err(_) => self.forget(port, gen),
        }
        // An assigned port was taken by another program: try the next free ones.
        for p in candidates.into_iter().skip(1) {
            let mut one = req.clone();
            one.ask = Ask::Port {
                port: p,
                bind: req.ask.bind(),
            };
            let Ok(Slot {
                port, gen, bind, ..
            }) = self.reserve_slot(&one)
            else {
                continue;
            };
            match listener::bind(SocketAddr::new(bind, port)) {
                Ok(l) => return Ok((port, gen, l)),
                Err(_) => self.forget(port, gen),
            }
        }
        Err(ClaimError::Exhausted(self.cfg.range.to_string()))
    }
}

/// Binds `addr`; with `wait`, a port in use is tried again for about three seconds (the old
/// listener of a reclaimed port, or a program that let go of it, may free it a moment later)
/// before the claim is refused.
async fn bind_retrying(addr: SocketAddr, wait: bool) -> std::io::Result<tokio::net::TcpListener> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut tries = if wait { 7 } else { 1 };
    loop {
        match listener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if tries > 1 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries -= 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl Frontend for PortsFrontend {
    fn kind(&self) -> &'static str {
        "ports"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn serves(&self, kind: TunnelKind) -> bool {
        kind == TunnelKind::Tcp
    }

    fn default_bind(&self) -> Option<std::net::IpAddr> {
        Some(self.cfg.bind)
    }

    async fn serve(self: Arc<Self>, cx: FrontendContext) {
        cx.shutdown.cancelled().await;
    }

    async fn claim(self: Arc<Self>, req: ClaimRequest) -> Result<Claim, ClaimError> {
        let (port, gen, tcp) = self.bind_claimed(&req).await?;
        let local = tcp.local_addr().map_err(|e| ClaimError::Unavailable {
            port,
            reason: e.to_string(),
        })?;
        let cancel = self.cx.shutdown.child_token();
        let serving = Listening {
            frontend: self.name.clone(),
            tunnel: req.tunnel.clone(),
            proxy_protocol: req.proxy_protocol,
            target: req.target.clone(),
            open_timeout: self.cfg.open_timeout,
            max_conns: self.cfg.max_connections_per_port,
            cx: self.cx.clone(),
        };
        {
            let mut t = lock(&self.table);
            match t.get_mut(&port).filter(|e| e.is_held_by(gen)) {
                Some(e) => {
                    let task = tokio::spawn(listener::run(tcp, serving, cancel.clone()));
                    e.data.cancel = cancel;
                    e.data.task = Some(task);
                }
                // Released while binding (the session ended meanwhile).
                _ => {
                    return Err(ClaimError::Unavailable {
                        port,
                        reason: "released while binding".into(),
                    })
                }
            }
        }
        self.own
            .ports_allocated
            .with_label_values(&[&self.name])
            .inc();
        let host = self
            .cfg
            .public_host
            .clone()
            .unwrap_or_else(|| match local.ip() {
                IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        tracing::info!(frontend = %self.name, port, owner = %req.owner, tunnel = %req.tunnel, "port allocated");
        Ok(Claim {
            endpoint: format!("tcp://{host}:{port}"),
            port: Some(port),
            name: None,
            release: Box::new(ReleaseGuard::new(
                self.me.clone(),
                port,
                gen,
                req.reserve_on_release,
            )),
        })
    }

    fn routes(&self) -> Vec<RouteInfo> {
        let t = lock(&self.table);
        let now = Instant::now();
        let mut v: Vec<RouteInfo> = t
            .live(now)
            .map(|(port, e)| RouteInfo {
                frontend: self.name.clone(),
                owner: e.owner.clone(),
                tunnel: e.data.tunnel.clone(),
                endpoint: format!("tcp://{}", SocketAddr::new(e.data.bind, *port)),
                state: e.state(),
            })
            .collect();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        v
    }
}

/// A frontend that goes (a reload removed it) closes every port it still listens on: the
/// claims' guards can no longer reach it to release them.
impl Drop for PortsFrontend {
    fn drop(&mut self) {
        for (_, e) in lock(&self.table).iter() {
            e.data.cancel.cancel();
        }
    }
}

impl Releases<u16> for PortsFrontend {
    fn release(&self, port: &u16, gen: u64, reserve: bool) {
        let port = *port;
        let mut t = lock(&self.table);
        // An expired reservation, rather than no entry, keeps the old listener's task so the
        // next claim of this port waits for the socket to close before binding it again.
        let grace = if reserve {
            self.cfg.reclaim_grace
        } else {
            Duration::ZERO
        };
        if t.release(&port, gen, Some(grace), Instant::now()).is_none() {
            return;
        }
        let Some(entry) = t.get(&port) else {
            return;
        };
        entry.data.cancel.cancel();
        self.own
            .ports_allocated
            .with_label_values(&[&self.name])
            .dec();
        tracing::info!(frontend = %self.name, port, owner = %entry.owner, ?grace, "port released");
    }
}
