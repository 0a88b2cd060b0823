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
        let claim = frontend
            .claim(ClaimRequest {
                owner: r.owner.clone(),
                tunnel: r.tunnel.clone(),
                kind: r.kind,
                ask: Ask::of(r.subdomain, r.port),
                proxy_protocol: None,
                quota: Quota::default(),
                target: Arc::new(SessionTarget(Via::Lease {
                    sessions: Arc::downgrade(&self.sessions),
                    client_id: r.owner.clone(),
                    tunnel: r.tunnel.clone(),
                })),
                reserve_on_release: false,
            })
            .await?;
        let out = Claimed::of(&claim);
        lock(&self.leases).insert(
            key,
            Lease {
                kind: r.kind,
                frontend: frontend_name,
                claim,
            },
        );
        Ok(out)
    }

    /// Gives up a lease's route; false when there was none.
    pub fn release_lease(&self, owner: &str, tunnel: &str) -> bool {
        let removed = lock(&self.leases).remove(&(owner.to_string(), tunnel.to_string()));
        removed.is_some()
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
