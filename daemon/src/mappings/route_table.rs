//! The target behind an admin port: the route picked by the visitor's server name, then a
//! pool member in turn (failing over to the next when one is offline or slow).

use super::{Route, POOL_MEMBER_TIMEOUT};
use crate::metrics::DaemonMetrics;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use tunneld_core::hostglob::{best_match, HostGlob};
use tunneld_core::hub::{Hub, Target};
use tunneld_core::io::BoxIo;
use tunneld_core::session::{OpenError, StreamHeader};
use tunneld_core::sync::lock;

/// The target of an admin port: picks the route by server name, then a pool member.
pub struct RouteTable {
    pub(super) routes: Mutex<Arc<Vec<Route>>>,
    pub(super) hub: Weak<Hub>,
    pub(super) metrics: Arc<DaemonMetrics>,
}

impl RouteTable {
    fn current(&self) -> Arc<Vec<Route>> {
        lock(&self.routes).clone()
    }

    pub(super) fn replace(&self, routes: Vec<Route>) {
        *lock(&self.routes) = Arc::new(routes);
    }
}

#[async_trait]
impl Target for RouteTable {
    fn routes_by_name(&self) -> bool {
        let routes = self.current();
        !(routes.len() == 1 && routes[0].glob == HostGlob::Any)
    }

    async fn open(
        &self,
        mut header: StreamHeader,
        server_name: Option<&str>,
    ) -> Result<BoxIo, OpenError> {
        let routes = self.current();
        let route = best_match(routes.iter().map(|r| &r.glob), server_name)
            .and_then(|i| routes.get(i))
            .ok_or_else(|| OpenError::NoRoute(server_name.map(str::to_string)))?;
        header.tunnel = route.name.clone();
        header.target = Some(route.target.clone());
        header.proxy_protocol = route.proxy_protocol;
        let hub = self.hub.upgrade().ok_or(OpenError::Offline)?;
        let n = route.members.len();
        let start = route.next.fetch_add(1, Ordering::Relaxed);
        let mut last = OpenError::Offline;
        for i in 0..n {
            let member = &route.members[(start + i) % n];
            // A member connected here, else (cluster mode) at another node.
            let attempt = match hub.client_session(member) {
                Some(session) => {
                    let h = header.clone();
                    Box::pin(async move { session.open(h).await })
                        as futures::future::BoxFuture<'_, Result<BoxIo, OpenError>>
                }
                None => match hub.remote_client(member) {
                    Some(remote) => {
                        let h = header.clone();
                        Box::pin(async move { remote.open(h, None).await })
                    }
                    None => {
                        if n > 1 {
                            self.metrics
                                .pool_failovers_total
                                .with_label_values(&[&route.name, "offline"])
                                .inc();
                        }
                        continue;
                    }
                },
            };
            // In a pool one member may not hold the whole visitor's wait.
            let opened = if n > 1 {
                tokio::time::timeout(POOL_MEMBER_TIMEOUT, attempt)
                    .await
                    .unwrap_or(Err(OpenError::Timeout))
            } else {
                attempt.await
            };
            match opened {
                Ok(io) => {
                    self.metrics
                        .pool_streams_total
                        .with_label_values(&[&route.name, member])
                        .inc();
                    return Ok(io);
                }
                Err(e) => {
                    tracing::debug!(route = %route.name, client = %member, error = %e, "pool member failed");
                    if n > 1 {
                        self.metrics
                            .pool_failovers_total
                            .with_label_values(&[&route.name, e.reason()])
                            .inc();
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}
