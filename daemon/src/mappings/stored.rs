//! What the admin API and the dashboard share of the admin mappings: applying a list and
//! storing it (one update at a time), and the routes as `GET /tunnels` lists them.

use super::{AdminMappings, Mapping, MappingError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tunneld_core::frontend::RouteInfo;
use tunneld_core::hub::Hub;
use tunneld_state::StateStore;

impl AdminMappings {
    /// Applies a mapping list and, once applied, stores it (on a blocking thread) so a
    /// restart re-applies it; `writes` keeps updates one at a time. A store failure is
    /// logged: the live mappings stand.
    pub async fn apply_and_store(
        &self,
        store: &Arc<dyn StateStore>,
        writes: &tokio::sync::Mutex<()>,
        desired: Vec<Mapping>,
    ) -> Result<Vec<(Mapping, String)>, MappingError> {
        let json = serde_json::to_string(&desired).unwrap_or_else(|_| "[]".into());
        let _one = writes.lock().await;
        let list = self.apply(desired).await?;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.set_admin_mappings(&json)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "admin mappings applied but not stored"),
            Err(e) => tracing::error!(error = %e, "admin mappings applied but not stored"),
        }
        Ok(list)
    }

    /// Cluster mode: every second, applies the list another node stored (one `PUT /tunnels`
    /// opens the same ports at every node). A list that cannot be applied here is logged and
    /// tried again when the stored list changes.
    pub fn follow_store(
        self: &Arc<Self>,
        store: Arc<dyn StateStore>,
        writes: Arc<tokio::sync::Mutex<()>>,
        stop: CancellationToken,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen: Option<String> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let s = store.clone();
                let json = match tokio::task::spawn_blocking(move || s.admin_mappings()).await {
                    Ok(Ok(j)) => j.unwrap_or_else(|| "[]".into()),
                    _ => continue,
                };
                if seen.as_deref() == Some(json.as_str()) {
                    continue;
                }
                let _one = writes.lock().await;
                match serde_json::from_str::<Vec<Mapping>>(&json) {
                    Ok(desired) => me.follow(desired).await,
                    Err(e) => tracing::warn!(error = %e, "stored admin mappings are unreadable"),
                }
                seen = Some(json);
            }
        });
    }

    async fn follow(&self, desired: Vec<Mapping>) {
        let mut current: Vec<Mapping> = self.mappings().await.into_iter().map(|(m, _)| m).collect();
        let mut sorted = desired.clone();
        let order = |v: &mut Vec<Mapping>| {
            v.sort_by_key(|m| serde_json::to_string(m).unwrap_or_default());
        };
        order(&mut current);
        order(&mut sorted);
        if current == sorted {
            return;
        }
        match self.restore(desired).await {
            Ok(list) => {
                tracing::info!(
                    mappings = list.len(),
                    "cluster: applied the admin mappings another node stored"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "cluster: cannot apply the admin mappings another node stored")
            }
        }
    }

    /// Every route of `hub`, an admin port owned by whom its mappings name now (a repoint
    /// keeps the claim, so the frontend still names the first owner).
    pub async fn routes_with_owners(&self, hub: &Hub) -> Vec<RouteInfo> {
        let mut routes = hub.routes();
        let owners = self.port_owners().await;
        for r in routes.iter_mut() {
            let port = r.endpoint.rsplit(':').next().and_then(|p| p.parse().ok());
            let found = owners.iter().find(|(f, p, _)| {
                *f == r.frontend && Some(*p) == port && r.tunnel == format!("mapping-{p}")
            });
            if let Some((_, _, o)) = found {
                r.owner = o.clone();
            }
        }
        routes
    }
}
