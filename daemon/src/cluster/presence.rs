//! Which node serves a client: routes that follow a client rather than one session (admin
//! mappings, whose ports every node opens) reach the client's sessions at whatever node they
//! are. Each node registers a *presence* route (`<prefix>:route:@client:name:<client>`) for
//! every client with a live session there, unless another live node holds it already, and
//! gives it up when the client's last session here ends. Presence routes are never mirrored.

use super::routes::what_of;
use super::Cluster;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tunneld_core::cluster_hook::{ClaimingSession, ClusterRoutes};
use tunneld_core::frontend::{Ask, ClaimRequest, Quota};
use tunneld_core::hub::Target;
use tunneld_core::proto::TunnelKind;

/// The frontend name of presence routes (no real frontend can be named so).
pub const PRESENCE: &str = "@client";

/// The presence routes this node holds, by client.
pub(super) type Held = HashMap<String, Box<dyn Send + Sync>>;

impl Cluster {
    pub(super) fn presence_key(&self, client: &str) -> String {
        let what = what_of(None, Some(client)).unwrap_or_default();
        self.store.route_key(PRESENCE, &what)
    }

    /// Registers presence for the clients with live sessions here that no live node stands
    /// for yet, and gives up that of clients gone from here.
    pub(super) async fn sync_presence(&self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let mut here: HashMap<String, Arc<tunneld_core::hub::LiveSession>> = HashMap::new();
        for s in hub.sessions() {
            if !s.closed.is_cancelled() {
                here.entry(s.info.client_id.clone()).or_insert(s);
            }
        }
        // Given up: clients gone from here, and presence another node took over.
        let gone: Vec<Box<dyn Send + Sync>> = {
            let local: HashSet<String> = tunneld_core::sync::lock(&self.local)
                .keys()
                .cloned()
                .collect();
            let mut held = tunneld_core::sync::lock(&self.presence);
            let names: Vec<String> = held.keys().cloned().collect();
            names
                .into_iter()
                .filter(|c| !here.contains_key(c) || !local.contains(&self.presence_key(c)))
                .filter_map(|c| held.remove(&c))
                .collect()
        };
        drop(gone);
        let view = self.view();
        for (client, session) in here {
            if tunneld_core::sync::lock(&self.presence).contains_key(&client) {
                continue;
            }
            let key = self.presence_key(&client);
            let stood_for = view.routes.get(&key).is_some_and(|r| {
                r.session != 0 && r.node != self.cfg.node && view.nodes.contains_key(&r.node)
            });
            if stood_for {
                continue;
            }
            let req = ClaimRequest {
                owner: client.clone(),
                tunnel: client.clone(),
                kind: TunnelKind::Tcp,
                ask: Ask::Name(client.clone()),
                proxy_protocol: None,
                quota: Quota::default(),
                target: hub.client_target(&client),
                reserve_on_release: false,
            };
            // Not tied to the session: another node taking presence over ends nothing here.
            let who = ClaimingSession {
                id: session.info.id,
                instance: session.info.instance.as_deref(),
                closed: CancellationToken::new(),
            };
            if let Ok(held) = self
                .register_route(PRESENCE, (None, Some(&client)), &req, &who)
                .await
            {
                tunneld_core::sync::lock(&self.presence).insert(client, held);
            }
        }
    }

    /// The target for `client`'s sessions at the node that stands for it, when that is
    /// another live node.
    pub(super) fn presence_target(&self, client: &str) -> Option<Arc<dyn Target>> {
        let key = self.presence_key(client);
        let view = self.view();
        let r = view.routes.get(&key)?;
        let live = r.session != 0 && r.node != self.cfg.node && view.nodes.contains_key(&r.node);
        live.then(|| {
            Arc::new(super::mirror::RemoteTarget::new(self.this.clone(), key).for_owner(client))
                as Arc<dyn Target>
        })
    }
}
