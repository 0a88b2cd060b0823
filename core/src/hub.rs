//! The hub: which tunnel clients are connected, through which session, and which routes
//! (claims on frontends) they hold. Transports call [`Hub::admit`] after reading a hello;
//! frontends reach clients through a [`Target`]; the admin API calls [`Hub::apply_mappings`].
//!
//! One session per client id: a new session of the same client replaces the old one, whose
//! claims are released first so the new one gets the same ports back at once.

use crate::auth::{AuthError, Authenticator, Identity};
use crate::frontend::{Claim, ClaimError, ClaimRequest, Frontend, RouteInfo};
use crate::io::BoxIo;
use crate::mapping::AdminState;
use crate::metrics::Metrics;
use crate::proto::{Control, Hello, TunnelKind, TunnelRequest, TunnelStatus, VERSION};
use crate::session::{OpenError, OpenStream, SessionInfo, StreamHeader};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Maximum tunnels one hello may request.
pub const MAX_TUNNELS_PER_SESSION: usize = 64;

/// Where a frontend sends a visitor: resolved at each connection, so routes follow a client
/// across reconnects.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Opens a stream for one visitor. `server_name` is the name the visitor asked for (TLS
    /// SNI), when the frontend peeked it because [`Target::routes_by_name`] said so.
    async fn open(
        &self,
        header: StreamHeader,
        server_name: Option<&str>,
    ) -> Result<BoxIo, OpenError>;

    /// Forwards one visitor HTTP request (see [`OpenStream::request`]).
    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<crate::http_forward::Body>,
    ) -> Result<http::Response<crate::http_forward::Body>, OpenError> {
        let io = self.open(header, None).await?;
        crate::http_forward::http1_over(io, req).await
    }

    /// Whether visitors must be routed by the name they ask for: the frontend then peeks the
    /// TLS ClientHello and replays it.
    fn routes_by_name(&self) -> bool {
        false
    }

    /// Whether a visitor sent here now could be served (its client is connected); a pool
    /// skips members that are not.
    fn online(&self) -> bool {
        true
    }
}

/// A live session as the hub keeps it.
pub struct LiveSession {
    pub info: SessionInfo,
    pub opener: Arc<dyn OpenStream>,
    /// Cancelled when the session must end (replaced, shutdown, expired).
    pub closed: CancellationToken,
    pub accept_server_mappings: bool,
    tunnels: Mutex<Vec<TunnelStatus>>,
    claims: Mutex<Vec<Claim>>,
    pub(crate) notify: mpsc::UnboundedSender<Control>,
}

impl LiveSession {
    pub fn tunnels(&self) -> Vec<TunnelStatus> {
        lock(&self.tunnels).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_client: Mutex<HashMap<String, Arc<LiveSession>>>,
}

impl Sessions {
    pub(crate) fn get(&self, client: &str) -> Option<Arc<LiveSession>> {
        lock(&self.by_client).get(client).cloned()
    }
}

/// Routes to whichever session a client currently has.
pub struct ClientTarget {
    sessions: Weak<Sessions>,
    client_id: String,
}

#[async_trait]
impl Target for ClientTarget {
    async fn open(&self, header: StreamHeader, _: Option<&str>) -> Result<BoxIo, OpenError> {
        let session = self
            .sessions
            .upgrade()
            .and_then(|s| s.get(&self.client_id))
            .ok_or(OpenError::Offline)?;
        session.opener.open(header).await
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<crate::http_forward::Body>,
    ) -> Result<http::Response<crate::http_forward::Body>, OpenError> {
        let session = self
            .sessions
            .upgrade()
            .and_then(|s| s.get(&self.client_id))
            .ok_or(OpenError::Offline)?;
        session.opener.request(header, req).await
    }

    fn online(&self) -> bool {
        self.sessions
            .upgrade()
            .is_some_and(|s| s.get(&self.client_id).is_some())
    }
}

/// Why a hello was refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: String,
    /// Retrying cannot help (bad credentials, bad request).
    pub permanent: bool,
    /// Metric label.
    pub outcome: &'static str,
}

/// Held by the transport for the life of a session; dropping it unregisters the session and
/// releases its routes.
pub struct SessionGuard {
    hub: Arc<Hub>,
    pub session: Arc<LiveSession>,
    /// Control messages for the client (admin mapping changes).
    pub notifications: mpsc::UnboundedReceiver<Control>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.hub.sessions.by_client);
        if map
            .get(&self.session.info.client_id)
            .is_some_and(|s| s.info.id == self.session.info.id)
        {
            map.remove(&self.session.info.client_id);
        }
        drop(map);
        self.session.closed.cancel();
        let claims = std::mem::take(&mut *lock(&self.session.claims));
        drop(claims);
        self.hub
            .metrics
            .sessions_active
            .with_label_values(&[&self.session.info.transport])
            .dec();
        tracing::info!(client = %self.session.info.client_id, session = self.session.info.id, "session ended");
    }
}

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

struct Lease {
    kind: TunnelKind,
    claim: Claim,
}

pub struct Hub {
    auth: Authenticator,
    leases: Mutex<HashMap<(String, String), Lease>>,
    pub(crate) frontends: BTreeMap<String, Arc<dyn Frontend>>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) admin: tokio::sync::Mutex<AdminState>,
    next_id: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Seconds between client keepalive pings.
    pub keepalive_secs: u64,
}

/// Whether `name` is a valid tunnel or client name: 1-63 letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit.
pub fn valid_tunnel_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

impl Hub {
    pub fn new(
        auth: Authenticator,
        frontends: BTreeMap<String, Arc<dyn Frontend>>,
        metrics: Arc<Metrics>,
        keepalive_secs: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            auth,
            leases: Mutex::default(),
            frontends,
            sessions: Arc::default(),
            admin: tokio::sync::Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
            keepalive_secs,
        })
    }

    /// The frontend configured as `name`.
    pub fn frontend(&self, name: &str) -> Option<Arc<dyn Frontend>> {
        self.frontends.get(name).cloned()
    }

    /// Whether `client_id` has a live session.
    pub fn is_online(&self, client_id: &str) -> bool {
        self.sessions.get(client_id).is_some()
    }

    /// A target that follows `client_id` across sessions.
    pub fn client_target(&self, client_id: &str) -> Arc<dyn Target> {
        Arc::new(ClientTarget {
            sessions: Arc::downgrade(&self.sessions),
            client_id: client_id.to_string(),
        })
    }

    pub(crate) fn frontend_for(
        &self,
        kind: TunnelKind,
        name: Option<&str>,
    ) -> Result<&Arc<dyn Frontend>, ClaimError> {
        match name {
            Some(n) => {
                let f = self
                    .frontends
                    .get(n)
                    .ok_or_else(|| ClaimError::UnknownFrontend(n.into()))?;
                if f.serves(kind) {
                    Ok(f)
                } else {
                    Err(ClaimError::Invalid(format!(
                        "frontend `{n}` does not serve `{kind}` tunnels"
                    )))
                }
            }
            None => self
                .frontends
                .values()
                .find(|f| f.is_default_for(kind))
                .ok_or_else(|| ClaimError::NoFrontend(kind.to_string())),
        }
    }

    fn refuse(
        &self,
        transport: &str,
        outcome: &'static str,
        reason: String,
        permanent: bool,
    ) -> Rejection {
        self.metrics
            .handshakes_total
            .with_label_values(&[transport, outcome])
            .inc();
        Rejection {
            reason,
            permanent,
            outcome,
        }
    }

    /// Authenticates a hello, replaces an older session of the same client, claims the
    /// requested tunnels and registers the session.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        self: &Arc<Self>,
        hello: &Hello,
        cert_cn: Option<&str>,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Result<(SessionGuard, Vec<TunnelStatus>), Rejection> {
        if hello.version != VERSION {
            return Err(self.refuse(
                transport,
                "bad_version",
                format!(
                    "protocol version {} is not supported (this tunneld speaks {VERSION})",
                    hello.version
                ),
                true,
            ));
        }
        let identity = self
            .auth
            .authenticate(hello.token.as_deref(), cert_cn)
            .map_err(|e: AuthError| {
                self.refuse(transport, e.reason(), e.to_string(), e.is_permanent())
            })?;
        self.admit_identity(identity, hello, transport, transport_kind, remote, opener)
            .await
    }

    /// [`Hub::admit`], then the answer on the wire for native transports: the `Welcome`
    /// frame, or the `Rejected` frame (and a shutdown) written to `io`. `None` when the
    /// session did not start.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit_answering<W: tokio::io::AsyncWrite + Unpin>(
        self: &Arc<Self>,
        io: &mut W,
        hello: &Hello,
        cert_cn: Option<&str>,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Option<SessionGuard> {
        use crate::proto::{write_frame, ServerHello};
        const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        match self
            .admit(hello, cert_cn, transport, transport_kind, remote, opener)
            .await
        {
            Ok((guard, tunnels)) => {
                let welcome = ServerHello::Welcome {
                    client_id: guard.session.info.client_id.clone(),
                    tunnels,
                    keepalive_secs: self.keepalive_secs,
                };
                match write_frame(io, &welcome).await {
                    Ok(()) => Some(guard),
                    Err(e) => {
                        tracing::warn!(transport, %remote, error = %e, "could not send welcome");
                        None
                    }
                }
            }
            Err(rej) => {
                tracing::warn!(transport, %remote, outcome = rej.outcome, "client rejected: {}", rej.reason);
                let reply = ServerHello::Rejected {
                    reason: rej.reason,
                    permanent: rej.permanent,
                };
                let _ = tokio::time::timeout(ANSWER_WAIT, write_frame(io, &reply)).await;
                let _ =
                    tokio::time::timeout(ANSWER_WAIT, tokio::io::AsyncWriteExt::shutdown(io)).await;
                None
            }
        }
    }

    /// Admits a session whose identity the transport established itself (a compatibility
    /// dialect that authenticates by client certificate or header). `hello` carries the
    /// tunnels to claim and whether server mappings are accepted.
    pub async fn admit_identity(
        self: &Arc<Self>,
        identity: Identity,
        hello: &Hello,
        transport: &str,
        transport_kind: &'static str,
        remote: SocketAddr,
        opener: Arc<dyn OpenStream>,
    ) -> Result<(SessionGuard, Vec<TunnelStatus>), Rejection> {
        if hello.tunnels.len() > MAX_TUNNELS_PER_SESSION {
            return Err(self.refuse(
                transport,
                "bad_request",
                format!("at most {MAX_TUNNELS_PER_SESSION} tunnels per session"),
                true,
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &hello.tunnels {
            if !valid_tunnel_name(&t.name) {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!(
                        "tunnel name `{}` is invalid: use 1-63 letters, digits, `-`, `_` or `.`",
                        t.name
                    ),
                    true,
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!("tunnel name `{}` appears twice", t.name),
                    true,
                ));
            }
        }

        if let Some(allowed) = &identity.transports {
            if !allowed
                .iter()
                .any(|a| a == transport || a == transport_kind)
            {
                return Err(self.refuse(
                    transport,
                    "transport_not_allowed",
                    format!(
                        "the token of `{}` does not allow transport `{transport}` (it allows: {})",
                        identity.client_id,
                        allowed.join(", ")
                    ),
                    true,
                ));
            }
        }

        // Replace an older session of this client: its claims go first.
        let old = lock(&self.sessions.by_client).remove(&identity.client_id);
        if let Some(old) = old {
            tracing::info!(client = %identity.client_id, old_session = old.info.id, "new session replaces the old one");
            old.closed.cancel();
            drop(std::mem::take(&mut *lock(&old.claims)));
        }

        let mut statuses = Vec::with_capacity(hello.tunnels.len());
        let mut claims = Vec::new();
        for t in &hello.tunnels {
            let leased = self.leased(&identity.client_id, t);
            let claimed = match leased {
                Some(r) => r,
                None => self.claim_tunnel(&identity, t).await.map(|claim| {
                    let status = (claim.endpoint.clone(), claim.name.clone());
                    claims.push(claim);
                    status
                }),
            };
            match claimed {
                Ok((endpoint, subdomain)) => {
                    statuses.push(TunnelStatus {
                        name: t.name.clone(),
                        endpoint: Some(endpoint),
                        error: None,
                        subdomain,
                    });
                }
                Err(e) => {
                    tracing::warn!(client = %identity.client_id, tunnel = %t.name, error = %e, "tunnel refused");
                    statuses.push(TunnelStatus {
                        name: t.name.clone(),
                        endpoint: None,
                        error: Some(e.to_string()),
                        subdomain: None,
                    });
                }
            }
        }

        let (notify, notifications) = mpsc::unbounded_channel();
        let session = Arc::new(LiveSession {
            info: SessionInfo {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                client_id: identity.client_id.clone(),
                transport: transport.to_string(),
                transport_kind,
                remote,
                auth_method: identity.method,
                connected_at: SystemTime::now(),
            },
            opener,
            closed: CancellationToken::new(),
            accept_server_mappings: hello.accept_server_mappings,
            tunnels: Mutex::new(statuses.clone()),
            claims: Mutex::new(claims),
            notify,
        });
        if let Some(prev) =
            lock(&self.sessions.by_client).insert(identity.client_id.clone(), session.clone())
        {
            // Two sessions of one client raced through admission: the later one wins.
            prev.closed.cancel();
            drop(std::mem::take(&mut *lock(&prev.claims)));
        }
        self.metrics
            .handshakes_total
            .with_label_values(&[transport, "ok"])
            .inc();
        self.metrics
            .sessions_total
            .with_label_values(&[transport])
            .inc();
        self.metrics
            .sessions_active
            .with_label_values(&[transport])
            .inc();
        tracing::info!(
            client = %identity.client_id, session = session.info.id, transport, %remote,
            auth = identity.method, "session established"
        );
        let mut all = statuses;
        all.extend(self.mapping_statuses_for(&identity.client_id).await);
        Ok((
            SessionGuard {
                hub: self.clone(),
                session,
                notifications,
            },
            all,
        ))
    }

    async fn claim_tunnel(&self, who: &Identity, t: &TunnelRequest) -> Result<Claim, ClaimError> {
        let frontend = self.frontend_for(t.kind, t.frontend.as_deref())?.clone();
        let name = frontend.name().to_string();
        let owner = &who.client_id;
        let req = ClaimRequest {
            owner: owner.to_string(),
            tunnel: t.name.clone(),
            kind: t.kind,
            subdomain: t.subdomain.clone(),
            port: t.remote_port,
            bind: None,
            target_override: None,
            proxy_protocol: t.proxy_protocol,
            max_ports: who.max_ports,
            max_names: who.max_names,
            target: self.client_target(owner),
            reserve_on_release: true,
        };
        frontend.claim(req).await.inspect_err(|e| {
            self.metrics
                .claims_refused_total
                .with_label_values(&[&name, e.reason()])
                .inc();
        })
    }

    /// A tunnel of a hello that matches a lease of its client: the lease's endpoint and name,
    /// or why the kinds differ.
    fn leased(
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
        let frontend = self.frontend_for(r.kind, r.frontend.as_deref())?.clone();
        let claim = frontend
            .claim(ClaimRequest {
                owner: r.owner.clone(),
                tunnel: r.tunnel.clone(),
                kind: r.kind,
                subdomain: r.subdomain,
                port: r.port,
                bind: None,
                target_override: None,
                proxy_protocol: None,
                max_ports: None,
                max_names: None,
                target: self.client_target(&r.owner),
                reserve_on_release: false,
            })
            .await?;
        let out = Claimed::of(&claim);
        lock(&self.leases).insert(
            key,
            Lease {
                kind: r.kind,
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

    /// Ends the live session of `client_id` (its token expired or was revoked).
    pub fn cut(&self, client_id: &str) -> bool {
        match self.sessions.get(client_id) {
            Some(s) => {
                s.closed.cancel();
                true
            }
            None => false,
        }
    }

    /// The sessions, for `GET /clients`.
    pub fn sessions(&self) -> Vec<Arc<LiveSession>> {
        let mut v: Vec<_> = lock(&self.sessions.by_client).values().cloned().collect();
        v.sort_by(|a, b| a.info.client_id.cmp(&b.info.client_id));
        v
    }

    /// Every route of every frontend, for `GET /tunnels`.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.frontends.values().flat_map(|f| f.routes()).collect()
    }

    /// Ends every session (shutdown).
    pub fn close_all(&self) {
        for s in self.sessions() {
            s.closed.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_targets() {
        assert!(valid_tunnel_name("ssh"));
        assert!(valid_tunnel_name("web-1.a_b"));
        assert!(!valid_tunnel_name("-x"));
        assert!(!valid_tunnel_name(""));
        assert!(!valid_tunnel_name(&"a".repeat(64)));
        assert!(!valid_tunnel_name("a b"));
    }
}
