//! Once a second: sessions whose stored token expired or was revoked are cut (also when the
//! change came from `tunneld token revoke` in another process), and tunnels whose leases
//! lapsed are released. At start, [`Control::restore`] takes every stored tunnel's leases
//! back, on the same ports and names.

use super::Control;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;
use tunneld_state::cache::StateCache;
use tunneld_state::{self as state, TokenRecord};

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(1);

impl Control {
    /// Re-leases every stored tunnel (dropping those that lapsed while tunneld was down).
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let now = state::now();
        let mut restored = 0;
        for mut t in self.store.tunnels(None)? {
            if t.expires_at.is_some_and(|e| e <= now) {
                self.drop_tunnel(&t)?;
                continue;
            }
            let before = t.ports.clone();
            match self.lease_all(&mut t).await {
                Ok(()) => {
                    restored += 1;
                    if t.ports != before {
                        self.store.update_tunnel(&t)?;
                    }
                }
                Err(e) => {
                    tracing::warn!(tunnel = %t.name, owner = %t.owner, error = %e, "cannot restore a provisioned tunnel's routes")
                }
            }
        }
        self.update_gauge();
        Ok(restored)
    }

    /// Releases tunnels whose leases lapsed or whose token was revoked (`tokens`: the
    /// store's tokens by name, read once per sweep).
    pub fn lapse_tunnels(&self, tokens: &HashMap<String, TokenRecord>) {
        let now = state::now();
        match self.store.tunnels(None) {
            Ok(all) => {
                let revoked =
                    |owner: &str| tokens.get(owner).is_some_and(|t| t.revoked_at.is_some());
                for t in all
                    .iter()
                    .filter(|t| t.expires_at.is_some_and(|e| e <= now) || revoked(&t.owner))
                {
                    tracing::info!(tunnel = %t.name, owner = %t.owner, "tunnel lease lapsed (expired, or its token was revoked)");
                    if let Err(e) = self.drop_tunnel(t) {
                        tracing::warn!(tunnel = %t.name, error = %e, "cannot drop a lapsed tunnel");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep: cannot read tunnels"),
        }
    }
}

/// Ends live sessions whose stored token is no longer valid.
pub fn cut_sessions(hub: &Hub, tokens: &HashMap<String, TokenRecord>, metrics: &Metrics) {
    let now = state::now();
    for s in hub.sessions() {
        // Token sessions, and those of a stored token's SSH keys.
        if s.info.auth_method != "token" && s.info.auth_method != tunneld_state::ssh_keys::METHOD {
            continue;
        }
        let Some(t) = tokens.get(&s.info.client_id) else {
            continue;
        };
        if let Some(why) = t.refusal(now) {
            let reason = if t.revoked_at.is_some() {
                "revoked"
            } else {
                "expired"
            };
            cut_client(hub, metrics, &s.info.client_id, reason, &why);
        }
    }
}

/// Ends every live session of `client` (its token expired, was revoked, or was removed from
/// or changed in the config file by a reload), counted under `reason`; returns how many
/// sessions ended.
pub fn cut_client(hub: &Hub, metrics: &Metrics, client: &str, reason: &str, why: &str) -> usize {
    let n = hub
        .sessions()
        .iter()
        .filter(|s| s.info.client_id == client)
        .count();
    if hub.cut(client) {
        if let Some(own) = crate::metrics::of(metrics) {
            own.sessions_cut_total.with_label_values(&[reason]).inc();
        }
        tracing::warn!(client = %client, "session cut: {why}");
    }
    n
}

/// Runs the sweep until `stop`. Tokens come from the state cache (memory, kept current);
/// only lapsing tunnels touches the store, on a blocking thread.
pub fn spawn(
    hub: Arc<Hub>,
    cache: Arc<StateCache>,
    metrics: Arc<Metrics>,
    control: Option<Arc<Control>>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let tokens: HashMap<String, TokenRecord> = match cache.tokens().await {
                Ok(all) => all.into_iter().map(|t| (t.name.clone(), t)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "sweep: cannot read tokens");
                    continue;
                }
            };
            cut_sessions(&hub, &tokens, &metrics);
            if let Some(c) = control.clone() {
                let _ = tokio::task::spawn_blocking(move || c.lapse_tunnels(&tokens)).await;
            }
            if let Some(c) = control.clone().filter(|_| hub.in_cluster()) {
                c.sync_leases().await;
            }
        }
    });
}
