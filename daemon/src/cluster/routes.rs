//! The hub's side of the cluster ([`ClusterRoutes`]): before a claim, free a mirror this
//! session may take over; after it, register the route in the shared table.

use super::store::{now_ms, Claimed, RouteEntry};
use super::{Cluster, LocalRoute};
use async_trait::async_trait;
use std::sync::{Arc, Weak};
use tunneld_core::cluster_hook::{ClaimingSession, ClusterRoutes};
use tunneld_core::frontend::{Ask, ClaimError, ClaimRequest};
use tunneld_core::hub::Target;

/// The table's spelling of a port or name: `port:20080`, `name:web`.
pub fn what_of(port: Option<u16>, name: Option<&str>) -> Option<String> {
    match (port, name) {
        (Some(p), _) => Some(format!("port:{p}")),
        (None, Some(n)) => Some(format!("name:{}", n.to_ascii_lowercase())),
        (None, None) => None,
    }
}

fn subject(e: &RouteEntry) -> String {
    match (e.port(), e.name()) {
        (Some(p), _) => format!("port {p}"),
        (_, Some(n)) => format!("name `{n}`"),
        _ => "the route".into(),
    }
}

/// The refusal for a route `holder` keeps.
fn refusal(holder: &RouteEntry, owner: &str) -> ClaimError {
    if holder.owner != owner {
        return match (holder.port(), holder.name()) {
            (Some(p), _) => ClaimError::HeldByOther(p),
            (_, Some(n)) => ClaimError::NameHeld(n.to_string()),
            _ => ClaimError::Invalid("held by another client".into()),
        };
    }
    ClaimError::Conflict(format!(
        "{} is held by another session of client `{}` on node `{}`; stop that tunnelc, or use another port or name",
        subject(holder),
        holder.owner,
        holder.node
    ))
}

#[async_trait]
impl ClusterRoutes for Cluster {
    async fn prepare(
        &self,
        frontend: &str,
        req: &mut ClaimRequest,
        session: &ClaimingSession<'_>,
    ) -> Result<(), ClaimError> {
        let asked_any = req.ask == Ask::Any;
        let what = match &req.ask {
            Ask::Port { port, .. } => what_of(Some(*port), None),
            Ask::Name(n) => what_of(None, Some(n)),
            // The port or name the cluster keeps for this owner's tunnel, when this session
            // may have it back: released, this same tunnelc's, or its node is gone.
            Ask::Any => {
                let view = self.view();
                let found = view.routes.values().find(|r| {
                    r.frontend == frontend
                        && r.owner == req.owner
                        && r.tunnel == req.tunnel
                        && (r.session == 0
                            || (!r.instance.is_empty() && session.instance == Some(&r.instance))
                            || !view.nodes.contains_key(&r.node))
                });
                match found {
                    Some(r) => {
                        req.ask = match (r.port(), r.name()) {
                            (Some(port), _) => Ask::Port { port, bind: None },
                            (_, Some(n)) => Ask::Name(n.to_string()),
                            _ => Ask::Any,
                        };
                        Some(r.what.clone())
                    }
                    None => None,
                }
            }
        };
        let Some(what) = what else { return Ok(()) };
        let key = self.store.route_key(frontend, &what);
        let mirrored_for = tunneld_core::sync::lock(&self.mirrors)
            .get(&key)
            .map(|m| m.entry.owner.clone());
        let Some(mirrored_for) = mirrored_for else {
            return Ok(());
        };
        // A mirror of a route held elsewhere: may this session take it over?
        let r = self.store.route(frontend, &what).await;
        self.redis_result("route", &r);
        let current = r.map_err(|e| ClaimError::ClusterDown(e.to_string()))?;
        let take = match &current {
            // Gone from the table (expired, or Redis was emptied): only its owner may take
            // what the mirror still holds; another client waits for the mirror to go.
            None => mirrored_for == req.owner,
            Some(c) if c.node == self.cfg.node => true,
            // Another owner's: the mirror stays and the frontend refuses the claim.
            Some(c) if c.owner != req.owner => false,
            Some(c) => {
                let same_tunnelc = !c.instance.is_empty() && session.instance == Some(&c.instance);
                let holder_live = c.session != 0 && {
                    let alive = self.store.node_alive(&c.node).await;
                    self.redis_result("node", &alive);
                    alive.map_err(|e| ClaimError::ClusterDown(e.to_string()))?
                };
                if !same_tunnelc && holder_live {
                    if asked_any {
                        // Another tunnelc of this client serves it: this one gets its own.
                        req.ask = Ask::Any;
                        return Ok(());
                    }
                    return Err(refusal(c, &req.owner));
                }
                true
            }
        };
        if take {
            let gone = tunneld_core::sync::lock(&self.mirrors).remove(&key);
            if gone.is_some() {
                tracing::info!(route = %key, client = %req.owner, "cluster: a session here takes over a route another node held");
            }
        }
        Ok(())
    }

    async fn register_route(
        &self,
        frontend: &str,
        (port, name): (Option<u16>, Option<&str>),
        req: &ClaimRequest,
        session: &ClaimingSession<'_>,
    ) -> Result<Box<dyn Send + Sync>, ClaimError> {
        let Some(what) = what_of(port, name) else {
            return Ok(Box::new(()));
        };
        let entry = RouteEntry {
            frontend: frontend.to_string(),
            what,
            node: self.cfg.node.clone(),
            owner: req.owner.clone(),
            tunnel: req.tunnel.clone(),
            kind: req.kind,
            instance: session.instance.unwrap_or_default().to_string(),
            session: session.id,
            boot: self.started,
            proxy_protocol: req.proxy_protocol,
            since: now_ms(),
        };
        let r = self.store.claim(&entry, self.cfg.lease_ttl).await;
        self.redis_result("claim", &r);
        match r.map_err(|e| ClaimError::ClusterDown(e.to_string()))? {
            Claimed::HeldBy(holder) => Err(refusal(&holder, &req.owner)),
            Claimed::Taken => {
                let key = self.store.route_key(&entry.frontend, &entry.what);
                tunneld_core::sync::lock(&self.local).insert(
                    key.clone(),
                    LocalRoute {
                        entry: entry.clone(),
                        target: req.target.clone(),
                        closed: session.closed.clone(),
                    },
                );
                Ok(Box::new(Lease {
                    cluster: self.this.clone(),
                    key,
                    entry,
                    reserve: req.reserve_on_release,
                }))
            }
        }
    }

    fn client_remote(&self, client: &str) -> Option<Arc<dyn Target>> {
        self.presence_target(client)
    }

    fn held_here(
        &self,
        frontend: &str,
        (port, name): (Option<u16>, Option<&str>),
        owner: &str,
    ) -> (Arc<dyn Target>, Box<dyn Send + Sync>) {
        let key = what_of(port, name)
            .map(|w| self.store.route_key(frontend, &w))
            .unwrap_or_default();
        *tunneld_core::sync::lock(&self.held_here)
            .entry(key.clone())
            .or_default() += 1;
        // A mirror of the owner's route (its session is at another node) makes way for the
        // lease's claim, which reaches that node the same way; released outside the lock.
        let mirror = {
            let mut mirrors = tunneld_core::sync::lock(&self.mirrors);
            match mirrors.get(&key) {
                Some(m) if m.entry.owner == owner => mirrors.remove(&key),
                _ => None,
            }
        };
        drop(mirror);
        // Only a route of the lease's owner: another client may hold the same port elsewhere
        // (a lease is not registered until a session takes it up).
        let remote =
            super::mirror::RemoteTarget::new(self.this.clone(), key.clone()).for_owner(owner);
        (
            Arc::new(remote),
            Box::new(HeldHere {
                cluster: self.this.clone(),
                key,
            }),
        )
    }
}

/// Held with a claim this node makes whoever serves it (a lease): while held, the route is
/// not mirrored here.
struct HeldHere {
    cluster: Weak<Cluster>,
    key: String,
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.upgrade() {
            let mut held = tunneld_core::sync::lock(&c.held_here);
            if let Some(n) = held.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.key);
                }
            }
        }
    }
}

/// Held with a registered claim: dropping it gives the route up (kept reserved for its
/// owner until it expires, when the claim asked for that).
struct Lease {
    cluster: Weak<Cluster>,
    key: String,
    entry: RouteEntry,
    reserve: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let mine = {
            let mut local = tunneld_core::sync::lock(&cluster.local);
            match local.get(&self.key) {
                Some(r) if r.entry == self.entry => local.remove(&self.key).is_some(),
                _ => false,
            }
        };
        if !mine {
            return;
        }
        let (entry, reserve) = (self.entry.clone(), self.reserve);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let released = RouteEntry {
                session: 0,
                ..entry.clone()
            };
            let r = cluster
                .store
                .release(&entry, reserve.then_some(&released))
                .await;
            cluster.redis_result("release", &r);
        });
    }
}
