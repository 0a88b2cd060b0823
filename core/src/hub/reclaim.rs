//! A frontend rebuilt by a reload: the live sessions that held tunnels on the old one claim
//! them again on the new one, in place. Their other tunnels, their visitors elsewhere and the
//! sessions themselves stay; each tunnelc is told its new tunnel list.

use super::*;

impl Hub {
    /// Claims again, on the frontend now registered as `name`, every tunnel live sessions
    /// held on the one it replaced (stopped before, so its claims are released here first):
    /// the same port or name when the new one still offers it, otherwise what the tunnel
    /// asked for at first.
    /// A claim the new frontend refuses (a port outside its new range, say) is reported to
    /// that tunnelc as the tunnel's error; one refused for now (a port still held by the
    /// old listener or another program) is retried as at admission. Sessions that are
    /// ending are left alone (their claims go with them). Answers how many sessions were
    /// touched.
    pub async fn reclaim_frontend(self: &Arc<Self>, name: &str) -> usize {
        let mut touched = 0;
        for s in self.sessions() {
            if s.closed.is_cancelled() {
                drop(s.take_claims_on(name));
                continue;
            }
            let gone = s.take_claims_on(name);
            if gone.is_empty() {
                continue;
            }
            touched += 1;
            // The same port or name when the new frontend still has it, else what was asked.
            let requests: Vec<(TunnelRequest, TunnelRequest)> = gone
                .iter()
                .map(|h| {
                    let same = TunnelRequest {
                        remote_port: h.claim.port.or(h.request.remote_port),
                        subdomain: h.claim.name.clone().or(h.request.subdomain.clone()),
                        ..h.request.clone()
                    };
                    (same, h.request.clone())
                })
                .collect();
            drop(gone);
            for (same, t) in &requests {
                if s.closed.is_cancelled() {
                    break;
                }
                let claimed = match self.claim_for(&s, &s.who, same).await {
                    Err(e) if same != t && !claim_retry::retriable(&e) => {
                        self.claim_for(&s, &s.who, t).await
                    }
                    r => r,
                };
                let status = match claimed {
                    Ok((endpoint, subdomain)) => TunnelStatus::up(&t.name, endpoint, subdomain),
                    Err(e) if claim_retry::retriable(&e) => {
                        tracing::warn!(client = %s.info.client_id, tunnel = %t.name, frontend = %name, error = %e, "tunnel refused for now by the rebuilt frontend; retrying");
                        self.retry_claim(&s, &s.who, same.clone());
                        TunnelStatus::refused(&t.name, e.to_string(), s.tells_retrying)
                    }
                    Err(e) => {
                        tracing::warn!(client = %s.info.client_id, tunnel = %t.name, frontend = %name, error = %e, "tunnel refused by the rebuilt frontend");
                        let why =
                            format!("frontend `{name}` changed in tunneld's configuration: {e}");
                        TunnelStatus::refused(&t.name, why, false)
                    }
                };
                s.set_status(status);
            }
            if s.closed.is_cancelled() {
                // The session ended while its tunnels were claimed: give them back.
                s.replace();
                continue;
            }
            let mut tunnels = s.tunnels();
            tunnels.extend(self.server_mapping_statuses(&s.info.client_id).await);
            s.notify_tunnels(tunnels);
        }
        touched
    }
}
