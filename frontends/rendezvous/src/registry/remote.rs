//! Cluster mode: connections parked at other tunneld nodes, found through a
//! [`RemoteParking`] the daemon installs, and the ids parked here that this node announces.

use super::Registry;
use crate::ids::IdEntry;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::io::BoxIo;

/// Where connections parked at other tunneld nodes are found (cluster mode): the daemon's
/// cluster installs one ([`Registry::set_remote`]).
#[async_trait::async_trait]
pub trait RemoteParking: Send + Sync + 'static {
    /// A connection parked for `id` at another node, as a stream to it.
    async fn take(&self, id: &str) -> Option<BoxIo>;
}

impl Registry {
    /// Installs where other nodes' parked connections are found; false if one was already.
    pub fn set_remote(&self, remote: Arc<dyn RemoteParking>) -> bool {
        self.remote.set(remote).is_ok()
    }

    /// Ids with connections parked here now, and how many each.
    pub fn parked_ids(&self) -> std::collections::BTreeMap<String, usize> {
        self.lock()
            .queues
            .iter()
            .filter(|(_, q)| !q.parked.is_empty())
            .map(|(id, q)| (id.clone(), q.parked.len()))
            .collect()
    }

    /// Takes a connection parked for `id` under its `current` entry: one parked here, else
    /// (cluster mode) one parked at another node, else the first to park here within `wait`.
    pub async fn take(&self, id: &str, current: &IdEntry, wait: Duration) -> Option<BoxIo> {
        let Some(remote) = self.remote.get() else {
            return self.take_local(id, current, wait).await;
        };
        if let Some(io) = self.take_local(id, current, Duration::ZERO).await {
            return Some(io);
        }
        if let Some(io) = remote.take(id).await {
            return Some(io);
        }
        self.take_local(id, current, wait).await
    }
}
