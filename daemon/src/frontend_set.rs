//! The running frontends' accept loops by name, each with its own stop signals (children of
//! the drain's), so a reload can take one away without touching the others.

use crate::server::Base;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunneld_core::frontend::{Frontend, FrontendContext};
use tunneld_core::hub::Hub;

/// How long a removed frontend's accept loop may take to let its port go.
const STOP_WAIT: Duration = Duration::from_secs(5);

struct Handle {
    shutdown: CancellationToken,
    closing: CancellationToken,
    task: JoinHandle<()>,
}

/// Every running frontend's accept loop.
#[derive(Default)]
pub(crate) struct FrontendSet {
    running: BTreeMap<String, Handle>,
}

impl FrontendSet {
    /// Starts `f`'s accept loop, stopped by the drain or by [`FrontendSet::stop`].
    pub(crate) fn start(&mut self, name: &str, f: Arc<dyn Frontend>, base: &Base) {
        let shutdown = base.fcx.shutdown.child_token();
        let closing = base.fcx.closing.child_token();
        let cx = FrontendContext {
            shutdown: shutdown.clone(),
            closing: closing.clone(),
            ..base.fcx.clone()
        };
        let task = tokio::spawn(f.serve(cx));
        self.running.insert(
            name.to_string(),
            Handle {
                shutdown,
                closing,
                task,
            },
        );
    }

    /// Takes frontend `name` out of the routing table and closes its listener, leaving its
    /// claims to their sessions (which the caller ends).
    pub(crate) async fn stop_quietly(&mut self, name: &str, hub: &Hub) {
        hub.remove_frontend(name);
        if let Some(h) = self.running.remove(name) {
            h.shutdown.cancel();
            h.closing.cancel();
            if tokio::time::timeout(STOP_WAIT, h.task).await.is_err() {
                tracing::warn!(frontend = %name, "the frontend's listener did not close in time");
            }
        }
    }

    /// Takes frontend `name` away: out of the routing table, its listener closed (visitors
    /// already in flight finish), and every tunnel on it released and reported to its
    /// tunnelc as removed. Answers how many sessions lost a tunnel.
    pub(crate) async fn stop(&mut self, name: &str, hub: &Hub) -> usize {
        // Kept until its tunnels are released: their guards release through it.
        let frontend = hub.frontend(name);
        self.stop_quietly(name, hub).await;
        let why = format!("frontend `{name}` was removed from tunneld's configuration");
        let touched = hub.release_frontend(name, &why).await;
        drop(frontend);
        touched
    }
}
