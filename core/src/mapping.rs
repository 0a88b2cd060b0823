//! Server-defined routes (`PUT /tunnels`): ports that tunneld opens and points at one client
//! or a pool of clients, optionally split by TLS server name.
//!
//! The admin list is declarative. Mappings are grouped by public port; each port holds one
//! claim on a ports frontend and one [`RouteTable`] as its target. A new list that keeps a
//! port but changes where it points updates the table in place, so the listener never
//! closes and the next visitor already goes to the new place (hot repoint). Ports no longer
//! listed are closed; a failed update changes nothing.

use crate::frontend::{Claim, ClaimError, ClaimRequest};
use crate::hostglob::{best_match, HostGlob};
use crate::hub::{valid_tunnel_name, Hub, Sessions, Target};
use crate::io::BoxIo;
use crate::metrics::Metrics;
use crate::proto::{Control, TunnelKind, TunnelStatus};
use crate::proxy_protocol;
use crate::session::{OpenError, StreamHeader};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

    fn port_key(&self) -> PortKey {
        (self.frontend.clone(), self.listen_address, self.listen_port)
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
pub(crate) struct AdminState {
    ports: Vec<PortGroup>,
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

/// The target of an admin port: picks the route by server name, then a pool member.
pub struct RouteTable {
    routes: Mutex<Arc<Vec<Route>>>,
    sessions: Weak<Sessions>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RouteTable {
    fn current(&self) -> Arc<Vec<Route>> {
        lock(&self.routes).clone()
    }

    fn replace(&self, routes: Vec<Route>) {
        *lock(&self.routes) = Arc::new(routes);
    }
}

#[async_trait]
impl Target for RouteTable {
    fn routes_by_name(&self) -> bool {
        let routes = self.current();
        !(routes.len() == 1 && routes[0].glob == HostGlob::Any)
    }

    async fn open(
        &self,
        mut header: StreamHeader,
        server_name: Option<&str>,
    ) -> Result<BoxIo, OpenError> {
        let routes = self.current();
        let route = best_match(routes.iter().map(|r| &r.glob), server_name)
            .and_then(|i| routes.get(i))
            .ok_or_else(|| OpenError::NoRoute(server_name.map(str::to_string)))?;
        header.tunnel = route.name.clone();
        header.target = Some(route.target.clone());
        header.proxy_protocol = route.proxy_protocol;
        let sessions = self.sessions.upgrade().ok_or(OpenError::Offline)?;
        let n = route.members.len();
        let start = route.next.fetch_add(1, Ordering::Relaxed);
        let mut last = OpenError::Offline;
        for i in 0..n {
            let member = &route.members[(start + i) % n];
            let Some(session) = sessions.get(member) else {
                if n > 1 {
                    self.metrics
                        .pool_failovers_total
                        .with_label_values(&[&route.name, "offline"])
                        .inc();
                }
                continue;
            };
            // In a pool one member may not hold the whole visitor's wait.
            let attempt = session.open(header.clone());
            let opened = if n > 1 {
                tokio::time::timeout(POOL_MEMBER_TIMEOUT, attempt)
                    .await
                    .unwrap_or(Err(OpenError::Timeout))
            } else {
                attempt.await
            };
            match opened {
                Ok(io) => {
                    self.metrics
                        .pool_streams_total
                        .with_label_values(&[&route.name, member])
                        .inc();
                    return Ok(io);
                }
                Err(e) => {
                    tracing::debug!(route = %route.name, client = %member, error = %e, "pool member failed");
                    if n > 1 {
                        self.metrics
                            .pool_failovers_total
                            .with_label_values(&[&route.name, e.reason()])
                            .inc();
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

impl Hub {
    /// The current admin mappings with their public endpoints.
    pub async fn mappings(&self) -> Vec<(Mapping, String)> {
        self.admin
            .lock()
            .await
            .ports
            .iter()
            .flat_map(|g| {
                g.mappings
                    .iter()
                    .map(|m| (m.clone(), g.claim.endpoint.clone()))
            })
            .collect()
    }

    pub(crate) async fn mapping_statuses_for(&self, client: &str) -> Vec<TunnelStatus> {
        self.admin
            .lock()
            .await
            .ports
            .iter()
            .flat_map(|g| {
                g.mappings
                    .iter()
                    .filter(|m| m.members().iter().any(|c| c == client))
                    .map(|m| TunnelStatus {
                        name: m.route_name(),
                        endpoint: Some(g.claim.endpoint.clone()),
                        error: None,
                        subdomain: None,
                        retrying: false,
                    })
            })
            .collect()
    }

    /// Makes the admin mappings equal `desired`: new ports are opened, kept ports are
    /// repointed in place, the rest closed. On any error nothing changes.
    pub async fn apply_mappings(
        &self,
        desired: Vec<Mapping>,
    ) -> Result<Vec<(Mapping, String)>, MappingError> {
        self.apply_mappings_with(desired, true).await
    }

    /// [`Hub::apply_mappings`] at start, with the list stored by the last successful
    /// update: clients need not be connected yet (they were when the list was accepted).
    pub async fn restore_mappings(
        &self,
        desired: Vec<Mapping>,
    ) -> Result<Vec<(Mapping, String)>, MappingError> {
        self.apply_mappings_with(desired, false).await
    }

    async fn apply_mappings_with(
        &self,
        desired: Vec<Mapping>,
        check_clients: bool,
    ) -> Result<Vec<(Mapping, String)>, MappingError> {
        // Validate everything before touching anything.
        let mut seen = HashSet::new();
        let mut groups: Vec<(PortKey, Vec<Mapping>)> = Vec::new();
        for m in &desired {
            m.validate()?;
            if !seen.insert((m.port_key(), m.glob()?)) {
                return Err(merr(
                    409,
                    format!(
                        "port {} appears twice in the list with the same hostname pattern",
                        m.listen_port
                    ),
                ));
            }
            if let Some(f) = &m.frontend {
                let fe = self
                    .frontends
                    .get(f)
                    .ok_or_else(|| merr(404, format!("frontend `{f}` does not exist")))?;
                if !fe.serves(TunnelKind::Tcp) {
                    return Err(merr(400, format!("frontend `{f}` does not allocate ports")));
                }
            }
            match groups.iter_mut().find(|(k, _)| *k == m.port_key()) {
                Some((_, list)) => list.push(m.clone()),
                None => groups.push((m.port_key(), vec![m.clone()])),
            }
        }
        let mut admin = self.admin.lock().await;
        let known: HashSet<String> = admin
            .ports
            .iter()
            .flat_map(|g| g.mappings.iter().flat_map(|m| m.members()))
            .collect();
        for client in desired.iter().flat_map(|m| m.members()) {
            if known.contains(&client) || !check_clients {
                continue;
            }
            match self.sessions.get(&client) {
                None => {
                    return Err(merr(
                        404,
                        format!("client `{client}` is unknown or not connected"),
                    ))
                }
                Some(s) if !s.accept_server_mappings => {
                    return Err(merr(
                        422,
                        format!(
                            "client `{client}` does not accept server-defined mappings (set accept_server_mappings: true in its config)"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }

        let (kept, removed): (Vec<PortGroup>, Vec<PortGroup>) = std::mem::take(&mut admin.ports)
            .into_iter()
            .partition(|g| groups.iter().any(|(k, _)| *k == g.key));
        // Release what goes away first, so a port can move between frontends or addresses.
        let removed_lists: Vec<Vec<Mapping>> = removed.iter().map(|g| g.mappings.clone()).collect();
        drop(removed);

        let mut added = Vec::new();
        let mut failure = None;
        for (key, list) in groups
            .iter()
            .filter(|(k, _)| !kept.iter().any(|g| g.key == *k))
        {
            match self.open_port(key, list).await {
                Ok(g) => added.push(g),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(added);
            let mut restored = kept;
            for list in removed_lists {
                let Some(first) = list.first() else { continue };
                match self.open_port(&first.port_key(), &list).await {
                    Ok(g) => restored.push(g),
                    Err(re) => {
                        tracing::error!(port = first.listen_port, error = %re.message, "could not restore a port after a failed update")
                    }
                }
            }
            admin.ports = restored;
            return Err(e);
        }
        // Everything is claimed: repoint the kept ports in place.
        let mut ports = Vec::new();
        for mut g in kept {
            if let Some((_, list)) = groups.iter().find(|(k, _)| *k == g.key) {
                if g.mappings != *list {
                    let routes = list
                        .iter()
                        .map(Route::from_mapping)
                        .collect::<Result<Vec<_>, _>>()?;
                    g.table.replace(routes);
                    tracing::info!(port = g.key.2, "admin port repointed in place");
                    g.mappings = list.clone();
                }
            }
            ports.push(g);
        }
        ports.extend(added);
        ports.sort_by_key(|g| g.key.2);
        admin.ports = ports;
        drop(admin);
        let result = self.mappings().await;
        for s in self.sessions() {
            let mut tunnels = s.tunnels();
            tunnels.extend(self.mapping_statuses_for(&s.info.client_id).await);
            let _ = s.notify.send(Control::Tunnels { tunnels });
        }
        Ok(result)
    }

    async fn open_port(&self, key: &PortKey, list: &[Mapping]) -> Result<PortGroup, MappingError> {
        let routes = list
            .iter()
            .map(Route::from_mapping)
            .collect::<Result<Vec<_>, _>>()?;
        let table = Arc::new(RouteTable {
            routes: Mutex::new(Arc::new(routes)),
            sessions: Arc::downgrade(&self.sessions),
            metrics: self.metrics.clone(),
        });
        let frontend = self
            .frontend_for(TunnelKind::Tcp, key.0.as_deref())
            .map_err(|e| merr(404, e.to_string()))?
            .clone();
        let owner = list
            .iter()
            .flat_map(|m| m.members())
            .collect::<Vec<_>>()
            .join(",");
        let claim = frontend
            .claim(ClaimRequest {
                owner,
                tunnel: format!("mapping-{}", key.2),
                kind: TunnelKind::Tcp,
                subdomain: None,
                port: Some(key.2),
                bind: key.1,
                target_override: None,
                proxy_protocol: None,
                max_ports: None,
                max_names: None,
                target: table.clone(),
                reserve_on_release: false,
            })
            .await
            .map_err(|e| {
                let status = match e {
                    ClaimError::OutOfRange { .. } | ClaimError::Invalid(_) => 400,
                    ClaimError::UnknownFrontend(_) | ClaimError::NoFrontend(_) => 404,
                    _ => 409,
                };
                merr(status, e.to_string())
            })?;
        Ok(PortGroup {
            key: key.clone(),
            mappings: list.to_vec(),
            table,
            claim,
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
