//! Cluster mode (`cluster:`): several tunneld nodes share one routing table in Redis, and a
//! visitor reaching any node is forwarded to the node whose session holds the tunnel.
//!
//! - A claim is made on the local frontend, then registered in Redis ([`store`]) as a route
//!   with a TTL that this node renews; a route another node holds is refused here (names and
//!   ports are unique in the cluster).
//! - Every node reads the table (at once on pub/sub, and every `sync_interval`) and *mirrors*
//!   the routes of other nodes on its own frontends: the same port or name, with a target
//!   that opens a stream over the link ([`link`]) to the holding node.
//! - A node that dies stops renewing; its routes expire after `lease_ttl`. Its tunnelc,
//!   reconnecting to another node, takes its routes over at once (same owner, same tunnelc
//!   instance, or a holder node that is gone).
//! - Redis unreachable: nodes keep routing from their last view (mirrors are only dropped
//!   after Redis has been answering for a whole TTL without the route), and renew everything
//!   when it is back.

pub mod api;
mod handover;
mod link;
mod link_tls;
mod link_wire;
pub mod metrics;
mod mirror;
mod parking;
pub mod presence;
mod routes;
pub mod store;

use crate::config::cluster::{redact, ClusterConfig};
use anyhow::Context;
use metrics::ClusterMetrics;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;
use store::{NodeEntry, RouteEntry, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tunneld_core::frontend::Claim;
use tunneld_core::hub::{Hub, Target};
use tunneld_core::metrics::Metrics;
use tunneld_core::session::OpenError;
use tunneld_frontend_rendezvous::registry::Registry;

/// The table as this node last read it.
#[derive(Default)]
pub struct View {
    pub nodes: BTreeMap<String, NodeEntry>,
    pub routes: BTreeMap<String, RouteEntry>,
    /// When it was read (Unix ms); 0 before the first read.
    pub read_at: u64,
}

/// A route this node's session holds.
struct LocalRoute {
    entry: RouteEntry,
    target: Arc<dyn Target>,
    closed: CancellationToken,
}

/// A route of another node, claimed on a local frontend.
struct Mirror {
    entry: RouteEntry,
    /// The frontend it is claimed on (a reload may rebuild it: then the mirror is redone).
    frontend: Arc<dyn tunneld_core::frontend::Frontend>,
    _claim: Claim,
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    this: Weak<Cluster>,
    store: Store,
    hub: Weak<Hub>,
    /// Rendezvous parking: this node's parked connections, offered to the others.
    registry: Arc<Registry>,
    metrics: Arc<ClusterMetrics>,
    links: link::Links,
    view: RwLock<Arc<View>>,
    local: Mutex<HashMap<String, LocalRoute>>,
    /// Routes this leaving node's sessions held until their tunnelc took them over
    /// elsewhere: streams still arriving over a link for them go to the old session.
    handed: Mutex<HashMap<String, LocalRoute>>,
    /// Set when the node drains ([`Cluster::hand_over`]).
    leaving: std::sync::atomic::AtomicBool,
    mirrors: Mutex<HashMap<String, Mirror>>,
    /// Routes claimed here whoever serves them (provisioned tunnels' leases), with how many
    /// holds: never mirrored here.
    held_here: Mutex<HashMap<String, usize>>,
    /// Presence routes this node holds ([`presence`]).
    presence: Mutex<presence::Held>,
    /// Since when Redis has answered without a failure (none: it is failing), or since it
    /// was found emptied.
    redis_up_since: Mutex<Option<Instant>>,
    /// The table's epoch as last read.
    epoch: Mutex<Option<String>>,
    /// Routes a frontend refused to mirror, logged once each.
    refused: Mutex<std::collections::HashSet<String>>,
    resync: Notify,
    started: u64,
    /// Where the link listener is bound.
    pub link_addr: SocketAddr,
}

/// Joins the cluster: binds the link, installs the routing table in the hub, and starts
/// renewing, reading and mirroring. Runs until `stop`.
pub async fn start(
    cfg: ClusterConfig,
    hub: &Arc<Hub>,
    parking: &Arc<Registry>,
    (registry, visitors): (&Metrics, tokio_util::task::TaskTracker),
    stop: CancellationToken,
) -> anyhow::Result<Arc<Cluster>> {
    let metrics = registry
        .plugin::<ClusterMetrics>()
        .context("metrics registry")?;
    let tls = link_tls::LinkTls::new(&cfg.ca, &cfg.node)?;
    let store = Store::new(&cfg.redis, &cfg.prefix)
        .with_context(|| format!("cluster.redis: {}", redact(&cfg.redis)))?;
    let listener = tokio::net::TcpListener::bind(cfg.link)
        .await
        .with_context(|| format!("cluster.link: cannot listen on {}", cfg.link))?;
    let link_addr = listener.local_addr()?;
    let mut cfg = cfg;
    if cfg.advertise.is_none() {
        cfg.advertise = Some(link_addr);
    }
    // Another live node under this name (not this one restarted) would fight over routes.
    match store.snapshot().await {
        Ok(s) => match s.nodes.get(&cfg.node) {
            Some(n) if n.link != cfg.advertised() => anyhow::bail!(
                "cluster.node: node `{}` is already live in the cluster (its link is {}); each node needs its own name",
                cfg.node,
                n.link
            ),
            _ => {}
        },
        Err(e) => tracing::warn!(redis = %redact(&cfg.redis), error = %e, "cluster: Redis cannot be reached yet; routes are registered once it answers"),
    }
    let cluster = Arc::new_cyclic(|this| Cluster {
        this: this.clone(),
        store,
        hub: Arc::downgrade(hub),
        registry: parking.clone(),
        links: link::Links::new(tls.client.clone(), metrics.clone(), stop.clone()),
        metrics: metrics.clone(),
        view: RwLock::default(),
        local: Mutex::default(),
        handed: Mutex::default(),
        leaving: Default::default(),
        mirrors: Mutex::default(),
        held_here: Mutex::default(),
        presence: Mutex::default(),
        redis_up_since: Mutex::new(None),
        epoch: Mutex::new(None),
        refused: Mutex::default(),
        resync: Notify::new(),
        started: store::now_ms(),
        link_addr,
        cfg,
    });
    if !hub.set_cluster(cluster.clone()) || !parking.set_remote(cluster.clone()) {
        anyhow::bail!("cluster: a routing table was installed already");
    }
    tokio::spawn(link::serve(
        listener,
        tls.server,
        cluster.clone(),
        (metrics, visitors),
        stop.clone(),
    ));
    cluster.announce().await;
    tokio::spawn(cluster.clone().announce_loop(stop.clone()));
    tokio::spawn(cluster.clone().renew_loop(stop.clone()));
    tokio::spawn(cluster.clone().sync_loop(stop.clone()));
    tokio::spawn(cluster.clone().listen_loop(stop));
    tracing::info!(node = %cluster.cfg.node, link = %link_addr, redis = %redact(&cluster.cfg.redis), "joined the cluster");
    Ok(cluster)
}

#[async_trait::async_trait]
impl link::LocalRoutes for Cluster {
    async fn open(&self, req: link_wire::LinkRequest) -> Result<tunneld_core::BoxIo, OpenError> {
        if let Some(id) = req.route.strip_prefix("park:") {
            return self.take_parked_here(id).await;
        }
        let (target, header) = self.http_target(&req)?;
        target.open(header, req.server_name.as_deref()).await
    }

    fn http_target(
        &self,
        req: &link_wire::LinkRequest,
    ) -> Result<(Arc<dyn Target>, tunneld_core::session::StreamHeader), OpenError> {
        let held = |m: &Mutex<HashMap<String, LocalRoute>>| {
            tunneld_core::sync::lock(m)
                .get(&req.route)
                .map(|r| (r.target.clone(), r.entry.clone()))
        };
        let (target, entry) = held(&self.local)
            .or_else(|| held(&self.handed))
            .ok_or(OpenError::Offline)?;
        let mut header = req
            .header
            .clone()
            .ok_or_else(|| OpenError::Session("a route stream without a header".into()))?;
        // The route as this node holds it now, whatever the asking node's mirror says; a
        // presence route carries the asking node's route (an admin mapping's) as it is.
        if entry.frontend != presence::PRESENCE {
            header.tunnel = entry.tunnel;
            header.proxy_protocol = entry.proxy_protocol;
        }
        Ok((target, header))
    }
}

impl Cluster {
    /// The table as last read.
    pub fn view(&self) -> Arc<View> {
        tunneld_core::sync::read(&self.view).clone()
    }

    fn redis_result<T>(&self, op: &str, r: &Result<T, store::StoreError>) {
        self.metrics.redis(op, r);
        let mut up = tunneld_core::sync::lock(&self.redis_up_since);
        match r {
            Ok(_) => {
                up.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                if up.is_some() {
                    tracing::warn!(op, error = %e, "cluster: Redis call failed; routing from the last view");
                }
                *up = None;
            }
        }
    }

    /// Announces this node (its entry lives for one TTL).
    async fn announce(&self) {
        let hub = self.hub.upgrade();
        let entry = NodeEntry {
            node: self.cfg.node.clone(),
            link: self.cfg.advertised(),
            sessions: hub.as_ref().map(|h| h.sessions().len()).unwrap_or(0),
            routes: tunneld_core::sync::lock(&self.local).len(),
            parked: self.registry.parked_ids(),
            started: self.started,
            updated: store::now_ms(),
        };
        let r = self.store.announce(&entry, self.cfg.lease_ttl).await;
        self.redis_result("announce", &r);
    }

    /// Every `sync_interval` (at most a third of the TTL): announces the node, with its load
    /// and parked rendezvous ids.
    async fn announce_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.cfg.sync_interval.min(self.cfg.lease_ttl / 3);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            self.announce().await;
        }
    }

    /// Every third of the TTL: renews this node's routes; a route someone else holds now
    /// ends its session.
    async fn renew_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.cfg.lease_ttl / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let held: Vec<(String, RouteEntry)> = tunneld_core::sync::lock(&self.local)
                .iter()
                .map(|(k, r)| (k.clone(), r.entry.clone()))
                .collect();
            for chunk in held.chunks(64) {
                let renewals = chunk
                    .iter()
                    .map(|(_, e)| self.store.renew(e, self.cfg.lease_ttl));
                let results = futures::future::join_all(renewals).await;
                for ((key, entry), r) in chunk.iter().zip(results) {
                    self.redis_result("renew", &r);
                    if let Ok(false) = r {
                        self.lost(key, entry);
                    }
                }
            }
        }
    }

    /// Another node holds `key` now: the local session that held it ends (its tunnelc
    /// reconnects and is told where things stand).
    fn lost(&self, key: &str, entry: &RouteEntry) {
        let gone = {
            let mut local = tunneld_core::sync::lock(&self.local);
            match local.get(key) {
                Some(r) if r.entry == *entry => local.remove(key),
                _ => None,
            }
        };
        if let Some(r) = gone {
            if self.is_leaving() {
                // Its tunnelc took it over elsewhere, as this node asked: the old session
                // keeps carrying its open streams until the drain ends.
                tracing::info!(route = %key, client = %entry.owner, "cluster: route handed over");
                tunneld_core::sync::lock(&self.handed).insert(key.to_string(), r);
                return;
            }
            self.metrics
                .cluster_routes_lost_total
                .with_label_values::<&str>(&[])
                .inc();
            tracing::warn!(route = %key, client = %entry.owner, session = entry.session, "cluster: another node holds this route now; ending the session that held it here");
            r.closed.cancel();
        }
    }

    /// Reads the table every `sync_interval`, or at once when told, and mirrors it.
    async fn sync_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.check_epoch().await;
            let r = self.store.snapshot().await;
            self.redis_result("snapshot", &r);
            if let Ok(s) = r {
                *tunneld_core::sync::write(&self.view) = Arc::new(View {
                    nodes: s.nodes,
                    routes: s.routes,
                    read_at: store::now_ms(),
                });
                // A leaving node mirrors nothing new: its frontends take no visitors.
                if !self.is_leaving() {
                    self.reconcile().await;
                    self.sync_presence().await;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.sync_interval) => {}
                _ = self.resync.notified() => {}
            }
        }
    }

    /// Notices a Redis that was emptied (restarted without persistence): the routes of every
    /// node come back within a renewal, so mirrors are kept for a whole TTL from now.
    async fn check_epoch(&self) {
        let r = self.store.epoch().await;
        self.redis_result("epoch", &r);
        let Ok(now) = r else { return };
        let before = tunneld_core::sync::lock(&self.epoch).replace(now.clone());
        if before.is_some_and(|b| b != now) {
            tracing::warn!("cluster: Redis was emptied (restarted?); routes are written again, mirrors kept meanwhile");
            *tunneld_core::sync::lock(&self.redis_up_since) = Some(Instant::now());
        }
    }

    /// Follows the events channel: each message reads the table again.
    async fn listen_loop(self: Arc<Self>, stop: CancellationToken) {
        use futures::StreamExt;
        loop {
            let subscribed = async {
                let mut ps = tokio::time::timeout(
                    store::CALL_TIMEOUT,
                    self.store.client().get_async_pubsub(),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
                ps.subscribe(self.store.channel())
                    .await
                    .map_err(|e| e.to_string())?;
                self.resync.notify_one();
                let mut messages = ps.on_message();
                while messages.next().await.is_some() {
                    self.resync.notify_one();
                }
                Err::<(), String>("subscription ended".into())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                Err(e) = subscribed => tracing::debug!(error = %e, "cluster: events channel lost; subscribing again"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Leaves the cluster (after the drain): this node's routes stay reserved for their
    /// owners (their tunnelc take them over at once on another node), and its entry goes.
    pub async fn leave(&self) {
        let held: Vec<RouteEntry> = tunneld_core::sync::lock(&self.local)
            .drain()
            .map(|(_, r)| r.entry)
            .collect();
        for e in &held {
            let released = RouteEntry {
                session: 0,
                ..e.clone()
            };
            let r = self.store.release(e, Some(&released)).await;
            self.redis_result("release", &r);
        }
        let r = self.store.leave(&self.cfg.node).await;
        self.redis_result("leave", &r);
        tracing::info!(node = %self.cfg.node, routes = held.len(), "left the cluster");
    }
}
