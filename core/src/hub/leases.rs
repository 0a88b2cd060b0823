//! Leases: routes the hub holds for provisioned tunnels whether or not their client is
//! connected, taken over by a hello that names the tunnel.

use super::*;
use crate::frontend::{Ask, Quota};

/// A route a provisioned tunnel holds (see [`Hub::lease`]).
pub struct LeaseRequest {
    pub owner: String,
    /// The tunnel name a hello will use for it.
    pub tunnel: String,
    pub kind: TunnelKind,
    /// The frontend by name, or the default for `kind`.
    pub frontend: Option<String>,
    pub subdomain: Option<String>,
    pub port: Option<u16>,
}

/// What a lease holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub endpoint: String,
    pub port: Option<u16>,
    pub name: Option<String>,
}

impl Claimed {
    fn of(c: &Claim) -> Self {
        Self {
            endpoint: c.endpoint.clone(),
            port: c.port,
            name: c.name.clone(),
        }
    }
}

pub(super) struct Lease {
    pub(super) kind: TunnelKind,
    /// The frontend the route is on.
    pub(super) frontend: String,
    pub(super) claim: Claim,
    /// Cluster mode: keeps the route from being mirrored here while the lease holds it.
    _cluster: Option<Box<dyn Send + Sync>>,
}

impl Hub {
    /// A tunnel of a hello that matches a lease of its client: the lease's endpoint and name,
    /// or why the kinds differ.
    pub(super) fn leased(
        &self,
        owner: &str,
        t: &TunnelRequest,
    ) -> Option<Result<(String, Option<String>), ClaimError>> {
        let leases = lock(&self.leases);
        let l = leases.get(&(owner.to_string(), t.name.clone()))?;
        Some(if l.kind == t.kind {
            Ok((l.claim.endpoint.clone(), l.claim.name.clone()))
        } else {
            Err(ClaimError::Invalid(format!(
                "tunnel `{}` is provisioned for `{}` tunnels, not `{}`",
                t.name, l.kind, t.kind
            )))
        })
    }

    /// Holds a route for a provisioned tunnel until [`Hub::release_lease`], whether or not its
    /// client is connected (visitors meanwhile find it offline). A hello naming the tunnel
    /// uses the lease instead of claiming. Returns the endpoint and the port or name held.
    pub async fn lease(&self, r: LeaseRequest) -> Result<Claimed, ClaimError> {
        let key = (r.owner.clone(), r.tunnel.clone());
        if let Some(l) = lock(&self.leases).get(&key) {
            return Ok(Claimed::of(&l.claim));
        }
        let frontend = self.frontend_for(r.kind, r.frontend.as_deref())?;
        let frontend_name = frontend.name().to_string();
        // In a cluster the route is marked as held here first (a mirror of it is dropped and
        // no new one made), when its port or name is known before the claim.
        let early = self.cluster.get().and_then(|c| {
            let name = (r.kind != TunnelKind::Tcp)
                .then_some(r.subdomain.as_deref())
                .flatten();
            (r.port.is_some() || name.is_some())
                .then(|| c.held_here(&frontend_name, (r.port, name), &r.owner))
        });
        let target = Arc::new(crate::cluster_hook::OrRemote {
            local: Arc::new(SessionTarget(Via::Lease {
                sessions: Arc::downgrade(&self.sessions),
                client_id: r.owner.clone(),
                tunnel: r.tunnel.clone(),
            })),
            remote: std::sync::OnceLock::new(),
        });
        let claim = frontend
            .claim(ClaimRequest {
                owner: r.owner.clone(),
                tunnel: r.tunnel.clone(),
                kind: r.kind,
                ask: Ask::of(r.subdomain, r.port),
                proxy_protocol: None,
                quota: Quota::default(),
                target: target.clone(),
                reserve_on_release: false,
            })
            .await?;
        // In a cluster the session serving the lease may be at another node: visitors here
        // then reach it there, and the route is not mirrored over this claim.
        let held = early.or_else(|| {
            let c = self.cluster.get()?;
            Some(c.held_here(
                &frontend_name,
                (claim.port, claim.name.as_deref()),
                &r.owner,
            ))
        });
        let cluster = held.map(|(remote, guard)| {
            let _ = target.remote.set(remote);
            guard
        });
        let out = Claimed::of(&claim);
        lock(&self.leases).insert(
            key,
            Lease {
                kind: r.kind,
                frontend: frontend_name,
                claim,
                _cluster: cluster,
            },
        );
        Ok(out)
    }

    /// Gives up a lease's route; false when there was none.
    pub fn release_lease(&self, owner: &str, tunnel: &str) -> bool {
        let removed = lock(&self.leases).remove(&(owner.to_string(), tunnel.to_string()));
        // Cluster mode: the route a session registered for it goes too (else the other nodes
        // would go on mirroring a tunnel that no longer exists).
        for s in self.sessions.all(owner) {
            for u in lock(&s.leased).iter_mut().filter(|u| u.tunnel == tunnel) {
                u.route = None;
            }
        }
        removed.is_some()
    }

    /// The frontend and the port and name of `owner`'s lease of `tunnel`.
    pub(super) fn lease_route(
        &self,
        owner: &str,
        tunnel: &str,
    ) -> Option<(String, Option<u16>, Option<String>)> {
        lock(&self.leases)
            .get(&(owner.to_string(), tunnel.to_string()))
            .map(|l| (l.frontend.clone(), l.claim.port, l.claim.name.clone()))
    }

    /// In cluster mode, registers `session`'s use of the lease `t` as a route held here, so
    /// visitors at other nodes reach it; held as long as the session uses the lease. A route
    /// another node holds is logged and left: visitors here still reach this session.
    pub(super) async fn register_lease_use(
        &self,
        session: &Arc<LiveSession>,
        t: &TunnelRequest,
    ) -> Option<Box<dyn Send + Sync>> {
        let cluster = self.cluster.get()?;
        let owner = &session.info.client_id;
        let (frontend, port, name) = self.lease_route(owner, &t.name)?;
        let req = ClaimRequest {
            owner: owner.clone(),
            tunnel: t.name.clone(),
            kind: t.kind,
            ask: Ask::of(name.clone(), port),
            proxy_protocol: None,
            quota: Quota::default(),
            target: Arc::new(SessionTarget(Via::Session(Arc::downgrade(session)))),
            reserve_on_release: false,
        };
        let who = crate::cluster_hook::ClaimingSession {
            id: session.info.id,
            instance: session.info.instance.as_deref(),
            closed: session.closed.clone(),
        };
        match cluster
            .register_route(&frontend, (port, name.as_deref()), &req, &who)
            .await
        {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::warn!(client = %owner, tunnel = %t.name, error = %e, "cluster: the provisioned tunnel's route is not registered; visitors reach it at this node only");
                None
            }
        }
    }

    /// Every lease held: (owner, tunnel).
    pub fn lease_keys(&self) -> Vec<(String, String)> {
        lock(&self.leases).keys().cloned().collect()
    }

    /// The endpoint of a lease.
    pub fn lease_endpoint(&self, owner: &str, tunnel: &str) -> Option<String> {
        lock(&self.leases)
            .get(&(owner.to_string(), tunnel.to_string()))
            .map(|l| l.claim.endpoint.clone())
    }

    /// The port a lease holds, when it holds one.
    pub fn lease_port(&self, owner: &str, tunnel: &str) -> Option<u16> {
        lock(&self.leases)
            .get(&(owner.to_string(), tunnel.to_string()))
            .and_then(|l| l.claim.port)
    }

    /// The tunnel name of `owner`'s lease of `kind` that holds `port` or `name` (a client
    /// that asks for a route by its public port or name, as SSH's `tcpip-forward` does).
    pub fn lease_at(
        &self,
        owner: &str,
        kind: TunnelKind,
        port: Option<u16>,
        name: Option<&str>,
    ) -> Option<String> {
        lock(&self.leases)
            .iter()
            .find(|((o, _), l)| {
                o == owner
                    && l.kind == kind
                    && ((port.is_some() && l.claim.port == port)
                        || (name.is_some() && l.claim.name.as_deref() == name))
            })
            .map(|((_, t), _)| t.clone())
    }
}

/// The lease (hello tunnel) name of one protocol of a provisioned tunnel.
pub fn lease_name(tunnel: &str, protocol: &str) -> String {
    format!("{tunnel}-{protocol}")
}
