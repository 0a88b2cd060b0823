//! Server-defined routes (`PUT /tunnels`): ports that tunneld opens and points at one client
//! or a pool of clients, optionally split by TLS server name.
//!
//! The admin list is declarative. Mappings are grouped by public port; each port holds one
//! claim on a ports frontend and one [`RouteTable`] as its target. A new list that keeps a
//! port but changes where it points updates the table in place, so the listener never
//! closes and the next visitor already goes to the new place (hot repoint). Ports no longer
//! listed are closed; a failed update changes nothing.
//!
//! [`AdminMappings`] owns them for the daemon (the admin API and threshold's management API
//! act on it) and is installed into the hub as its [`ServerMappings`], so each session's
//! tunnel list includes the mapped ports that name its client.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use tunneld_core::frontend::Claim;
use tunneld_core::hostglob::HostGlob;
use tunneld_core::hub::{valid_tunnel_name, Hub, ServerMappings};
use tunneld_core::proto::{TunnelKind, TunnelStatus};
use tunneld_core::proxy_protocol;

mod apply;
mod route_table;
mod stored;

pub use route_table::RouteTable;

/// Most clients one pool may name.
pub const MAX_POOL_MEMBERS: usize = 16;
/// How long one pool member may take to open a stream before the next one is tried.
pub const POOL_MEMBER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// A server-defined port mapping (`PUT /tunnels`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The client whose tunnelc carries the traffic (or use `clients` for a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// A pool: new visitors go round-robin to the connected members, skipping any that fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    pub listen_port: u16,
    /// Defaults to the frontend's bind address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<IpAddr>,
    /// Route only TLS visitors whose server name matches (`*.example.com`, an exact name,
    /// or `*`, the fallback). Several mappings may share a port with different patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_glob: Option<String>,
    /// `host:port` that tunnelc connects to, or the name of a service (tunnel) of the client.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// Which ports frontend; defaults to the only one serving `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
}

type PortKey = (Option<String>, Option<IpAddr>, u16);

impl Mapping {
    /// Every client named, `client` first.
    pub fn members(&self) -> Vec<String> {
        self.client
            .iter()
            .chain(self.clients.iter())
            .cloned()
            .collect()
    }

    fn glob(&self) -> Result<HostGlob, MappingError> {
        match self.hostname_glob.as_deref() {
            None | Some("") => Ok(HostGlob::Any),
            Some(g) => HostGlob::parse(g).map_err(|e| merr(400, e.to_string())),
        }
    }

    /// The route's name in metrics, `/tunnels` and tunnelc's tunnel list.
    pub fn route_name(&self) -> String {
        match self.glob() {
            Ok(HostGlob::Any) | Err(_) => format!("mapping-{}", self.listen_port),
            Ok(g) => format!("mapping-{}-{g}", self.listen_port),
        }
    }

    fn validate(&self) -> Result<(), MappingError> {
        let members = self.members();
        if members.is_empty() {
            return Err(merr(
                400,
                format!(
                    "mapping for port {} names no client: set `client` or `clients`",
                    self.listen_port
                ),
            ));
        }
        if members.len() > MAX_POOL_MEMBERS {
            return Err(merr(
                400,
                format!("a pool may name at most {MAX_POOL_MEMBERS} clients"),
            ));
        }
        if members.iter().collect::<HashSet<_>>().len() != members.len() {
            return Err(merr(
                400,
                format!("port {}: a client is named twice", self.listen_port),
            ));
        }
        if self.listen_port == 0 {
            return Err(merr(
                400,
                "listen_port must be a port number from 1 to 65535",
            ));
        }
        if self.target.parse::<SocketAddr>().is_err()
            && !valid_host_port(&self.target)
            && !valid_tunnel_name(&self.target)
        {
            return Err(merr(
                400,
                format!(
                    "target `{}` is neither a host:port address nor a service name",
                    self.target
                ),
            ));
        }
        self.glob().map(|_| ())
    }
}

/// An admin API failure with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub status: u16,
    pub message: String,
}

pub(crate) fn merr(status: u16, message: impl Into<String>) -> MappingError {
    MappingError {
        status,
        message: message.into(),
    }
}

/// One public port of the admin list.
struct PortGroup {
    key: PortKey,
    mappings: Vec<Mapping>,
    table: Arc<RouteTable>,
    claim: Claim,
}

#[derive(Default)]
struct AdminState {
    ports: Vec<PortGroup>,
}

/// The admin mappings of one hub: the ports opened for them, and a handle to the hub they
/// route through. Updates are applied by [`AdminMappings::apply`] (see `apply.rs`).
pub struct AdminMappings {
    hub: Weak<Hub>,
    state: tokio::sync::Mutex<AdminState>,
}

impl AdminMappings {
    /// Empty mappings for `hub`, installed into it as its [`ServerMappings`] (before any
    /// transport accepts, so every session's tunnel list includes them).
    pub fn install(hub: &Arc<Hub>) -> anyhow::Result<Arc<Self>> {
        let mappings = Arc::new(Self {
            hub: Arc::downgrade(hub),
            state: tokio::sync::Mutex::default(),
        });
        anyhow::ensure!(
            hub.set_server_mappings(mappings.clone()),
            "the hub has admin mappings installed already"
        );
        Ok(mappings)
    }

    /// The hub; gone only once tunneld has shut down.
    fn hub(&self) -> Result<Arc<Hub>, MappingError> {
        self.hub
            .upgrade()
            .ok_or_else(|| merr(503, "tunneld is shutting down"))
    }
}

/// One route of a port: a name pattern and the pool behind it.
struct Route {
    glob: HostGlob,
    name: String,
    members: Vec<String>,
    target: String,
    proxy_protocol: Option<proxy_protocol::Version>,
    next: AtomicUsize,
}

impl Route {
    fn from_mapping(m: &Mapping) -> Result<Self, MappingError> {
        Ok(Self {
            glob: m.glob()?,
            name: m.route_name(),
            members: m.members(),
            target: m.target.clone(),
            proxy_protocol: m.proxy_protocol,
            next: AtomicUsize::new(0),
        })
    }
}

pub(crate) fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: &str) -> Mapping {
        serde_json::from_str(json).expect(json)
    }

    #[test]
    fn targets_and_members() {
        assert!(valid_host_port("localhost:8080"));
        assert!(!valid_host_port("localhost"));
        assert!(!valid_host_port("a/b:80"));
        assert!(!valid_host_port("host:0"));
        let one = m(r#"{"client":"a","listen_port":1,"target":"127.0.0.1:22"}"#);
        assert!(one.validate().is_ok());
        assert_eq!(one.members(), ["a"]);
        let pool = m(r#"{"clients":["a","b"],"listen_port":1,"target":"web"}"#);
        assert!(pool.validate().is_ok());
        let none = m(r#"{"listen_port":1,"target":"web"}"#);
        assert_eq!(none.validate().unwrap_err().status, 400);
        let twice = m(r#"{"client":"a","clients":["a"],"listen_port":1,"target":"web"}"#);
        assert!(twice.validate().unwrap_err().message.contains("twice"));
        let bad = m(r#"{"client":"a","listen_port":1,"target":"a b"}"#);
        assert_eq!(bad.validate().unwrap_err().status, 400);
        let glob = m(r#"{"client":"a","listen_port":1,"target":"web","hostname_glob":"x*y"}"#);
        assert!(glob.validate().unwrap_err().message.contains("x*y"));
        let named =
            m(r#"{"client":"a","listen_port":7,"target":"web","hostname_glob":"*.A.test"}"#);
        assert_eq!(named.route_name(), "mapping-7-*.a.test");
    }
}
