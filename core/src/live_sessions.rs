//! The live sessions the hub keeps: each session's claims, leases and stream budget, the
//! per-client registry of sessions, and the [`Target`] that resolves a route to a session at
//! each visitor.

use crate::auth::Identity;
use crate::frontend::Claim;
use crate::http_forward::Body;
use crate::hub::Target;
use crate::io::BoxIo;
use crate::limits::LiveLimits;
use crate::proto::{Control, TunnelRequest, TunnelStatus};
use crate::session::{OpenError, OpenStream, SessionInfo, StreamHeader};
use crate::stream_budget::{BudgetPermit, StallGuard, StreamBudget};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a visitor waits for an idle kept stream it evicted to close (a moment: its
/// connection task only has to notice).
const EVICT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Idle kept streams one refused visitor may close for a place before it is refused.
const EVICT_ROUNDS: usize = 4;

/// A claim a session holds, with the frontend it is on.
pub(crate) struct HeldClaim {
    pub(crate) frontend: String,
    /// The session's tunnel the claim serves.
    pub(crate) tunnel: String,
    pub(crate) claim: Claim,
    /// What the tunnelc asked for, so the claim can be made again on a rebuilt frontend.
    pub(crate) request: TunnelRequest,
}

/// A provisioned tunnel (lease) a session serves.
pub(crate) struct LeaseUse {
    pub(crate) tunnel: String,
    /// Cluster mode: the route registered for it (given up when dropped).
    pub(crate) route: Option<Box<dyn Send + Sync>>,
}

/// A live session as the hub keeps it.
pub struct LiveSession {
    pub info: SessionInfo,
    /// Who the session authenticated as (its quotas when a claim is made again).
    pub(crate) who: Identity,
    /// Whether its tunnelc reads `retrying` in tunnel statuses ([`crate::proto::CAP_RETRYING`]).
    pub(crate) tells_retrying: bool,
    /// Whether its tunnelc reads a handover ([`crate::proto::CAP_HANDOVER`]).
    pub(crate) takes_handover: bool,
    pub opener: Arc<dyn OpenStream>,
    /// Idle HTTP/1.1 streams kept for the next request, when its tunnelc keeps them alive.
    pub(crate) kept: Option<crate::kept_streams::KeptStreams>,
    /// Cancelled when the session must end (replaced, shutdown, expired).
    pub closed: CancellationToken,
    pub accept_server_mappings: bool,
    pub(crate) tunnels: Mutex<Vec<TunnelStatus>>,
    pub(crate) claims: Mutex<Vec<HeldClaim>>,
    /// Provisioned tunnels (leases) this session serves.
    pub(crate) leased: Mutex<Vec<LeaseUse>>,
    pub(crate) budget: Arc<StreamBudget>,
    pub(crate) limits: LiveLimits,
    /// The limits as they were when the session was admitted: what its welcome announced
    /// (keepalive, head sizes), so its transport pings and sizes its link by the same.
    pub announced: crate::limits::DataLimits,
    pub(crate) transport_name: String,
    pub(crate) refused: prometheus::IntCounterVec,
    pub(crate) stalled: prometheus::IntCounter,
    pub(crate) notify: mpsc::UnboundedSender<Control>,
}

impl LiveSession {
    /// The statuses of the tunnels the session asked for in its hello.
    pub fn tunnels(&self) -> Vec<TunnelStatus> {
        lock(&self.tunnels).clone()
    }

    /// Tells the session's tunnelc its whole tunnel list (a `tunnels` control message); a
    /// session whose transport has ended drops it.
    pub fn notify_tunnels(&self, tunnels: Vec<TunnelStatus>) {
        let _ = self.notify.send(Control::Tunnels { tunnels });
    }

    /// Tells the session's tunnelc to open a session elsewhere now (a `handover` control
    /// message), when it reads one; answers whether it was told.
    pub fn hand_over(&self, reason: &str) -> bool {
        self.takes_handover
            && !self.closed.is_cancelled()
            && self
                .notify
                .send(Control::Handover {
                    reason: reason.to_string(),
                })
                .is_ok()
    }

    pub(crate) fn permit(&self, header: &StreamHeader) -> Result<BudgetPermit, OpenError> {
        self.budget
            .acquire(&header.tunnel, header.visitor.ip())
            .inspect_err(|e| {
                let reason = match e {
                    OpenError::Capped(w) if w.contains("address") => "address_cap",
                    _ => "tunnel_cap",
                };
                self.refused
                    .with_label_values(&[&self.transport_name, reason])
                    .inc();
            })
    }

    /// Opens a visitor stream within the session's stream budget; the stream fails its
    /// writes when they make no progress for `limits.stream_stall_timeout`.
    pub async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let permit = self.permit(&header)?;
        let io = self.guarded(header).await?;
        Ok(Box::new(io.holding(permit)))
    }

    /// A new stream whose writes fail when they make no progress for
    /// `limits.stream_stall_timeout`.
    async fn guarded(&self, header: StreamHeader) -> Result<StallGuard<BoxIo>, OpenError> {
        let retry = self
            .kept
            .as_ref()
            .filter(|k| k.idle() > 0)
            .map(|_| header.clone());
        let mut opened = self.opener.open(header).await;
        // Every stream of the session in use, some idle in the keep-alive pool: the one idle
        // longest gives its place to this visitor. The freed place is nobody's in
        // particular (a concurrent opening may take it first), so a few rounds.
        if let Some(header) = retry {
            for _ in 0..EVICT_ROUNDS {
                if !matches!(opened, Err(OpenError::TooManyStreams)) {
                    break;
                }
                let Some(closed) = self.kept.as_ref().and_then(|k| k.evict_oldest()) else {
                    break;
                };
                let _ = tokio::time::timeout(EVICT_WAIT, closed).await;
                opened = self.opener.open(header.clone()).await;
            }
        }
        let io = opened?;
        Ok(StallGuard::new(
            io,
            self.limits.get().stream_stall_timeout,
            Some(self.stalled.clone()),
        ))
    }

    /// Every stream of the session in use and some idle in the keep-alive pool: the one idle
    /// longest is closed, so a request that may not go on a kept stream (which `request`
    /// consumes, and cannot try again) gets its place, as a new stream does in
    /// [`Self::guarded`].
    async fn make_room(&self) {
        let Some(kept) = &self.kept else { return };
        for _ in 0..EVICT_ROUNDS {
            if !self.opener.is_full() {
                return;
            }
            let Some(closed) = kept.evict_oldest() else {
                return;
            };
            let _ = tokio::time::timeout(EVICT_WAIT, closed).await;
        }
    }

    /// Forwards one visitor request within the budget (on a kept-alive stream when the
    /// session keeps them); the permit lives as long as the response body.
    pub async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OpenError> {
        let permit = self.permit(&header)?;
        let kept = self.kept.as_ref().and_then(|k| Some((k, k.key(&header)?)));
        let resp = match kept {
            Some((kept, key)) => {
                let max_head = self.limits.get().max_response_head;
                let open = || async {
                    let io: BoxIo = Box::new(self.guarded(header).await?);
                    Ok(io)
                };
                kept.request(&key, req, max_head, open).await?
            }
            None => {
                self.make_room().await;
                self.opener.request(header, req).await?
            }
        };
        Ok(resp.map(|b| crate::http_forward::holding(b, permit)))
    }

    /// Whether the session holds `port` or `name` on `frontend`.
    pub(crate) fn holds(&self, frontend: &str, port: Option<u16>, name: Option<&str>) -> bool {
        lock(&self.claims).iter().any(|h| {
            h.frontend == frontend
                && ((port.is_some() && h.claim.port == port)
                    || (name.is_some() && h.claim.name.as_deref() == name))
        })
    }

    pub(crate) fn uses_lease(&self, tunnel: &str) -> bool {
        lock(&self.leased).iter().any(|u| u.tunnel == tunnel)
    }

    /// Whether the session holds a claim on `frontend`.
    pub fn holds_on(&self, frontend: &str) -> bool {
        lock(&self.claims).iter().any(|h| h.frontend == frontend)
    }

    /// Releases the session's claims on `frontend` (a reload removed it): those tunnels get
    /// `why` as their error, the others stay. Answers the tunnel list after, or `None` when
    /// the session held nothing there.
    pub fn drop_frontend(&self, frontend: &str, why: &str) -> Option<Vec<TunnelStatus>> {
        let gone = self.take_claims_on(frontend);
        if gone.is_empty() {
            return None;
        }
        let mut tunnels = lock(&self.tunnels);
        for st in tunnels.iter_mut() {
            if gone.iter().any(|h| h.tunnel == st.name) {
                st.endpoint = None;
                st.error = Some(why.to_string());
                st.retrying = false;
            }
        }
        Some(tunnels.clone())
    }

    /// Takes the session's claims on `frontend` out of its list (dropping them releases them).
    pub(crate) fn take_claims_on(&self, frontend: &str) -> Vec<HeldClaim> {
        let mut claims = lock(&self.claims);
        let (gone, keep) = std::mem::take(&mut *claims)
            .into_iter()
            .partition(|h| h.frontend == frontend);
        *claims = keep;
        gone
    }

    /// Sets tunnel `status.name`'s entry in the session's list.
    pub(crate) fn set_status(&self, status: TunnelStatus) {
        let mut tunnels = lock(&self.tunnels);
        match tunnels.iter_mut().find(|t| t.name == status.name) {
            Some(t) => *t = status,
            None => tunnels.push(status),
        }
    }

    /// Ends the session and releases its claims now (not when its transport notices).
    pub(crate) fn replace(&self) {
        self.closed.cancel();
        drop(std::mem::take(&mut *lock(&self.claims)));
        lock(&self.leased).clear();
    }

    /// How the session is named in a refusal: `session 7 (yamux from 1.2.3.4:5, for 12 s)`.
    pub fn describe(&self) -> String {
        let age = self
            .info
            .connected_at
            .elapsed()
            .unwrap_or_default()
            .as_secs();
        format!(
            "session {} ({} from {}, connected {} s ago)",
            self.info.id, self.info.transport, self.info.remote, age
        )
    }
}

pub(crate) use crate::sync::lock;

/// Clients remembered as having had sessions that all ended (for threshold's `ClientClosed`).
const DEPARTED_KEPT: usize = 4096;

/// The live sessions of each client, oldest first.
#[derive(Default)]
pub(crate) struct Sessions {
    by_client: Mutex<HashMap<String, Vec<Arc<LiveSession>>>>,
    /// Clients whose last session ended, with when (bounded: the oldest are forgotten).
    departed: Mutex<HashMap<String, std::time::SystemTime>>,
}

impl Sessions {
    /// The newest live session of `client`.
    pub(crate) fn get(&self, client: &str) -> Option<Arc<LiveSession>> {
        lock(&self.by_client)
            .get(client)
            .and_then(|v| v.iter().rev().find(|s| !s.closed.is_cancelled()).cloned())
    }

    /// Every live session of `client`, oldest first.
    pub(crate) fn all(&self, client: &str) -> Vec<Arc<LiveSession>> {
        lock(&self.by_client)
            .get(client)
            .map(|v| {
                v.iter()
                    .filter(|s| !s.closed.is_cancelled())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every live session, by client then age.
    pub(crate) fn every(&self) -> Vec<Arc<LiveSession>> {
        let mut v: Vec<_> = lock(&self.by_client)
            .values()
            .flat_map(|v| v.iter().cloned())
            .collect();
        v.sort_by(|a, b| {
            a.info
                .client_id
                .cmp(&b.info.client_id)
                .then(a.info.id.cmp(&b.info.id))
        });
        v
    }

    pub(crate) fn insert(&self, s: Arc<LiveSession>) {
        lock(&self.by_client)
            .entry(s.info.client_id.clone())
            .or_default()
            .push(s);
    }

    pub(crate) fn remove(&self, s: &LiveSession) {
        let mut map = lock(&self.by_client);
        if let Some(v) = map.get_mut(&s.info.client_id) {
            v.retain(|x| x.info.id != s.info.id);
            if v.is_empty() {
                map.remove(&s.info.client_id);
                drop(map);
                let mut gone = lock(&self.departed);
                if gone.len() >= DEPARTED_KEPT && !gone.contains_key(&s.info.client_id) {
                    if let Some(oldest) =
                        gone.iter().min_by_key(|(_, t)| **t).map(|(c, _)| c.clone())
                    {
                        gone.remove(&oldest);
                    }
                }
                gone.insert(s.info.client_id.clone(), std::time::SystemTime::now());
            }
        }
    }

    /// Clients whose sessions all ended (they may be connected again since), with when
    /// their last one ended.
    pub(crate) fn departed(&self) -> Vec<(String, std::time::SystemTime)> {
        lock(&self.departed)
            .iter()
            .map(|(c, t)| (c.clone(), *t))
            .collect()
    }
}

/// Which session a route's visitors go to, resolved at each visitor.
pub(crate) enum Via {
    /// The session that made the claim.
    Session(Weak<LiveSession>),
    /// The session that serves a provisioned tunnel (a lease outlives sessions).
    Lease {
        sessions: Weak<Sessions>,
        client_id: String,
        tunnel: String,
    },
    /// The client's newest session (admin mappings name clients, not sessions).
    Client {
        sessions: Weak<Sessions>,
        client_id: String,
    },
}

/// A [`Target`] that resolves to a live session through [`Via`].
pub struct SessionTarget(pub(crate) Via);

impl SessionTarget {
    fn live(&self) -> Result<Arc<LiveSession>, OpenError> {
        let found = match &self.0 {
            Via::Session(s) => s.upgrade().filter(|s| !s.closed.is_cancelled()),
            Via::Lease {
                sessions,
                client_id,
                tunnel,
            } => sessions.upgrade().and_then(|all| {
                all.all(client_id)
                    .into_iter()
                    .rev()
                    .find(|s| s.uses_lease(tunnel))
            }),
            Via::Client {
                sessions,
                client_id,
            } => sessions.upgrade().and_then(|s| s.get(client_id)),
        };
        found.ok_or(OpenError::Offline)
    }
}

#[async_trait]
impl Target for SessionTarget {
    async fn open(&self, header: StreamHeader, _: Option<&str>) -> Result<BoxIo, OpenError> {
        self.live()?.open(header).await
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OpenError> {
        self.live()?.request(header, req).await
    }

    fn home(&self) -> Option<crate::home::Home> {
        self.live().ok()?.opener.home()
    }

    fn online(&self) -> bool {
        self.live().is_ok()
    }
}
