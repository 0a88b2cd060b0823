//! The hub: which tunnel clients are connected, through which session, and which routes
//! (claims on frontends) they hold. Transports call [`Hub::admit`] after reading a hello;
//! frontends reach clients through a [`Target`]; the daemon's admin mappings add their ports
//! to sessions' tunnel lists through [`ServerMappings`].
//!
//! A client id may run any number of sessions (several machines, several transports). Claims
//! conflict per port and per name, not per client: a session asking for what another live
//! session of its client holds is refused with the holder named, unless it is the same tunnelc
//! reconnecting (the same instance id in its hello) or the holder no longer answers a probe;
//! then the holder is replaced and its claims pass to the new session at once.

use crate::auth::{AuthError, Authenticator, Identity};
use crate::frontend::{Claim, ClaimError, ClaimRequest, Frontend, RouteInfo};
use crate::io::BoxIo;
use crate::limits::LiveLimits;
pub(crate) use crate::live_sessions::{lock, HeldClaim, Sessions, Via};
pub use crate::live_sessions::{LiveSession, SessionTarget};
use crate::metrics::Metrics;
use crate::proto::{Control, Hello, TunnelKind, TunnelRequest, TunnelStatus, VERSION};
use crate::session::{OpenError, OpenStream, SessionInfo, StreamHeader};
use crate::stream_budget::StreamBudget;
use crate::throttle::{FailureThrottle, LogBudget};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod added;
mod admit;
mod claim_retry;
mod claims;
mod leases;
mod reclaim;

pub use added::Added;
pub use leases::{lease_name, Claimed, LeaseRequest};

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

    /// Where the relay of a visitor this target serves runs best: the home of the session
    /// that carries its stream ([`crate::home`]), when it has one.
    fn home(&self) -> Option<crate::home::Home> {
        None
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

/// The ports tunneld itself defines for clients (the daemon's admin mappings), as the hub
/// sees them: each session's tunnel list includes the mapped ports that name its client.
#[async_trait]
pub trait ServerMappings: Send + Sync {
    /// The statuses of the mapped ports that name `client`, with their endpoints.
    async fn statuses_for(&self, client: &str) -> Vec<TunnelStatus>;
    /// Whether a mapped port is on frontend `frontend`.
    async fn uses_frontend(&self, frontend: &str) -> bool;
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

pub struct Hub {
    auth: Arc<Authenticator>,
    leases: Mutex<HashMap<(String, String), leases::Lease>>,
    /// Replaced whole when a reload adds a frontend ([`Hub::add_frontend`]).
    frontends: RwLock<Arc<BTreeMap<String, Arc<dyn Frontend>>>>,
    pub(crate) sessions: Arc<Sessions>,
    /// Installed once by the daemon ([`Hub::set_server_mappings`]); none adds nothing.
    server_mappings: OnceLock<Arc<dyn ServerMappings>>,
    /// Installed once by the daemon in cluster mode ([`Hub::set_cluster`]).
    pub(crate) cluster: OnceLock<Arc<dyn crate::cluster_hook::ClusterRoutes>>,
    next_id: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// The server's limits, for every transport and frontend (a reload replaces them).
    pub limits: LiveLimits,
    /// Failed authentications per source address, shared by every component that checks
    /// credentials.
    pub throttle: Arc<FailureThrottle>,
    /// Log lines of refused clients.
    pub refusal_log: Arc<LogBudget>,
    /// Set when the node leaves (a cluster node's drain): new sessions are refused with
    /// this reason, retriable, so tunnelc tries its next server.
    leaving: OnceLock<String>,
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
        limits: LiveLimits,
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
            frontends: RwLock::new(Arc::new(frontends)),
            sessions: Arc::default(),
            server_mappings: OnceLock::new(),
            leaving: OnceLock::new(),
            cluster: OnceLock::new(),
            next_id: AtomicU64::new(1),
            metrics,
            limits,
        })
    }

    /// Installs the server-defined mappings whose statuses join every session's tunnel list.
    /// Only the first one installed counts: false if one was already.
    pub fn set_server_mappings(&self, mappings: Arc<dyn ServerMappings>) -> bool {
        self.server_mappings.set(mappings).is_ok()
    }

    /// Cluster mode: a target reaching `client`'s sessions at another node, when it has one
    /// there (none when it has none, or outside cluster mode).
    pub fn remote_client(&self, client: &str) -> Option<Arc<dyn Target>> {
        self.cluster.get()?.client_remote(client)
    }

    /// Whether a cluster's routing table is installed (cluster mode).
    pub fn in_cluster(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// Installs the cluster's routing table: every client tunnel claimed from now on is
    /// registered cluster-wide too. Only the first one counts: false if one was already.
    pub fn set_cluster(&self, cluster: Arc<dyn crate::cluster_hook::ClusterRoutes>) -> bool {
        self.cluster.set(cluster).is_ok()
    }

    /// The node is leaving: new sessions are refused (retriable) with `reason`, and every
    /// live session whose tunnelc reads it is told to open a session elsewhere now. Answers
    /// the ids of the sessions told.
    pub fn hand_over_all(&self, reason: &str) -> Vec<u64> {
        let _ = self.leaving.set(reason.to_string());
        self.sessions
            .every()
            .iter()
            .filter(|s| s.hand_over(reason))
            .map(|s| s.info.id)
            .collect()
    }

    /// The statuses the server mappings add for `client` (none when none are installed).
    pub(crate) async fn server_mapping_statuses(&self, client: &str) -> Vec<TunnelStatus> {
        match self.server_mappings.get() {
            Some(m) => m.statuses_for(client).await,
            None => Vec::new(),
        }
    }

    /// The frontend configured as `name`.
    pub fn frontend(&self, name: &str) -> Option<Arc<dyn Frontend>> {
        self.frontends().get(name).cloned()
    }

    /// Every frontend, by name (a snapshot: a reload may add one later).
    pub fn frontends(&self) -> Arc<BTreeMap<String, Arc<dyn Frontend>>> {
        crate::sync::read(&self.frontends).clone()
    }

    /// Adds a frontend built after start (a reload); false if `name` is taken.
    pub fn add_frontend(&self, name: &str, frontend: Arc<dyn Frontend>) -> bool {
        let mut all = crate::sync::write(&self.frontends);
        if all.contains_key(name) {
            return false;
        }
        let mut next = (**all).clone();
        next.insert(name.to_string(), frontend);
        *all = Arc::new(next);
        true
    }

    /// Takes frontend `name` out of the routing table (a reload removed it): no claim reaches
    /// it from now on. Answers it, if it was there.
    pub fn remove_frontend(&self, name: &str) -> Option<Arc<dyn Frontend>> {
        let mut all = crate::sync::write(&self.frontends);
        let mut next = (**all).clone();
        let gone = next.remove(name);
        *all = Arc::new(next);
        gone
    }

    /// Tells every session holding tunnels on frontend `name` that they are gone (`why`),
    /// releasing those claims; other tunnels and sessions are untouched. Answers how many
    /// sessions lost a tunnel.
    pub async fn release_frontend(&self, name: &str, why: &str) -> usize {
        let mut touched = 0;
        for s in self.sessions() {
            if let Some(mut tunnels) = s.drop_frontend(name, why) {
                tunnels.extend(self.server_mapping_statuses(&s.info.client_id).await);
                s.notify_tunnels(tunnels);
                touched += 1;
            }
        }
        touched
    }

    /// What besides sessions holds routes on frontend `name` (so a reload may not take it
    /// away live): provisioned tunnels' leases, admin mappings.
    pub async fn frontend_held_by(&self, name: &str) -> Option<&'static str> {
        if crate::sync::lock(&self.leases)
            .values()
            .any(|l| l.frontend == name)
        {
            return Some("provisioned tunnels (leases) hold routes on it");
        }
        match self.server_mappings.get() {
            Some(m) if m.uses_frontend(name).await => Some("admin mappings (PUT /tunnels) use it"),
            _ => None,
        }
    }

    /// Drops `session`'s claims on frontends no longer in the table; answers its tunnel list
    /// when any went.
    pub(crate) fn drop_claims_on_removed(
        &self,
        session: &LiveSession,
    ) -> Option<Vec<TunnelStatus>> {
        let present = self.frontends();
        let gone: std::collections::BTreeSet<String> = crate::sync::lock(&session.claims)
            .iter()
            .filter(|h| !present.contains_key(&h.frontend))
            .map(|h| h.frontend.clone())
            .collect();
        let mut out = None;
        for f in gone {
            let why = format!("frontend `{f}` was removed from tunneld's configuration");
            out = session.drop_frontend(&f, &why).or(out);
        }
        out
    }

    /// The newest live session of `client_id` (admin mappings name clients, not sessions).
    pub fn client_session(&self, client_id: &str) -> Option<Arc<LiveSession>> {
        self.sessions.get(client_id)
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

    /// A target that follows `client_id` across sessions (its newest one).
    pub fn client_target(&self, client_id: &str) -> Arc<dyn Target> {
        Arc::new(SessionTarget(Via::Client {
            sessions: Arc::downgrade(&self.sessions),
            client_id: client_id.to_string(),
        }))
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
        self.frontends().values().flat_map(|f| f.routes()).collect()
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
