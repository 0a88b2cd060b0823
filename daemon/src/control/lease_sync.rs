//! Cluster mode: every node holds the leases of every provisioned tunnel, whichever node
//! provisioned it. Once a second a node leases the stored tunnels it does not hold yet (on
//! their stored ports and names) and releases the leases of tunnels no longer stored, so a
//! tunnel made or deleted at one node is served or gone at every node within a second or two.

use super::provision::{hello_name, kind_of};
use super::Control;
use std::collections::HashSet;
use std::sync::Arc;
use tunneld_core::proto::TunnelKind;
use tunneld_state as state;

impl Control {
    pub async fn sync_leases(self: Arc<Self>) {
        let me = self.clone();
        let stored = match tokio::task::spawn_blocking(move || me.store.tunnels(None)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "lease sync: cannot read tunnels");
                return;
            }
            Err(_) => return,
        };
        // Provisioning here holds this too: a tunnel being made is stored before it is seen.
        let _one = self.changes.lock().await;
        let now = state::now();
        let mut wanted = HashSet::new();
        for mut t in stored
            .into_iter()
            .filter(|t| t.expires_at.is_none_or(|e| e > now))
        {
            for p in &t.protocols {
                wanted.insert((t.owner.clone(), hello_name(&t.name, p)));
            }
            let missing = t.protocols.iter().any(|p| {
                self.hub
                    .lease_endpoint(&t.owner, &hello_name(&t.name, p))
                    .is_none()
            });
            // A port the record does not name yet would be picked here, differently from the
            // node that made the tunnel: only what the record holds is leased.
            let complete = t
                .protocols
                .iter()
                .all(|p| kind_of(t.flavour, p) != TunnelKind::Tcp || t.ports.contains_key(p));
            if !missing || !complete {
                continue;
            }
            match self.lease_all(&mut t).await {
                Ok(()) => {
                    tracing::info!(tunnel = %t.name, owner = %t.owner, "cluster: leased a tunnel provisioned at another node")
                }
                Err(e) => {
                    tracing::debug!(tunnel = %t.name, error = %e, "cluster: cannot lease a tunnel provisioned at another node yet")
                }
            }
        }
        for (owner, tunnel) in self.hub.lease_keys() {
            if !wanted.contains(&(owner.clone(), tunnel.clone())) {
                tracing::info!(owner = %owner, tunnel = %tunnel, "cluster: released the lease of a tunnel deleted at another node");
                self.hub.release_lease(&owner, &tunnel);
            }
        }
        self.update_gauge();
    }
}
