//! What the hub asks of a cluster (several tunneld nodes sharing one routing table): the
//! daemon's cluster mode implements [`ClusterRoutes`]; a single tunneld installs none and the
//! hub claims on its own frontends only.
//!
//! A claim is made on the local frontend first, then registered cluster-wide; other nodes
//! mirror it on their own frontends so visitors anywhere reach the node holding the session.

use crate::frontend::{Claim, ClaimError, ClaimRequest};
use async_trait::async_trait;
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
    ) -> Result<Box<dyn Send + Sync>, ClaimError>;
}
