//! A tunnel refused only because its port cannot be bound right now (another program holds
//! it, or the old listener of a reclaimed port has not let go yet) is claimed again in the
//! background for as long as its session lives: waits double from [`RETRY_FIRST`] to
//! [`RETRY_MAX`]. Its status says `retrying`, so tunnelc keeps the session instead of
//! giving up, and a `tunnels` message tells tunnelc when the port is served (or why it
//! will not be).

use super::Hub;
use crate::auth::Identity;
use crate::frontend::ClaimError;
use crate::live_sessions::LiveSession;
use crate::proto::{TunnelRequest, TunnelStatus};
use std::sync::Arc;
use std::time::Duration;

/// The first wait before claiming again.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Whether a refusal may go away on its own (the port is in use now), so the claim is tried
/// again. Other bind errors (no permission, an address the host lacks) never clear.
pub(super) fn retriable(e: &ClaimError) -> bool {
    matches!(e, ClaimError::Busy { .. } | ClaimError::ClusterDown(_))
}

impl Hub {
    /// Claims `t` for `session` again until it works, cannot work, or the session ends.
    pub(super) fn retry_claim(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        who: &Identity,
        t: TunnelRequest,
    ) {
        let (hub, session, who) = (self.clone(), session.clone(), who.clone());
        tokio::spawn(async move {
            let mut wait = RETRY_FIRST;
            loop {
                tokio::select! {
                    _ = session.closed.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
                let result = hub.claim_for(&session, &who, &t).await;
                if session.closed.is_cancelled() {
                    // The session ended while the claim was made: give back what it got.
                    session.replace();
                    return;
                }
                let status = match result {
                    Ok((endpoint, subdomain)) => {
                        tracing::info!(client = %who.client_id, tunnel = %t.name, %endpoint, "tunnel claimed on a retry");
                        TunnelStatus::up(&t.name, endpoint, subdomain)
                    }
                    Err(e) if retriable(&e) => {
                        tracing::debug!(client = %who.client_id, tunnel = %t.name, error = %e, "tunnel still refused; retrying");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(client = %who.client_id, tunnel = %t.name, error = %e, "tunnel refused on a retry; not retrying");
                        TunnelStatus::refused(&t.name, e.to_string(), false)
                    }
                };
                session.set_status(status);
                let mut tunnels = session.tunnels();
                tunnels.extend(hub.server_mapping_statuses(&session.info.client_id).await);
                session.notify_tunnels(tunnels);
                return;
            }
        });
    }
}
