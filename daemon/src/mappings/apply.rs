//! The admin API's mappings applied to the hub: validated as a whole, ports opened, kept
//! ports repointed in place, the rest closed, and every session told its new tunnel list.

use super::*;
use async_trait::async_trait;
use std::sync::Mutex;
use tunneld_core::frontend::{Ask, ClaimError, ClaimRequest, Quota};

#[async_trait]
impl ServerMappings for AdminMappings {
    async fn statuses_for(&self, client: &str) -> Vec<TunnelStatus> {
        self.state
            .lock()
            .await
            .ports
            .iter()
            .flat_map(|g| {
                g.mappings
                    .iter()
                    .filter(|m| m.members().iter().any(|c| c == client))
                    .map(|m| TunnelStatus::up(&m.route_name(), g.claim.endpoint.clone(), None))
            })
            .collect()
    }

    async fn uses_frontend(&self, frontend: &str) -> bool {
        let default = self.hub.upgrade().and_then(|h| {
            h.frontend_for(tunneld_core::proto::TunnelKind::Tcp, None)
                .ok()
                .map(|f| f.name().to_string())
        });
        self.state
            .lock()
            .await
            .ports
            .iter()
            .any(|g| g.key.0.as_deref().or(default.as_deref()) == Some(frontend))
    }
}

impl AdminMappings {
    /// Each admin port (its frontend and port) with the clients its mappings name now (a
    /// repoint in place changes them without a new claim).
    pub async fn port_owners(&self) -> Vec<(String, u16, String)> {
        self.state
            .lock()
            .await
            .ports
            .iter()
            .map(|g| {
                (
                    g.key.0.clone().unwrap_or_default(),
                    g.key.2,
                    owners(&g.mappings),
                )
            })
            .collect()
    }

    /// The current admin mappings with their public endpoints.
    pub async fn mappings(&self) -> Vec<(Mapping, String)> {
        self.state
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

    /// Makes the admin mappings equal `desired`: new ports are opened, kept ports are
    /// repointed in place, the rest closed. On any error nothing changes.
    pub async fn apply(
        &self,
        desired: Vec<Mapping>,
    ) -> Result<Vec<(Mapping, String)>, MappingError> {
        self.apply_mappings_with(desired, true).await
    }

    /// [`AdminMappings::apply`] at start, with the list stored by the last successful
    /// update: clients need not be connected yet (they were when the list was accepted).
    pub async fn restore(
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
        let hub = self.hub()?;
        // Validate everything before touching anything.
        let groups = group_desired(&hub, &desired)?;
        let mut admin = self.state.lock().await;
        if check_clients {
            check_clients_of(&hub, &admin, &desired)?;
        }
        let (kept, removed): (Vec<PortGroup>, Vec<PortGroup>) = std::mem::take(&mut admin.ports)
            .into_iter()
            .partition(|g| groups.iter().any(|(k, _)| *k == g.key));
        // Release what goes away first, so a port can move between frontends or addresses.
        let removed_lists: Vec<Vec<Mapping>> = removed.iter().map(|g| g.mappings.clone()).collect();
        drop(removed);
        let added = match open_added(&hub, &groups, &kept).await {
            Ok(added) => added,
            Err(e) => {
                admin.ports = restore_removed(&hub, kept, removed_lists).await;
                return Err(e);
            }
        };
        // Everything is claimed: repoint the kept ports in place.
        let mut ports = repoint_kept(kept, &groups)?;
        ports.extend(added);
        ports.sort_by_key(|g| g.key.2);
        admin.ports = ports;
        drop(admin);
        let result = self.mappings().await;
        for s in hub.sessions() {
            let mut tunnels = s.tunnels();
            tunnels.extend(self.statuses_for(&s.info.client_id).await);
            s.notify_tunnels(tunnels);
        }
        Ok(result)
    }
}

/// Checks every mapping and groups them by public port; nothing is touched.
fn group_desired(
    hub: &Hub,
    desired: &[Mapping],
) -> Result<Vec<(PortKey, Vec<Mapping>)>, MappingError> {
    let mut seen = HashSet::new();
    let mut groups: Vec<(PortKey, Vec<Mapping>)> = Vec::new();
    for m in desired {
        m.validate()?;
        let key = effective_key(hub, m)?;
        if !seen.insert((key.clone(), m.glob()?)) {
            return Err(merr(
                409,
                format!(
                    "port {} appears twice in the list with the same hostname pattern",
                    m.listen_port
                ),
            ));
        }
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(m.clone()),
            None => groups.push((key, vec![m.clone()])),
        }
    }
    Ok(groups)
}

/// The public port `m` names, spelled one way: its frontend by name (the default one when
/// it names none) and its address (the frontend's `bind` when it names none), so two
/// spellings of one port are one port.
fn effective_key(hub: &Hub, m: &Mapping) -> Result<PortKey, MappingError> {
    let fe = match &m.frontend {
        Some(f) => {
            let fe = hub
                .frontend(f)
                .ok_or_else(|| merr(404, format!("frontend `{f}` does not exist")))?;
            if !fe.serves(TunnelKind::Tcp) {
                return Err(merr(400, format!("frontend `{f}` does not allocate ports")));
            }
            fe
        }
        None => hub
            .frontend_for(TunnelKind::Tcp, None)
            .map_err(|e| merr(404, e.to_string()))?,
    };
    let address = m.listen_address.or_else(|| fe.default_bind());
    Ok((Some(fe.name().to_string()), address, m.listen_port))
}

/// Every client a mapping newly names must be connected and accept server mappings.
fn check_clients_of(
    hub: &Hub,
    admin: &AdminState,
    desired: &[Mapping],
) -> Result<(), MappingError> {
    let known: HashSet<String> = admin
        .ports
        .iter()
        .flat_map(|g| g.mappings.iter().flat_map(|m| m.members()))
        .collect();
    for client in desired.iter().flat_map(|m| m.members()) {
        if known.contains(&client) {
            continue;
        }
        match hub.client_session(&client) {
                // Cluster mode: connected at another node (which applies the list too).
                None if hub.remote_client(&client).is_some() => {}
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
    Ok(())
}

/// Opens the ports that are new; on the first failure the ones opened are closed again.
async fn open_added(
    hub: &Arc<Hub>,
    groups: &[(PortKey, Vec<Mapping>)],
    kept: &[PortGroup],
) -> Result<Vec<PortGroup>, MappingError> {
    let mut added = Vec::new();
    for (key, list) in groups
        .iter()
        .filter(|(k, _)| !kept.iter().any(|g| g.key == *k))
    {
        added.push(open_port(hub, key, list).await?);
    }
    Ok(added)
}

/// After a failed update: the kept ports plus the removed ones opened again.
async fn restore_removed(
    hub: &Arc<Hub>,
    kept: Vec<PortGroup>,
    removed_lists: Vec<Vec<Mapping>>,
) -> Vec<PortGroup> {
    let mut restored = kept;
    for list in removed_lists {
        let Some(first) = list.first() else { continue };
        let key = match effective_key(hub, first) {
            Ok(k) => k,
            Err(re) => {
                tracing::error!(port = first.listen_port, error = %re.message, "could not restore a port after a failed update");
                continue;
            }
        };
        match open_port(hub, &key, &list).await {
            Ok(g) => restored.push(g),
            Err(re) => {
                tracing::error!(port = first.listen_port, error = %re.message, "could not restore a port after a failed update")
            }
        }
    }
    restored
}

async fn open_port(
    hub: &Arc<Hub>,
    key: &PortKey,
    list: &[Mapping],
) -> Result<PortGroup, MappingError> {
    let routes = list
        .iter()
        .map(Route::from_mapping)
        .collect::<Result<Vec<_>, _>>()?;
    let table = Arc::new(RouteTable {
        routes: Mutex::new(Arc::new(routes)),
        hub: Arc::downgrade(hub),
        metrics: hub
            .metrics
            .plugin::<crate::metrics::DaemonMetrics>()
            .map_err(|e| merr(500, e.to_string()))?,
    });
    let frontend = hub
        .frontend_for(TunnelKind::Tcp, key.0.as_deref())
        .map_err(|e| merr(404, e.to_string()))?;
    let owner = owners(list);
    let claim = frontend
        .claim(ClaimRequest {
            owner,
            tunnel: format!("mapping-{}", key.2),
            kind: TunnelKind::Tcp,
            ask: Ask::Port {
                port: key.2,
                bind: key.1,
            },
            proxy_protocol: None,
            quota: Quota::default(),
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

/// The clients a port's mappings name, each once, in order: the port's owner in `/tunnels`.
pub(super) fn owners(list: &[Mapping]) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in list.iter().flat_map(|m| m.members()) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.join(",")
}

/// The kept ports, each pointed at its new list of routes (in place: no rebind).
fn repoint_kept(
    kept: Vec<PortGroup>,
    groups: &[(PortKey, Vec<Mapping>)],
) -> Result<Vec<PortGroup>, MappingError> {
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
    Ok(ports)
}
