//! Claims: a hello's tunnels claimed on their frontends for a session, and what happens
//! when another live session of the same client holds the port or name (a probe; the
//! holder keeps it when it answers, is replaced when it does not).

use super::*;
use crate::frontend::{Ask, Quota};

impl Hub {
    /// Probes `holder`; replaces it when it does not answer. True when it answered.
    pub(super) async fn probe_or_replace(&self, holder: &LiveSession) -> bool {
        if holder.opener.probe(PROBE_DEADLINE).await && !holder.closed.is_cancelled() {
            return true;
        }
        tracing::info!(client = %holder.info.client_id, session = holder.info.id, "a session that did not answer its probe was replaced");
        self.metrics
            .session_conflicts_total
            .with_label_values(&["replaced"])
            .inc();
        holder.replace();
        false
    }

    /// The frontend a `kind` tunnel goes to: `name`'s, which must serve `kind`, or else the
    /// one that serves `kind` by default.
    pub fn frontend_for(
        &self,
        kind: TunnelKind,
        name: Option<&str>,
    ) -> Result<Arc<dyn Frontend>, ClaimError> {
        let frontends = self.frontends();
        match name {
            Some(n) => {
                let f = frontends
                    .get(n)
                    .cloned()
                    .ok_or_else(|| ClaimError::UnknownFrontend(n.into()))?;
                if f.serves(kind) {
                    Ok(f)
                } else {
                    Err(ClaimError::Invalid(format!(
                        "frontend `{n}` does not serve `{kind}` tunnels"
                    )))
                }
            }
            None => frontends
                .values()
                .find(|f| f.is_default_for(kind))
                .cloned()
                .ok_or_else(|| ClaimError::NoFrontend(kind.to_string())),
        }
    }

    /// Claims one tunnel of a hello for `session`: its lease, or a new claim on a frontend.
    /// When another live session of the same client holds the port or name, that holder is
    /// probed: one that answers keeps it (and the refusal names it), one that does not is
    /// replaced and the claim tried again.
    pub(super) async fn claim_for(
        &self,
        session: &Arc<LiveSession>,
        who: &Identity,
        t: &TunnelRequest,
    ) -> Result<(String, Option<String>), ClaimError> {
        if let Some(leased) = self.leased(&who.client_id, t) {
            let found = leased?;
            let holders: Vec<_> = self
                .sessions
                .all(&who.client_id)
                .into_iter()
                .filter(|s| s.info.id != session.info.id && s.uses_lease(&t.name))
                .collect();
            for holder in holders {
                if self.probe_or_replace(&holder).await {
                    return Err(self.conflict(format!("provisioned tunnel `{}`", t.name), &holder));
                }
            }
            let route = self.register_lease_use(session, t).await;
            lock(&session.leased).push(crate::live_sessions::LeaseUse {
                tunnel: t.name.clone(),
                route,
            });
            return Ok(found);
        }
        let mut tried_replacing = false;
        loop {
            match self.claim_tunnel(session, who, t).await {
                Ok(claim) => {
                    let out = (claim.endpoint.clone(), claim.name.clone());
                    let frontend = self
                        .frontend_for(t.kind, t.frontend.as_deref())
                        .map(|f| f.name().to_string())
                        .unwrap_or_default();
                    lock(&session.claims).push(HeldClaim {
                        frontend,
                        tunnel: t.name.clone(),
                        claim,
                        request: t.clone(),
                    });
                    return Ok(out);
                }
                Err(ClaimError::HeldBySession { port, name }) if !tried_replacing => {
                    tried_replacing = true;
                    let frontend = self
                        .frontend_for(t.kind, t.frontend.as_deref())
                        .map(|f| f.name().to_string())
                        .unwrap_or_default();
                    let holder = self.sessions.all(&who.client_id).into_iter().find(|s| {
                        s.info.id != session.info.id && s.holds(&frontend, port, name.as_deref())
                    });
                    let what = ClaimError::HeldBySession {
                        port,
                        name: name.clone(),
                    }
                    .subject();
                    match holder {
                        Some(h) if self.probe_or_replace(&h).await => {
                            return Err(self.conflict(what, &h));
                        }
                        Some(_) => continue,
                        None if session.holds(&frontend, port, name.as_deref()) => {
                            return Err(match port {
                                Some(p) => ClaimError::Duplicate(p),
                                None => ClaimError::Invalid(format!(
                                    "{what} is already used by another tunnel of this client"
                                )),
                            });
                        }
                        None => return Err(ClaimError::HeldBySession { port, name }),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The refusal for a claim another live session holds, naming that session.
    pub(super) fn conflict(&self, what: String, holder: &LiveSession) -> ClaimError {
        self.metrics
            .session_conflicts_total
            .with_label_values(&["refused"])
            .inc();
        ClaimError::Conflict(format!(
            "{what} is held by another session of client `{}`: {}; stop that tunnelc, or use another port or name",
            holder.info.client_id,
            holder.describe()
        ))
    }

    pub(super) async fn claim_tunnel(
        &self,
        session: &Arc<LiveSession>,
        who: &Identity,
        t: &TunnelRequest,
    ) -> Result<Claim, ClaimError> {
        let frontend = self.frontend_for(t.kind, t.frontend.as_deref())?;
        let name = frontend.name().to_string();
        let owner = &who.client_id;
        let req = ClaimRequest {
            owner: owner.to_string(),
            tunnel: t.name.clone(),
            kind: t.kind,
            ask: Ask::of(t.subdomain.clone(), t.remote_port),
            proxy_protocol: t.proxy_protocol,
            quota: Quota {
                ports: who.max_ports,
                names: who.max_names,
            },
            target: Arc::new(SessionTarget(Via::Session(Arc::downgrade(session)))),
            reserve_on_release: true,
        };
        let claimed = match self.cluster.get() {
            None => frontend.claim(req).await,
            Some(cluster) => {
                self.claim_in_cluster(cluster, frontend, &name, req, session)
                    .await
            }
        };
        claimed.inspect_err(|e| {
            self.metrics
                .claims_refused_total
                .with_label_values(&[&name, e.reason()])
                .inc();
        })
    }

    /// A claim in cluster mode: the local frontend's, registered cluster-wide. A port the
    /// frontend picked that another node registered first is kept aside (so the frontend
    /// picks another) and tried again a few times.
    async fn claim_in_cluster(
        &self,
        cluster: &Arc<dyn crate::cluster_hook::ClusterRoutes>,
        frontend: Arc<dyn Frontend>,
        name: &str,
        mut req: ClaimRequest,
        session: &Arc<LiveSession>,
    ) -> Result<Claim, ClaimError> {
        let who = crate::cluster_hook::ClaimingSession {
            id: session.info.id,
            instance: session.info.instance.as_deref(),
            closed: session.closed.clone(),
        };
        cluster.prepare(name, &mut req, &who).await?;
        // The cluster keeps a released route for its owner (until the lease expires); the
        // frontend keeps nothing, so a claim refused or set aside here blocks no one.
        let local = ClaimRequest {
            reserve_on_release: false,
            ..req.clone()
        };
        let mut taken_elsewhere = Vec::new();
        loop {
            let mut claim = frontend.clone().claim(local.clone()).await?;
            match cluster.register(name, &claim, &req, &who).await {
                Ok(lease) => {
                    let local = std::mem::replace(&mut claim.release, Box::new(()));
                    claim.release = Box::new((lease, local));
                    return Ok(claim);
                }
                Err(e)
                    if req.ask == Ask::Any
                        && taken_elsewhere.len() < 8
                        && !matches!(e, ClaimError::ClusterDown(_)) =>
                {
                    tracing::debug!(frontend = %name, error = %e, "picked a route another node holds; picking again");
                    taken_elsewhere.push(claim);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
