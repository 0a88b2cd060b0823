//! The hub: which tunnel clients are connected, through which session, and which routes
//! (claims on frontends) they hold. Transports call [`Hub::admit`] after reading a hello;
//! frontends reach clients through a [`Target`]; the admin API calls [`Hub::apply_mappings`].
//!
//! A client id may run any number of sessions (several machines, several transports). Claims
//! conflict per port and per name, not per client: a session asking for what another live
//! session of its client holds is refused with the holder named, unless it is the same tunnelc
//! reconnecting (the same instance id in its hello) or the holder no longer answers a probe;
//! then the holder is replaced and its claims pass to the new session at once.

use crate::auth::{AuthError, Authenticator, Identity};
use crate::frontend::{Claim, ClaimError, ClaimRequest, Frontend, RouteInfo};
use crate::io::BoxIo;
use crate::limits::DataLimits;
pub(crate) use crate::live_sessions::{lock, HeldClaim, Sessions, Via};
pub use crate::live_sessions::{LiveSession, SessionTarget};
use crate::mapping::AdminState;
use crate::metrics::Metrics;
use crate::proto::{Control, Hello, TunnelKind, TunnelRequest, TunnelStatus, VERSION};
use crate::session::{OpenError, OpenStream, SessionInfo, StreamHeader};
use crate::stream_budget::StreamBudget;
use crate::throttle::{FailureThrottle, LogBudget};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod claim_retry;

/// Maximum tunnels one hello may request.
pub const MAX_TUNNELS_PER_SESSION: usize = 64;

/// Longest instance id a hello may carry (tunnelc sends 32 hex digits).
pub const MAX_INSTANCE_ID: usize = 128;

/// How long a session holding a claim has to answer before a newer session of the same client
/// takes the claim over.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

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
        crate::http_forward::http1_over(io, req, crate::limits::DEFAULT_MAX_HEAD).await
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
        self.hub.sessions.remove(&self.session);
        self.session.replace();
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
    auth: Arc<Authenticator>,
    leases: Mutex<HashMap<(String, String), Lease>>,
    pub(crate) frontends: BTreeMap<String, Arc<dyn Frontend>>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) admin: tokio::sync::Mutex<AdminState>,
    next_id: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Seconds between client keepalive pings.
    pub keepalive_secs: u64,
    /// Head sizes, stream caps and the stall timeout, for every transport and frontend.
    pub limits: DataLimits,
    /// Failed authentications per source address, shared by every component that checks
    /// credentials.
    pub throttle: Arc<FailureThrottle>,
    /// Log lines of refused clients.
    pub refusal_log: Arc<LogBudget>,
}

/// Refusal lines logged per [`REFUSAL_WINDOW`]; the rest are summarized.
pub const REFUSAL_LINES: u64 = 20;
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// What a client over its failure budget is told.
pub fn throttled_reason(ip: std::net::IpAddr, wait: std::time::Duration) -> String {
    format!(
        "too many failed authentications from {ip}: retry in {} s",
        wait.as_secs().max(1)
    )
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
        limits: DataLimits,
        throttle: Arc<FailureThrottle>,
    ) -> Arc<Self> {
        Arc::new(Self {
            auth: Arc::new(auth),
            throttle,
            refusal_log: Arc::new(LogBudget::new(
                "client refusals",
                REFUSAL_LINES,
                REFUSAL_WINDOW,
            )),
            leases: Mutex::default(),
            frontends,
            sessions: Arc::default(),
            admin: tokio::sync::Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
            keepalive_secs,
            limits,
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

    /// Whether `client_id`'s newest session still answers (asked when another connection
    /// wants what it holds, e.g. a TPoT name): a session that does not answer within
    /// [`PROBE_DEADLINE`] is ended and its claims released, and the answer is false.
    pub async fn holder_alive(&self, client_id: &str) -> bool {
        let Some(holder) = self.sessions.get(client_id) else {
            return false;
        };
        self.probe_or_replace(&holder).await
    }

    /// Probes `holder`; replaces it when it does not answer. True when it answered.
    async fn probe_or_replace(&self, holder: &LiveSession) -> bool {
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

    /// A target that follows `client_id` across sessions (its newest one).
    pub fn client_target(&self, client_id: &str) -> Arc<dyn Target> {
        Arc::new(SessionTarget(Via::Client {
            sessions: Arc::downgrade(&self.sessions),
            client_id: client_id.to_string(),
        }))
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
        if let Err(wait) = self.throttle.check(remote.ip()) {
            return Err(self.refuse(
                transport,
                "throttled",
                throttled_reason(remote.ip(), wait),
                false,
            ));
        }
        let identity = self
            .auth
            .authenticate_async(hello.token.as_deref(), cert_cn)
            .await
            .map_err(|e: AuthError| {
                if e.is_guess() {
                    self.throttle.failed(remote.ip());
                }
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
                let welcome = self.welcome(guard.session.info.client_id.clone(), tunnels);
                let written = tokio::time::timeout(ANSWER_WAIT, write_frame(io, &welcome))
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::proto::FrameError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client read no welcome in time",
                        )))
                    });
                match written {
                    Ok(()) => Some(guard),
                    Err(e) => {
                        tracing::warn!(transport, %remote, error = %e, "could not send welcome");
                        None
                    }
                }
            }
            Err(rej) => {
                if self.refusal_log.allow() {
                    tracing::warn!(transport, %remote, outcome = rej.outcome, "client rejected: {}", rej.reason);
                }
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

    /// The welcome for an admitted session.
    pub fn welcome(
        &self,
        client_id: String,
        tunnels: Vec<TunnelStatus>,
    ) -> crate::proto::ServerHello {
        crate::proto::ServerHello::Welcome {
            client_id,
            tunnels,
            keepalive_secs: self.keepalive_secs,
            max_request_head: u32::try_from(self.limits.max_request_head).ok(),
            max_response_head: u32::try_from(self.limits.max_response_head).ok(),
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
        if let Some(i) = &hello.instance {
            if i.is_empty() || i.len() > MAX_INSTANCE_ID || !i.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(self.refuse(
                    transport,
                    "bad_request",
                    format!(
                        "instance id is invalid: use 1-{MAX_INSTANCE_ID} printable ASCII characters"
                    ),
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

        // The same tunnelc reconnecting takes its claims back at once.
        if let Some(instance) = hello.instance.as_deref() {
            for old in self.sessions.all(&identity.client_id) {
                if old.info.instance.as_deref() == Some(instance) {
                    tracing::info!(client = %identity.client_id, old_session = old.info.id, "the same tunnelc reconnected: its new session replaces the old one");
                    self.metrics
                        .session_conflicts_total
                        .with_label_values(&["replaced"])
                        .inc();
                    old.replace();
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
                instance: hello.instance.clone(),
            },
            opener,
            closed: CancellationToken::new(),
            accept_server_mappings: hello.accept_server_mappings,
            tunnels: Mutex::new(Vec::new()),
            claims: Mutex::new(Vec::new()),
            leased: Mutex::new(Vec::new()),
            budget: StreamBudget::new(&self.limits),
            limits: self.limits,
            transport_name: transport.to_string(),
            refused: self.metrics.streams_refused_total.clone(),
            stalled: self
                .metrics
                .streams_stalled_total
                .with_label_values(&[transport]),
            notify,
        });

        let mut statuses = Vec::with_capacity(hello.tunnels.len());
        let mut retry = Vec::new();
        // Only a client that says it reads `retrying` is sent it (older tunnelc refuse
        // unknown fields); the claim is retried for every client.
        let tells_retrying = hello.has_capability(crate::proto::CAP_RETRYING);
        for t in &hello.tunnels {
            match self.claim_for(&session, &identity, t).await {
                Ok((endpoint, subdomain)) => {
                    statuses.push(TunnelStatus {
                        name: t.name.clone(),
                        endpoint: Some(endpoint),
                        error: None,
                        subdomain,
                        retrying: false,
                    });
                }
                Err(e) => {
                    let retrying = claim_retry::retriable(&e);
                    tracing::warn!(client = %identity.client_id, tunnel = %t.name, error = %e, retrying, "tunnel refused");
                    if retrying {
                        retry.push(t.clone());
                    }
                    statuses.push(TunnelStatus {
                        name: t.name.clone(),
                        endpoint: None,
                        error: Some(e.to_string()),
                        subdomain: None,
                        retrying: retrying && tells_retrying,
                    });
                }
            }
        }
        *lock(&session.tunnels) = statuses.clone();
        self.sessions.insert(session.clone());
        // From here on the guard ends the session however this future ends.
        let guard = SessionGuard {
            hub: self.clone(),
            session: session.clone(),
            notifications,
        };
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
        for t in retry {
            self.retry_claim(&session, &identity, t);
        }
        let mut all = statuses;
        all.extend(self.mapping_statuses_for(&identity.client_id).await);
        Ok((guard, all))
    }

    /// Claims one tunnel of a hello for `session`: its lease, or a new claim on a frontend.
    /// When another live session of the same client holds the port or name, that holder is
    /// probed: one that answers keeps it (and the refusal names it), one that does not is
    /// replaced and the claim tried again.
    async fn claim_for(
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
            lock(&session.leased).push(t.name.clone());
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
                    lock(&session.claims).push(HeldClaim { frontend, claim });
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
    fn conflict(&self, what: String, holder: &LiveSession) -> ClaimError {
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

    async fn claim_tunnel(
        &self,
        session: &Arc<LiveSession>,
        who: &Identity,
        t: &TunnelRequest,
    ) -> Result<Claim, ClaimError> {
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
            target: Arc::new(SessionTarget(Via::Session(Arc::downgrade(session)))),
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

    /// Ends every live session of `client_id` (its token expired or was revoked).
    pub fn cut(&self, client_id: &str) -> bool {
        let all = self.sessions.all(client_id);
        for s in &all {
            s.closed.cancel();
        }
        !all.is_empty()
    }

    /// Every live session, by client then age, for `GET /clients`.
    pub fn sessions(&self) -> Vec<Arc<LiveSession>> {
        self.sessions.every()
    }

    /// Clients whose sessions all ended at some point (the last few thousand), with when;
    /// a client listed here may have connected again since.
    pub fn departed_clients(&self) -> Vec<(String, std::time::SystemTime)> {
        self.sessions.departed()
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
