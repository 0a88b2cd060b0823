//! Tunnels added to and removed from a live session after its admission: transports whose
//! clients ask for routes one at a time (SSH's `tcpip-forward` and `cancel-tcpip-forward`)
//! rather than all in a hello.

use super::*;

/// A tunnel a session claimed after admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub endpoint: String,
    pub port: Option<u16>,
    pub name: Option<String>,
}

impl Hub {
    /// Claims `t` for the live session of `guard` (its lease when `t` names one), and adds
    /// it to the session's tunnel list. Refused when the session already has a tunnel of
    /// that name, or has [`MAX_TUNNELS_PER_SESSION`].
    pub async fn claim_added(
        self: &Arc<Self>,
        guard: &SessionGuard,
        who: &Identity,
        t: &TunnelRequest,
    ) -> Result<Added, ClaimError> {
        let session = &guard.session;
        if !valid_tunnel_name(&t.name) {
            return Err(ClaimError::Invalid(format!(
                "tunnel name `{}` is invalid: use 1-63 letters, digits, `-`, `_` or `.`",
                t.name
            )));
        }
        {
            let tunnels = lock(&session.tunnels);
            if tunnels
                .iter()
                .any(|s| s.name == t.name && s.endpoint.is_some())
            {
                return Err(ClaimError::Invalid(format!(
                    "tunnel `{}` is already open in this session",
                    t.name
                )));
            }
            if tunnels.iter().filter(|s| s.endpoint.is_some()).count() >= MAX_TUNNELS_PER_SESSION {
                return Err(ClaimError::Invalid(format!(
                    "at most {MAX_TUNNELS_PER_SESSION} tunnels per session"
                )));
            }
        }
        let (endpoint, name) = self.claim_for(session, who, t).await?;
        if session.closed.is_cancelled() {
            session.replace();
            return Err(ClaimError::Invalid("the session has ended".into()));
        }
        let port = lock(&session.claims)
            .iter()
            .rev()
            .find(|h| h.claim.endpoint == endpoint)
            .and_then(|h| h.claim.port)
            .or_else(|| self.lease_port(&who.client_id, &t.name));
        let mut tunnels = lock(&session.tunnels);
        tunnels.retain(|s| s.name != t.name);
        tunnels.push(TunnelStatus::up(&t.name, endpoint.clone(), name.clone()));
        Ok(Added {
            endpoint,
            port,
            name,
        })
    }

    /// Releases the tunnel `tunnel` of a live session (its claim, or its use of a lease,
    /// which stays held for the owner); false when the session had no such tunnel.
    pub fn release_added(&self, session: &LiveSession, tunnel: &str) -> bool {
        let mut found = false;
        let released: Vec<HeldClaim> = {
            let mut claims = lock(&session.claims);
            let (gone, kept): (Vec<_>, Vec<_>) = claims.drain(..).partition(|h| h.tunnel == tunnel);
            *claims = kept;
            gone
        };
        found |= !released.is_empty();
        drop(released);
        {
            let mut leased = lock(&session.leased);
            let before = leased.len();
            leased.retain(|u| u.tunnel != tunnel);
            found |= leased.len() != before;
        }
        lock(&session.tunnels).retain(|s| s.name != tunnel);
        found
    }
}
