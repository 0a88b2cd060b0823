//! The running transports by name, each with its own stop signal (a child of the drain's
//! end), so a reload can add, stop or rebuild one without touching the others.

use crate::components::{bind_transport, H2Transports};
use crate::config::server::TransportConfig;
use crate::server::Base;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunneld_core::hub::Hub;
use tunneld_core::limits::{HandshakeLimiter, LiveLimits};
use tunneld_core::transport::{ManagementApi, TransportContext};

/// How long a stopped transport's accept loop may take to let its port go.
const STOP_WAIT: Duration = Duration::from_secs(5);

struct Handle {
    stop: CancellationToken,
    task: JoinHandle<()>,
    addr: Option<SocketAddr>,
}

/// Every running transport, and what a new one is started with.
pub(crate) struct TransportSet {
    limiter: Arc<HandshakeLimiter>,
    management: Arc<dyn ManagementApi>,
    running: BTreeMap<String, Handle>,
}

impl TransportSet {
    pub(crate) fn new(limits: &LiveLimits, management: Arc<dyn ManagementApi>) -> Self {
        Self {
            limiter: HandshakeLimiter::handshakes(limits),
            management,
            running: BTreeMap::new(),
        }
    }

    /// Binds and starts transport `name`; returns its bound address (none for an
    /// h2-reverse transport that only shares a frontend's port).
    pub(crate) async fn start(
        &mut self,
        name: &str,
        t: &TransportConfig,
        (base, hub): (&Base, &Arc<Hub>),
        h2: &H2Transports,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let built = bind_transport(name, t, base, h2).await?;
        let addr = built.local_addr();
        let stop = base.closing.child_token();
        let tcx = TransportContext {
            name: name.to_string(),
            hub: hub.clone(),
            metrics: base.metrics.clone(),
            limiter: self.limiter.clone(),
            shutdown: stop.clone(),
            draining: base.accepting.clone(),
            tasks: TaskTracker::new(),
            visitors: base.visitors.clone(),
            management: Some(self.management.clone()),
        };
        let owned = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = built.serve(tcx).await {
                tracing::error!(transport = %owned, error = %e, "transport stopped");
            }
        });
        self.running
            .insert(name.to_string(), Handle { stop, task, addr });
        Ok(addr)
    }

    /// Stops transport `name`: its listener closes (awaited, so the port is free again) and
    /// its sessions end. Returns how many sessions were ended.
    pub(crate) async fn stop(&mut self, name: &str, hub: &Hub) -> usize {
        if let Some(h) = self.running.remove(name) {
            h.stop.cancel();
            if tokio::time::timeout(STOP_WAIT, h.task).await.is_err() {
                tracing::warn!(transport = %name, "the transport's listener did not close in time");
            }
        }
        let mut ended = 0;
        for s in hub.sessions() {
            if s.info.transport == name {
                s.closed.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// The bound address of each transport with a listener of its own.
    pub(crate) fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .iter()
            .filter_map(|(n, h)| h.addr.map(|a| (n.clone(), a)))
            .collect()
    }
}
