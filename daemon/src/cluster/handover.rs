//! A node drained with SIGTERM hands its clients over: new sessions are refused (retriable,
//! so tunnelc tries its next server), every tunnelc that reads it is told to open a session
//! at another node now, and the node waits (bounded) until their routes moved. The old
//! sessions keep carrying their open streams until the drain ends.

use super::Cluster;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a leaving node looks whether its routes moved (the view it reads is refreshed
/// by the events channel within milliseconds).
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// What a handover did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// Sessions told to reconnect elsewhere.
    pub told: usize,
    /// Their routes that another node holds now.
    pub moved: usize,
    /// Their routes still here when the wait ended.
    pub left: usize,
}

impl Cluster {
    pub(super) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Starts leaving: refuses new sessions, tells every session's tunnelc to reconnect
    /// elsewhere, and waits up to `within` until another node holds their routes.
    pub async fn hand_over(&self, within: Duration) -> Handover {
        self.leaving.store(true, Ordering::Relaxed);
        let Some(hub) = self.hub.upgrade() else {
            return Handover::default();
        };
        let reason = format!(
            "node `{}` is leaving the cluster: connect to another node",
            self.cfg.node
        );
        let told: HashSet<u64> = hub.hand_over_all(&reason).into_iter().collect();
        // The clients' presence moves with them.
        drop(std::mem::take(&mut *tunneld_core::sync::lock(
            &self.presence,
        )));
        drop(hub);
        tracing::info!(node = %self.cfg.node, sessions = told.len(), "cluster: handing the sessions over to other nodes");
        let waiting = || {
            tunneld_core::sync::lock(&self.local)
                .values()
                .filter(|r| told.contains(&r.entry.session) && !r.closed.is_cancelled())
                .count()
        };
        let before = waiting();
        let deadline = Instant::now() + within;
        self.resync.notify_one();
        loop {
            self.notice_taken();
            let left = waiting();
            if left == 0 || Instant::now() >= deadline {
                let done = Handover {
                    told: told.len(),
                    moved: before.saturating_sub(left),
                    left,
                };
                tracing::info!(node = %self.cfg.node, moved = done.moved, left = done.left, "cluster: handover done");
                return done;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// Routes of this node that the view shows held by another node now: handed over.
    fn notice_taken(&self) {
        let view = self.view();
        let taken: Vec<_> = tunneld_core::sync::lock(&self.local)
            .iter()
            .filter(|(key, r)| {
                view.routes.get(*key).is_some_and(|v| {
                    (v.node != self.cfg.node || v.boot != self.started) && v.since >= r.entry.since
                })
            })
            .map(|(k, r)| (k.clone(), r.entry.clone()))
            .collect();
        for (key, entry) in taken {
            self.lost(&key, &entry);
        }
    }
}
