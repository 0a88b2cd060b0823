//! Creating, renewing and deleting provisioned tunnels, and signing their certificates:
//! quotas and single use are checked here, under [`Control::changes`], and every refusal
//! names the limit it hit.

use super::types::{CertInfo, CreateRequest, Endpoint, SignedCert, TunnelInfo};
use super::Control;
use http::StatusCode;
use tunneld_core::auth::Identity;
use tunneld_core::frontend::ClaimError;
use tunneld_core::hub::LeaseRequest;
use tunneld_core::proto::TunnelKind;
use tunneld_state::ca_sign::CaSign;
use tunneld_state::{
    self as state, names::readable_name, CertRecord, TokenRecord, TunnelFlavour, TunnelRecord,
};

/// A refusal: the status and the message shown to the client.
pub type Refusal = (StatusCode, String);

pub const PROTOCOLS: &[&str] = &["http", "https", "tcp"];
/// Longest name a client may ask for (the hello's tunnel names add `-https`).
pub const MAX_NAME: usize = 50;

pub(crate) fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "state store failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("state store failed: {e}"),
    )
}

/// The hello tunnel name of one protocol of a tunnel.
pub fn hello_name(name: &str, protocol: &str) -> String {
    tunneld_core::hub::lease_name(name, protocol)
}

/// The tunnel kind a protocol of a tunnel is leased as: pipe2me-shape tunnels lease every
/// protocol as a raw TCP port.
pub fn kind_of(flavour: TunnelFlavour, protocol: &str) -> TunnelKind {
    match (flavour, protocol) {
        (TunnelFlavour::Pipe2me, _) | (_, "tcp") => TunnelKind::Tcp,
        (_, "http") => TunnelKind::Http,
        _ => TunnelKind::Tls,
    }
}

fn valid_name(n: &str) -> bool {
    n.len() <= MAX_NAME && tunneld_frontend_https::config::valid_label(n)
}

impl Control {
    fn token_record(&self, who: &Identity) -> Result<Option<TokenRecord>, Refusal> {
        if who.method != "token" {
            return Ok(None);
        }
        self.store.token(&who.client_id).map_err(internal)
    }

    fn expires(&self, token: Option<&TokenRecord>) -> Option<u64> {
        let lease = state::now() + self.cfg.lease.as_secs();
        Some(match token.and_then(|t| t.expires_at) {
            Some(t) => t.min(lease),
            None => lease,
        })
    }

    fn frontend_of(&self, kind: TunnelKind) -> Option<String> {
        match kind {
            TunnelKind::Tcp => self.cfg.ports_frontend.clone(),
            _ => Some(self.cfg.names_frontend.clone()),
        }
    }

    /// The API's view of a record.
    pub fn info(&self, t: &TunnelRecord) -> TunnelInfo {
        let endpoints = t
            .protocols
            .iter()
            .map(|p| {
                let tunnel = hello_name(&t.name, p);
                Endpoint {
                    protocol: p.clone(),
                    url: self
                        .hub
                        .lease_endpoint(&t.owner, &tunnel)
                        .unwrap_or_else(|| "unavailable".into()),
                    kind: kind_of(t.flavour, p).to_string(),
                    tunnel,
                }
            })
            .collect();
        let certificates = self
            .store
            .certificates(&t.name)
            .unwrap_or_default()
            .into_iter()
            .map(|c| CertInfo {
                serial: c.serial,
                names: c.names,
                not_after: c.not_after,
            })
            .collect();
        TunnelInfo {
            name: t.name.clone(),
            fqdn: format!("{}.{}", t.name, self.domain),
            owner: t.owner.clone(),
            protocols: t.protocols.clone(),
            endpoints,
            state: if self.hub.is_online(&t.owner) {
                "online"
            } else {
                "offline"
            }
            .into(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            certificates,
        }
    }

    /// Takes the routes of a record; on failure gives back those already taken.
    pub async fn lease_all(&self, t: &mut TunnelRecord) -> Result<(), ClaimError> {
        let mut taken = Vec::new();
        for p in t.protocols.clone() {
            let tunnel = hello_name(&t.name, &p);
            let kind = kind_of(t.flavour, &p);
            let got = self
                .hub
                .lease(LeaseRequest {
                    owner: t.owner.clone(),
                    tunnel: tunnel.clone(),
                    kind,
                    frontend: self.frontend_of(kind),
                    subdomain: (kind != TunnelKind::Tcp).then(|| t.name.clone()),
                    port: t.ports.get(&p).copied(),
                })
                .await;
            match got {
                Ok(c) => {
                    if let Some(port) = c.port {
                        t.ports.insert(p.clone(), port);
                    }
                    taken.push(tunnel);
                }
                Err(e) => {
                    for n in &taken {
                        self.hub.release_lease(&t.owner, n);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn release_all(&self, t: &TunnelRecord) {
        for p in &t.protocols {
            self.hub.release_lease(&t.owner, &hello_name(&t.name, p));
        }
    }

    fn count_certificate(&self, outcome: &str) {
        if let Some(own) = crate::metrics::of(&self.metrics) {
            own.certificates_issued_total
                .with_label_values(&[outcome])
                .inc();
        }
    }

    pub(crate) fn update_gauge(&self) {
        let (Ok(all), Some(own)) = (self.store.tunnels(None), crate::metrics::of(&self.metrics))
        else {
            return;
        };
        own.provisioned_tunnels
            .with_label_values(&["leased"])
            .set(all.len() as i64);
    }

    /// `POST /v1/tunnels`.
    pub async fn create(&self, who: &Identity, req: CreateRequest) -> Result<TunnelInfo, Refusal> {
        let protocols = checked_protocols(&req, self.cfg.ports_frontend.is_some())?;
        let rec = self
            .create_record(
                who,
                protocols,
                req.name.as_deref(),
                TunnelFlavour::Native,
                None,
            )
            .await?;
        Ok(self.info(&rec))
    }

    /// Checks quotas, leases the routes and stores a new tunnel (a readable name when none
    /// is asked for).
    pub async fn create_record(
        &self,
        who: &Identity,
        protocols: Vec<String>,
        name: Option<&str>,
        flavour: TunnelFlavour,
        id_digest: Option<String>,
    ) -> Result<TunnelRecord, Refusal> {
        let _one = self.changes.lock().await;
        let token = self.token_record(who)?;
        let ports = protocols
            .iter()
            .filter(|p| kind_of(flavour, p) == TunnelKind::Tcp)
            .count();
        self.check_quota(who, token.as_ref(), ports)?;
        let name = self.free_name(name)?;
        let forbid = |m: String| Err((StatusCode::FORBIDDEN, m));
        let mut rec = TunnelRecord {
            name: name.clone(),
            owner: who.client_id.clone(),
            protocols,
            ports: Default::default(),
            created_at: state::now(),
            expires_at: self.expires(token.as_ref()),
            flavour,
            id_digest,
        };
        if let Err(e) = self.lease_all(&mut rec).await {
            let status = match e {
                ClaimError::NameHeld(_) | ClaimError::HeldByOther(_) => StatusCode::CONFLICT,
                ClaimError::Exhausted(_)
                | ClaimError::Unavailable { .. }
                | ClaimError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            return Err((status, e.to_string()));
        }
        if let Some(t) = token.as_ref().filter(|t| t.single_use) {
            if !self
                .store
                .use_token(&t.name, state::now())
                .map_err(internal)?
            {
                self.release_all(&rec);
                return forbid(format!(
                    "token `{}` is single-use and was already used",
                    t.name
                ));
            }
        }
        if let Err(e) = self.store.add_tunnel(&rec) {
            self.release_all(&rec);
            return Err(match e {
                state::StateError::Exists(_) => {
                    (StatusCode::CONFLICT, format!("name `{name}` is taken"))
                }
                e => internal(e),
            });
        }
        tracing::info!(tunnel = %name, owner = %who.client_id, protocols = ?rec.protocols, flavour = flavour.as_str(), "tunnel provisioned");
        self.update_gauge();
        Ok(rec)
    }

    /// A single-use token not used yet, and room in the client's name and port quotas.
    fn check_quota(
        &self,
        who: &Identity,
        token: Option<&TokenRecord>,
        wanted: usize,
    ) -> Result<(), Refusal> {
        let forbid = |m: String| Err((StatusCode::FORBIDDEN, m));
        if let Some(t) = token.filter(|t| t.single_use) {
            if let Some(at) = t.used_at {
                return forbid(format!(
                    "token `{}` is single-use and was already used at {}",
                    t.name,
                    state::rfc3339(at)
                ));
            }
        }
        let mine = self.store.tunnels(Some(&who.client_id)).map_err(internal)?;
        let max_names = who.max_names.unwrap_or(self.cfg.default_max_tunnels);
        if mine.len() >= max_names as usize {
            return forbid(format!(
                "quota exceeded (max_names): `{}` may hold at most {max_names} tunnel names and holds {}",
                who.client_id,
                mine.len()
            ));
        }
        if let Some(max) = who.max_ports {
            let held: usize = mine.iter().map(|t| t.ports.len()).sum();
            if held + wanted > max as usize {
                return forbid(format!(
                    "quota exceeded (max_ports): `{}` may hold at most {max} ports, holds {held} and asked for {wanted} more",
                    who.client_id
                ));
            }
        }
        Ok(())
    }

    /// The name asked for when it is free (409 when not), or a free readable one.
    fn free_name(&self, asked: Option<&str>) -> Result<String, Refusal> {
        let taken = |n: &str| {
            self.store.tunnel(n).ok().flatten().is_some()
                || !matches!(
                    self.hub
                        .frontend(&self.cfg.names_frontend)
                        .map(|f| f.route_name(n)),
                    Some(tunneld_core::frontend::NameRoute::Unknown) | None
                )
        };
        Ok(match asked {
            Some(n) => {
                if taken(n) {
                    return Err((StatusCode::CONFLICT, format!("name `{n}` is taken")));
                }
                n.to_string()
            }
            None => readable_name(taken),
        })
    }

    /// A tunnel of `who`, or 404 (the same answer whether it is someone else's or missing).
    pub fn owned(&self, who: &Identity, name: &str) -> Result<TunnelRecord, Refusal> {
        match self.store.tunnel(name).map_err(internal)? {
            Some(t) if t.owner == who.client_id => Ok(t),
            _ => Err((
                StatusCode::NOT_FOUND,
                format!("you have no tunnel named `{name}`"),
            )),
        }
    }

    /// `POST /v1/tunnels/<name>/renew`: the leases run for another `control.lease`.
    pub async fn renew(&self, who: &Identity, name: &str) -> Result<TunnelInfo, Refusal> {
        let _one = self.changes.lock().await;
        let mut t = self.owned(who, name)?;
        let token = self.token_record(who)?;
        t.expires_at = self.expires(token.as_ref());
        self.store.update_tunnel(&t).map_err(internal)?;
        Ok(self.info(&t))
    }

    /// `DELETE /v1/tunnels/<name>`.
    pub async fn delete(&self, who: &Identity, name: &str) -> Result<(), Refusal> {
        let _one = self.changes.lock().await;
        let t = self.owned(who, name)?;
        self.drop_tunnel(&t).map_err(internal)
    }

    /// Releases a tunnel's leases and forgets it.
    pub(crate) fn drop_tunnel(&self, t: &TunnelRecord) -> Result<(), state::StateError> {
        self.store.delete_tunnel(&t.name)?;
        self.release_all(t);
        self.update_gauge();
        tracing::info!(tunnel = %t.name, owner = %t.owner, "tunnel deleted");
        Ok(())
    }

    /// `POST /v1/tunnels/<name>/certificate`: signs a CSR naming only this tunnel's name.
    pub fn sign(&self, who: &Identity, name: &str, csr: &str) -> Result<SignedCert, Refusal> {
        let t = self.owned(who, name)?;
        let fqdn = format!("{}.{}", t.name, self.domain);
        let outcome = self
            .ca
            .sign_csr(csr, |n| n == fqdn, self.cfg.certificate_lifetime);
        let signed = match outcome {
            Ok(s) => s,
            Err(e) => {
                self.count_certificate("refused");
                let status = match e {
                    tunneld_state::ca_sign::CsrError::NotOwned(_) => StatusCode::FORBIDDEN,
                    tunneld_state::ca_sign::CsrError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                return Err((status, e.to_string()));
            }
        };
        self.store
            .add_certificate(&CertRecord {
                serial: signed.serial.clone(),
                tunnel: t.name.clone(),
                owner: t.owner.clone(),
                names: signed.names.clone(),
                not_after: signed.not_after,
                pem: signed.pem.clone(),
                created_at: state::now(),
            })
            .map_err(internal)?;
        self.count_certificate("issued");
        tracing::info!(tunnel = %t.name, serial = %signed.serial, "certificate signed");
        Ok(SignedCert {
            certificate: signed.pem,
            ca: self.ca_pem.clone(),
            serial: signed.serial,
            names: signed.names,
            not_after: signed.not_after,
        })
    }
}

/// The protocols of a create request (https when none), each known and listed once, not
/// http with https, and tcp only when this tunneld offers ports.
fn checked_protocols(req: &CreateRequest, has_ports: bool) -> Result<Vec<String>, Refusal> {
    let bad = |m: String| Err((StatusCode::BAD_REQUEST, m));
    let mut protocols = req.protocols.clone();
    if protocols.is_empty() {
        protocols.push("https".into());
    }
    for (i, p) in protocols.iter().enumerate() {
        if !PROTOCOLS.contains(&p.as_str()) {
            return bad(format!(
                "protocol `{p}` is unknown (use {})",
                PROTOCOLS.join(", ")
            ));
        }
        if protocols[..i].contains(p) {
            return bad(format!("protocol `{p}` is listed twice"));
        }
    }
    if protocols.iter().any(|p| p == "http") && protocols.iter().any(|p| p == "https") {
        return bad("http and https both serve the tunnel's name: choose one (https passes TLS through to the local service, http has tunneld terminate it)".into());
    }
    if protocols.iter().any(|p| p == "tcp") && !has_ports {
        return bad(
            "this tunneld offers no tcp tunnels (control.ports_frontend is not set)".into(),
        );
    }
    if let Some(n) = &req.name {
        if !valid_name(n) {
            return bad(format!(
                "name `{n}` is invalid: use 1-{MAX_NAME} of a-z, 0-9 and `-`, not at either end"
            ));
        }
    }
    Ok(protocols)
}
