//! Remote forwards of one connection: a `tcpip-forward` request read, checked against the
//! key's grant (a tunnel's key only reaches that tunnel's leases), claimed through the hub,
//! and told to the client's shell when it has one.

use crate::forwards::{wanted, Forward, Wanted};
use crate::handler::Conn;
use russh::server::Session;
use tunneld_core::hub::lease_name;
use tunneld_core::proto::{TunnelKind, TunnelRequest};
use tunneld_core::ssh_keys::KeyGrant;

impl Conn {
    /// Answers one `tcpip-forward`: true when the forward is open (`port` set to the
    /// allocated one when 0 was asked).
    pub(crate) async fn open_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, russh::Error> {
        let asked = *port;
        let w = match wanted(address, asked) {
            Ok(w) => w,
            Err(e) => {
                let why = e.to_string();
                return Ok(self.forward_refused(session, (address, asked), "-", "invalid", &why));
            }
        };
        let kind = match &w {
            Wanted::Port(_) => TunnelKind::Tcp,
            Wanted::Name { kind, .. } => *kind,
        };
        if self.forwards.len() >= self.max_forwards {
            let why = format!("at most {} forwards per SSH session", self.max_forwards);
            return Ok(self.forward_refused(
                session,
                (address, asked),
                &kind.to_string(),
                "too_many",
                &why,
            ));
        }
        let t = match self.request_for(&w) {
            Ok(t) => t,
            Err(why) => {
                return Ok(self.forward_refused(
                    session,
                    (address, asked),
                    &kind.to_string(),
                    "not_leased",
                    &why,
                ));
            }
        };
        let (Some(guard), Some(grant)) = (&self.guard, &self.grant) else {
            return Ok(false);
        };
        match self.cx.hub.claim_added(guard, grant.identity(), &t).await {
            Ok(added) => {
                if asked == 0 {
                    *port = u32::from(added.port.unwrap_or(0));
                }
                let client_port = if asked == 0 { *port } else { asked };
                self.forwards.insert(
                    t.name.clone(),
                    Forward {
                        address: address.to_string(),
                        port: client_port,
                        kind,
                        endpoint: added.endpoint.clone(),
                    },
                );
                self.metrics
                    .forwards_total
                    .with_label_values(&[&self.cx.name, &kind.to_string(), "ok"])
                    .inc();
                tracing::info!(transport = %self.cx.name, client = %grant.identity().client_id, tunnel = %t.name, endpoint = %added.endpoint, "SSH forward open");
                self.tell(
                    session,
                    &format!("tunneld: {} -> {address}:{client_port}\n", added.endpoint),
                );
                Ok(true)
            }
            Err(e) => {
                let (reason, why) = (e.reason(), e.to_string());
                Ok(
                    self.forward_refused(
                        session,
                        (address, asked),
                        &kind.to_string(),
                        reason,
                        &why,
                    ),
                )
            }
        }
    }

    /// The tunnel a forward request becomes, or why it is refused.
    fn request_for(&mut self, w: &Wanted) -> Result<TunnelRequest, String> {
        let grant = self.grant.as_ref().ok_or("not authenticated")?;
        let owner = &grant.identity().client_id;
        let (kind, port, name) = match w {
            Wanted::Port(p) => (TunnelKind::Tcp, *p, None),
            Wanted::Name { kind, name } => (*kind, None, name.clone()),
        };
        let lease = self.cx.hub.lease_at(owner, kind, port, name.as_deref());
        if let KeyGrant::Tunnel { tunnel, .. } = grant {
            // The tunnel's own leases only: `<tunnel>-<protocol>`, not another tunnel
            // whose name starts the same.
            let prefix = lease_name(tunnel, "");
            let own = |l: &str| l.strip_prefix(&prefix).is_some_and(|p| !p.contains('-'));
            return match lease {
                Some(l) if own(&l) => Ok(request(l, kind, port, name)),
                _ => Err(format!(
                    "this key may only forward the ports and names of tunnel `{tunnel}`"
                )),
            };
        }
        if let Some(l) = lease {
            return Ok(request(l, kind, port, name));
        }
        self.next_tunnel += 1;
        let tunnel = match (&name, port) {
            (Some(n), _) => format!("{n}-{kind}"),
            (None, Some(p)) => format!("tcp-{p}"),
            (None, None) => format!("ssh-{kind}-{}", self.next_tunnel),
        };
        Ok(request(tunnel, kind, port, name))
    }

    /// Writes `text` to every shell channel the client opened.
    fn tell(&self, session: &mut Session, text: &str) {
        for id in &self.shells {
            let _ = session.data(*id, text.replace('\n', "\r\n").into_bytes());
        }
    }

    pub(crate) fn url_lines(&self) -> String {
        let all = self.forwards.all();
        if all.is_empty() {
            return "tunneld: no forwards yet (ssh -R 0:localhost:PORT, -R NAME:80:localhost:PORT)\n"
                .into();
        }
        all.iter()
            .map(|f| format!("tunneld: {} -> {}:{}\n", f.endpoint, f.address, f.port))
            .collect()
    }

    /// Counts and logs a refused forward, tells the client's shell (if any), and answers no.
    fn forward_refused(
        &self,
        session: &mut Session,
        (address, port): (&str, u32),
        kind: &str,
        reason: &str,
        why: &str,
    ) -> bool {
        self.metrics
            .forwards_total
            .with_label_values(&[&self.cx.name, kind, reason])
            .inc();
        if self.cx.hub.refusal_log.allow() {
            tracing::warn!(transport = %self.cx.name, peer = %self.peer, %address, port, "SSH forward refused: {why}");
        }
        self.tell(
            session,
            &format!("tunneld: forward {address}:{port} refused: {why}\n"),
        );
        false
    }
}

fn request(
    name: String,
    kind: TunnelKind,
    port: Option<u16>,
    sub: Option<String>,
) -> TunnelRequest {
    TunnelRequest {
        name,
        kind,
        remote_port: port,
        frontend: None,
        proxy_protocol: None,
        subdomain: sub,
    }
}
