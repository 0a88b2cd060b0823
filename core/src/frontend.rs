//! The frontend plug-in trait: how visitors reach a tunnel.
//!
//! A frontend serves public listeners and hands out [`Claim`]s: a tunnel asks for a port (or,
//! later, a name), and the claim holds it until dropped. Dropping a claim releases it, so a
//! session that ends cannot leak a route.

use crate::hub::Target;
use crate::metrics::Metrics;
use crate::proto::TunnelKind;
use crate::proxy_protocol;
use async_trait::async_trait;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a frontend gets from the daemon.
#[derive(Clone)]
pub struct FrontendContext {
    pub metrics: Arc<Metrics>,
    /// Cancelled when the drain begins: new visitors are turned away from then on.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain ends: listeners that also take tunnel clients (a shared
    /// https port, rendezvous parking) keep accepting them until then.
    pub closing: CancellationToken,
    /// Visitors: the drain waits for everything tracked here (hold a `token()` per visitor
    /// connection; never track a tunnel client's connection here).
    pub tasks: TaskTracker,
    /// The server's limits (`limits:`), read per connection: a reload replaces them.
    pub limits: crate::limits::LiveLimits,
}

/// A request to route visitors to a tunnel.
#[derive(Clone)]
pub struct ClaimRequest {
    /// Who owns the route (a client id).
    pub owner: String,
    /// The tunnel's name (unique per owner).
    pub tunnel: String,
    /// What the tunnel carries.
    pub kind: TunnelKind,
    /// Where the tunnel asks to be reached.
    pub ask: Ask,
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// The owner's quotas; each frontend applies the one for what it hands out.
    pub quota: Quota,
    /// Where visitor streams go.
    pub target: Arc<dyn Target>,
    /// Admin mappings are not reserved after release; client tunnels are, for a grace period.
    pub reserve_on_release: bool,
}

/// What a tunnel asks a frontend for. A frontend that cannot give it refuses the claim
/// (a name frontend asked for a port); a ports frontend asked for a name picks a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Whatever the frontend picks: a free port, or the tunnel's remembered or a random name.
    Any,
    /// A public name (subdomain frontends), as the client wrote it.
    Name(String),
    /// A port, on the frontend's own bind address or on `bind` (admin mappings).
    Port { port: u16, bind: Option<IpAddr> },
}

impl Ask {
    /// What a tunnel request names: its port if any, else its name if any, else anything.
    pub fn of(name: Option<String>, port: Option<u16>) -> Self {
        match (port, name) {
            (Some(port), _) => Ask::Port { port, bind: None },
            (None, Some(name)) => Ask::Name(name),
            (None, None) => Ask::Any,
        }
    }

    /// The port asked for.
    pub fn port(&self) -> Option<u16> {
        match self {
            Ask::Port { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// The bind address asked for.
    pub fn bind(&self) -> Option<IpAddr> {
        match self {
            Ask::Port { bind, .. } => *bind,
            _ => None,
        }
    }

    /// The name asked for.
    pub fn name(&self) -> Option<&str> {
        match self {
            Ask::Name(n) => Some(n),
            _ => None,
        }
    }
}

/// An owner's quotas (`None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Ports on ports frontends.
    pub ports: Option<u32>,
    /// Names on subdomain frontends.
    pub names: Option<u32>,
}

/// A refusal, in words tunnelc shows to its user.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("port {port} is outside the range {range} of frontend `{frontend}`")]
    OutOfRange {
        port: u16,
        range: String,
        frontend: String,
    },
    #[error("port {0} is held by another client")]
    HeldByOther(u16),
    #[error("port {0} is already used by another tunnel of this client")]
    Duplicate(u16),
    #[error("port {port} cannot be bound: {reason}")]
    Unavailable { port: u16, reason: String },
    /// The port is in use by another program (or a listener not yet gone): may clear.
    #[error("port {port} cannot be bound: {reason}")]
    Busy { port: u16, reason: String },
    #[error("name `{0}` is held by another client")]
    NameHeld(String),
    #[error("no free port left in {0}")]
    Exhausted(String),
    #[error("quota exceeded ({limit}): this client may hold at most {max} {what} at once")]
    Quota {
        /// The limit's name as `tunneld token add` spells it (`max_ports`, `max_names`).
        limit: &'static str,
        /// What it counts (`ports`, `names`).
        what: &'static str,
        max: u32,
    },
    #[error("no frontend serves tunnels of type `{0}`")]
    NoFrontend(String),
    #[error("frontend `{0}` does not exist")]
    UnknownFrontend(String),
    /// Another live session of the same client holds it (the hub names the session).
    #[error("{} is held by another session of this client", ClaimError::HeldBySession { port: *port, name: name.clone() }.subject())]
    HeldBySession {
        port: Option<u16>,
        name: Option<String>,
    },
    /// A claim refused because another session of the client holds it, with that session
    /// named.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// Cluster mode: the shared routing table (Redis) cannot be reached to register the
    /// claim; tried again in the background like a busy port.
    #[error("the cluster's shared state cannot be reached ({0}); retrying")]
    ClusterDown(String),
}

impl ClaimError {
    /// A short label for metrics and for the admin API's HTTP status choice.
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimError::OutOfRange { .. } => "out_of_range",
            ClaimError::HeldByOther(_) => "held_by_other",
            ClaimError::Duplicate(_) => "duplicate",
            ClaimError::Unavailable { .. } => "unavailable",
            ClaimError::Busy { .. } => "busy",
            ClaimError::NameHeld(_) => "name_held",
            ClaimError::Exhausted(_) => "exhausted",
            ClaimError::Quota { .. } => "quota",
            ClaimError::NoFrontend(_) => "no_frontend",
            ClaimError::UnknownFrontend(_) => "unknown_frontend",
            ClaimError::HeldBySession { .. } | ClaimError::Conflict(_) => "held_by_session",
            ClaimError::Invalid(_) => "invalid",
            ClaimError::ClusterDown(_) => "cluster_down",
        }
    }

    /// What a [`ClaimError::HeldBySession`] is about: `port 20080` or `name \`app\``.
    pub fn subject(&self) -> String {
        match self {
            ClaimError::HeldBySession { port: Some(p), .. } => format!("port {p}"),
            ClaimError::HeldBySession { name: Some(n), .. } => format!("name `{n}`"),
            _ => "the route".to_string(),
        }
    }
}

/// A held route. Dropping it releases the route.
pub struct Claim {
    /// Where visitors connect, e.g. `tcp://127.0.0.1:20000`.
    pub endpoint: String,
    /// The port, when the frontend allocates ports.
    pub port: Option<u16>,
    /// The name, when the frontend routes by name (subdomains).
    pub name: Option<String>,
    /// Releases the route when dropped.
    pub release: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// One row of `/tunnels`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    pub frontend: String,
    pub owner: String,
    pub tunnel: String,
    pub endpoint: String,
    pub state: &'static str,
}

/// One tunnel serving a name, as [`Frontend::route_name`] reports it.
#[derive(Clone)]
pub struct NameMember {
    pub owner: String,
    pub tunnel: String,
    pub target: Arc<dyn Target>,
    pub proxy_protocol: Option<proxy_protocol::Version>,
}

/// What a name resolves to on a subdomain frontend.
pub enum NameRoute {
    /// Tunnels of `kind` to try in order (a pool's round-robin start first).
    Active {
        kind: TunnelKind,
        members: Vec<NameMember>,
    },
    /// The owner is offline; the name is kept for it.
    Reserved,
    Unknown,
}

/// The frontend trait. Implementations live in `frontends/*`.
#[async_trait]
pub trait Frontend: Send + Sync + 'static {
    /// The `type:` of the component (`ports`, `https-subdomain`, `rendezvous`).
    fn kind(&self) -> &'static str;
    /// The component's name in the config.
    fn name(&self) -> &str;
    /// Whether this frontend serves tunnels of `kind`.
    fn serves(&self, kind: TunnelKind) -> bool;
    /// Whether a tunnel of `kind` that names no frontend may land here.
    fn is_default_for(&self, kind: TunnelKind) -> bool {
        self.serves(kind)
    }
    /// The shared listener's address, for frontends that have one.
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// Ports frontends: the address a claimed port binds when the claim names none.
    fn default_bind(&self) -> Option<std::net::IpAddr> {
        None
    }
    /// Binds shared listeners and runs until shutdown (ports frontends have none and just wait).
    async fn serve(self: Arc<Self>, cx: FrontendContext);
    /// Claims a route for a tunnel.
    async fn claim(self: Arc<Self>, req: ClaimRequest) -> Result<Claim, ClaimError>;
    /// The routes this frontend holds, for `/tunnels`.
    fn routes(&self) -> Vec<RouteInfo>;
    /// Subdomain frontends: the route of a visitor asking for `rest.<domain>` on another
    /// listener (the websocket transport's port). Each call moves a pool's round-robin on.
    fn route_name(&self, rest: &str) -> NameRoute {
        let _ = rest;
        NameRoute::Unknown
    }
}
