//! What the hub asks of a cluster (several tunneld nodes sharing one routing table): the
//! daemon's cluster mode implements [`ClusterRoutes`]; a single tunneld installs none and the
//! hub claims on its own frontends only.
//!
//! A claim is made on the local frontend first, then registered cluster-wide; other nodes
//! mirror it on their own frontends so visitors anywhere reach the node holding the session.

use crate::frontend::{Claim, ClaimError, ClaimRequest};
use crate::http_forward::Body;
use crate::hub::Target;
use crate::io::BoxIo;
use crate::session::{OpenError, StreamHeader};
use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The session a claim is made for, as the cluster sees it.
pub struct ClaimingSession<'a> {
    /// The session's id on this node.
    pub id: u64,
    /// The tunnelc instance id of its hello, when it sent one: the same tunnelc coming back
    /// through another node takes its routes over at once.
    pub instance: Option<&'a str>,
    /// Cancelled to end the session (when the cluster gives its route to someone else).
    pub closed: CancellationToken,
}

/// The cluster's routing table, as the hub uses it around each claim.
#[async_trait]
pub trait ClusterRoutes: Send + Sync {
    /// Before `req` is claimed on frontend `frontend`: frees the local mirror of a route of
    /// this owner that the session may take over (its own tunnelc coming back, or a holder on a
    /// node that is gone), and turns an `Ask::Any` into the port or name the cluster holds
    /// for this owner's tunnel. Err: the route is live elsewhere and may not move.
    async fn prepare(
        &self,
        frontend: &str,
        req: &mut ClaimRequest,
        session: &ClaimingSession<'_>,
    ) -> Result<(), ClaimError>;

    /// After `claim` was made locally: registers it cluster-wide. The answer is held with the
    /// claim (dropping it stops renewing the route); an error means another node holds it
    /// (the local claim is then dropped).
    async fn register(
        &self,
        frontend: &str,
        claim: &Claim,
        req: &ClaimRequest,
        session: &ClaimingSession<'_>,
    ) -> Result<Box<dyn Send + Sync>, ClaimError> {
        self.register_route(frontend, (claim.port, claim.name.as_deref()), req, session)
            .await
    }

    /// [`ClusterRoutes::register`] by port or name: a session taking up a route this node
    /// already holds for it (a provisioned tunnel's lease) registers it so.
    async fn register_route(
        &self,
        frontend: &str,
        at: (Option<u16>, Option<&str>),
        req: &ClaimRequest,
        session: &ClaimingSession<'_>,
    ) -> Result<Box<dyn Send + Sync>, ClaimError>;

    /// A claim this node holds whoever serves it (a provisioned tunnel's lease, claimed on
    /// every node that restores it): the target that reaches the node whose session serves
    /// it (for when none here does), and a guard that keeps the cluster from mirroring that
    /// route here while it is held.
    fn held_here(
        &self,
        frontend: &str,
        at: (Option<u16>, Option<&str>),
        owner: &str,
    ) -> (Arc<dyn Target>, Box<dyn Send + Sync>);

    /// A target reaching the sessions of `client` at another node (for routes that follow a
    /// client rather than a session: admin mappings), when the cluster knows a live one.
    fn client_remote(&self, client: &str) -> Option<Arc<dyn Target>>;
}

/// A target that prefers the local one and, when it has no session here, reaches the route
/// through the cluster (set once the claim is made and its port or name known).
pub(crate) struct OrRemote {
    pub(crate) local: Arc<dyn Target>,
    pub(crate) remote: std::sync::OnceLock<Arc<dyn Target>>,
}

#[async_trait]
impl Target for OrRemote {
    async fn open(
        &self,
        header: StreamHeader,
        server_name: Option<&str>,
    ) -> Result<BoxIo, OpenError> {
        match self.remote.get() {
            Some(r) if !self.local.online() => r.open(header, server_name).await,
            _ => self.local.open(header, server_name).await,
        }
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, OpenError> {
        match self.remote.get() {
            Some(r) if !self.local.online() => r.request(header, req).await,
            _ => self.local.request(header, req).await,
        }
    }

    fn online(&self) -> bool {
        self.local.online() || self.remote.get().is_some_and(|r| r.online())
    }
}
