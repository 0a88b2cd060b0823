//! Rendezvous across nodes: a visitor at one node is matched with a hidden-server connection
//! parked at another (each node announces the ids it has connections parked for).

use super::link_wire::LinkRequest;
use super::Cluster;
use std::time::Duration;
use tunneld_core::session::OpenError;
use tunneld_core::BoxIo;
use tunneld_frontend_rendezvous::registry::RemoteParking;

/// How long a node waits for a parked connection another node asked for (its
/// announcement may be a moment old).
const PARKED_WAIT: Duration = Duration::from_millis(500);

#[async_trait::async_trait]
impl RemoteParking for Cluster {
    async fn take(&self, id: &str) -> Option<BoxIo> {
        let view = self.view();
        let mut nodes: Vec<_> = view
            .nodes
            .values()
            .filter(|n| n.node != self.cfg.node && n.parked.get(id).is_some_and(|&c| c > 0))
            .collect();
        // The node with the most parked first.
        nodes.sort_by_key(|n| std::cmp::Reverse(n.parked.get(id).copied().unwrap_or(0)));
        for n in nodes {
            let req = LinkRequest {
                route: format!("park:{id}"),
                header: None,
                server_name: None,
                http: false,
            };
            match self.links.open(&n.node, n.link, &req).await {
                Ok(io) => return Some(io),
                Err(e) => {
                    tracing::debug!(%id, node = %n.node, error = %e, "no parked connection from that node")
                }
            }
        }
        None
    }
}

impl Cluster {
    /// A connection parked here for `id`, for a visitor at another node.
    pub(super) async fn take_parked_here(&self, id: &str) -> Result<BoxIo, OpenError> {
        let entry = self
            .registry
            .ids
            .lookup_strict(id)
            .await
            .map_err(|e| OpenError::Session(format!("rendezvous ids: {e}")))?
            .ok_or(OpenError::Offline)?;
        self.registry
            .take_local(id, &entry, PARKED_WAIT)
            .await
            .ok_or(OpenError::Offline)
    }
}
