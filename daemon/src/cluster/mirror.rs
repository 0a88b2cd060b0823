//! Mirrors: the routes other nodes hold, claimed on this node's frontends with a target that
//! crosses the link, so a visitor at any node reaches the tunnel.

use super::link_wire::{LinkReply, LinkRequest, HTTP_ERROR_HEADER};
use super::{Cluster, Mirror};
use async_trait::async_trait;
use std::sync::{Arc, Weak};
use tunneld_core::frontend::{Ask, ClaimRequest, Quota};
use tunneld_core::http_forward::Body;
use tunneld_core::hub::Target;
use tunneld_core::session::{OpenError, StreamHeader};
use tunneld_core::BoxIo;

/// Mirrors claimed at once by one reconcile.
const MIRRORS_AT_ONCE: usize = 16;

impl Cluster {
    /// Brings the mirrors in line with the view: drops those of routes that went (only once
    /// Redis has answered for a whole TTL: a restarted Redis is not an empty table), and
    /// claims the new ones.
    pub(super) async fn reconcile(&self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let view = self.view();
        let settled = tunneld_core::sync::lock(&self.redis_up_since)
            .is_some_and(|t| t.elapsed() >= self.cfg.lease_ttl);
        let dropped: Vec<Mirror> = {
            let mut mirrors = tunneld_core::sync::lock(&self.mirrors);
            let gone: Vec<String> = mirrors
                .iter()
                .filter(|(key, m)| {
                    let rebuilt = hub
                        .frontend(&m.entry.frontend)
                        .is_none_or(|f| !same(&f, &m.frontend));
                    rebuilt
                        || match view.routes.get(*key) {
                            Some(e) => {
                                e.node == self.cfg.node
                                    || e.owner != m.entry.owner
                                    || e.kind != m.entry.kind
                                    || e.tunnel != m.entry.tunnel
                                    || e.proxy_protocol != m.entry.proxy_protocol
                            }
                            None => settled,
                        }
                })
                .map(|(k, _)| k.clone())
                .collect();
            gone.iter().filter_map(|k| mirrors.remove(k)).collect()
        };
        // Released outside the lock (a port's listener closes on drop).
        drop(dropped);
        let wanted: Vec<(String, super::store::RouteEntry)> = {
            let mirrors = tunneld_core::sync::lock(&self.mirrors);
            let local = tunneld_core::sync::lock(&self.local);
            let held = tunneld_core::sync::lock(&self.held_here);
            view.routes
                .iter()
                .filter(|(k, e)| {
                    e.node != self.cfg.node
                        && e.frontend != super::presence::PRESENCE
                        && !mirrors.contains_key(*k)
                        && !local.contains_key(*k)
                        && !held.contains_key(*k)
                })
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        // Several at once: a port that takes its time to bind does not hold up the others.
        use futures::StreamExt;
        futures::stream::iter(wanted)
            .for_each_concurrent(MIRRORS_AT_ONCE, |(key, e)| self.mirror(&hub, key, e))
            .await;
        // Refusals of routes that went are forgotten.
        tunneld_core::sync::lock(&self.refused).retain(|k| view.routes.contains_key(k));
        self.set_gauges(&view);
    }

    /// Claims route `key` of another node on the local frontend, as a mirror.
    async fn mirror(&self, hub: &tunneld_core::hub::Hub, key: String, e: super::store::RouteEntry) {
        let Some(frontend) = hub.frontend(&e.frontend).filter(|f| f.serves(e.kind)) else {
            return;
        };
        let ask = match (e.port(), e.name()) {
            (Some(port), _) => Ask::Port { port, bind: None },
            (_, Some(n)) => Ask::Name(n.to_string()),
            _ => return,
        };
        let req = ClaimRequest {
            owner: e.owner.clone(),
            tunnel: e.tunnel.clone(),
            kind: e.kind,
            ask,
            proxy_protocol: e.proxy_protocol,
            quota: Quota::default(),
            target: Arc::new(RemoteTarget::new(self.this.clone(), key.clone())),
            reserve_on_release: false,
        };
        match frontend.clone().claim(req).await {
            Ok(claim) => {
                tunneld_core::sync::lock(&self.refused).remove(&key);
                tunneld_core::sync::lock(&self.mirrors).insert(
                    key,
                    Mirror {
                        entry: e,
                        frontend,
                        _claim: claim,
                    },
                );
            }
            Err(err) => {
                self.metrics
                    .cluster_mirror_refusals_total
                    .with_label_values(&[&e.frontend])
                    .inc();
                if tunneld_core::sync::lock(&self.refused).insert(key.clone()) {
                    tracing::warn!(route = %key, node = %e.node, error = %err, "cluster: cannot mirror another node's route here");
                }
            }
        }
    }

    fn set_gauges(&self, view: &super::View) {
        let (local, remote) = (
            tunneld_core::sync::lock(&self.local).len(),
            tunneld_core::sync::lock(&self.mirrors).len(),
        );
        let g = &self.metrics.cluster_routes;
        g.with_label_values(&["local"])
            .set(i64::try_from(local).unwrap_or(i64::MAX));
        g.with_label_values(&["remote"])
            .set(i64::try_from(remote).unwrap_or(i64::MAX));
        let alive = view.nodes.len().max(1);
        self.metrics
            .cluster_nodes
            .with_label_values::<&str>(&[])
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
    }
}

/// Whether two handles are the same frontend (by address: a rebuilt one is a new value).
fn same(
    a: &Arc<dyn tunneld_core::frontend::Frontend>,
    b: &Arc<dyn tunneld_core::frontend::Frontend>,
) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

/// Where a mirror sends its visitors: the node the view says holds the route, over the link.
pub(super) struct RemoteTarget {
    cluster: Weak<Cluster>,
    route: String,
    /// Only a route of this owner (a lease's target); a mirror follows whoever holds it.
    owner: Option<String>,
}

impl RemoteTarget {
    pub(super) fn new(cluster: Weak<Cluster>, route: String) -> Self {
        Self {
            cluster,
            route,
            owner: None,
        }
    }

    pub(super) fn for_owner(self, owner: &str) -> Self {
        Self {
            owner: Some(owner.to_string()),
            ..self
        }
    }

    /// The holding node and its link address, when it is live.
    fn holder(&self, c: &Cluster) -> Option<(String, std::net::SocketAddr)> {
        let view = c.view();
        let e = view.routes.get(&self.route)?;
        if e.node == c.cfg.node || e.session == 0 {
            return None;
        }
        if self.owner.as_ref().is_some_and(|o| *o != e.owner) {
            return None;
        }
        let node = view.nodes.get(&e.node)?;
        Some((e.node.clone(), node.link))
    }
}

#[async_trait]
impl Target for RemoteTarget {
    async fn open(
        &self,
        header: StreamHeader,
        server_name: Option<&str>,
    ) -> Result<BoxIo, OpenError> {
        let c = self.cluster.upgrade().ok_or(OpenError::Offline)?;
        let (node, addr) = self.holder(&c).ok_or(OpenError::Offline)?;
        let req = LinkRequest {
            route: self.route.clone(),
            header: Some(header),
            server_name: server_name.map(str::to_string),
            http: false,
        };
        c.links.open(&node, addr, &req).await
    }

    /// One visitor request, forwarded by the holding node with its own target's `request`
    /// (HTTP mode: an HTTP-only session, as a 2ptth upstream, is reached this way too).
    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OpenError> {
        let c = self.cluster.upgrade().ok_or(OpenError::Offline)?;
        let (node, addr) = self.holder(&c).ok_or(OpenError::Offline)?;
        let link = LinkRequest {
            route: self.route.clone(),
            header: Some(header),
            server_name: None,
            http: true,
        };
        let io = c.links.open(&node, addr, &link).await?;
        let max_head = c
            .hub
            .upgrade()
            .map(|h| h.limits.get().max_response_head)
            .unwrap_or(tunneld_core::limits::DEFAULT_MAX_HEAD);
        let resp = tunneld_core::http_forward::http1_over(io, req, max_head).await?;
        match resp.headers().get(HTTP_ERROR_HEADER) {
            Some(v) => {
                let reply: LinkReply = serde_json::from_slice(v.as_bytes())
                    .map_err(|e| OpenError::Session(format!("node `{node}`: {e}")))?;
                reply.into_result()?;
                Err(OpenError::Session(format!(
                    "node `{node}`: a refusal without a reason"
                )))
            }
            None => Ok(resp),
        }
    }

    fn online(&self) -> bool {
        self.cluster
            .upgrade()
            .is_some_and(|c| self.holder(&c).is_some())
    }
}
