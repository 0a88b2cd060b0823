//! The idle connections of a pool, by key, and where a connection given back goes: into
//! free room, or, once the pool is full, in the place of the oldest idle connection of the
//! key furthest over its share.
//!
//! A key's share is the pool's room divided among the keys holding idle connections (the
//! key given back counted), capped at [`Caps::per_key`]: two busy keys at half the pool
//! each still leave a third its place, which it takes from one of them.

use super::{Caps, Conn, IDLE_FOR};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a full pool that refuses a connection looks for expired ones again: the scan
/// visits every idle connection under the pool's lock, so under load (a busy key keeping
/// the pool full, every connection given back refused) it runs at most this often, not
/// once a response.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
pub(super) struct State {
    pub(super) idle: HashMap<String, Vec<Idle>>,
    /// Idle connections in all.
    pub(super) count: usize,
    /// Whether a reaper task runs (it ends when nothing is idle).
    pub(super) reaping: bool,
    /// When expired connections were last dropped.
    expired_at: Option<Instant>,
}

/// An idle connection, and since when it is.
pub(super) struct Idle {
    pub(super) conn: Conn,
    pub(super) since: Instant,
}

impl Idle {
    /// Not expired, and not seen closed: what the reaper and a full pool keep, without
    /// polling every connection.
    pub(super) fn fresh(&self) -> bool {
        self.fresh_at(Instant::now())
    }

    fn fresh_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < IDLE_FOR && !self.conn.seen_closed()
    }

    /// Fresh, and not closed by the other end: what a request may take.
    pub(super) fn usable(&mut self) -> bool {
        self.fresh() && !self.conn.closed()
    }
}

/// Where a connection given back goes.
pub(super) enum Place {
    /// Into room the pool has.
    Free,
    /// In the place of the oldest idle connection of this key, the one furthest over its
    /// share (the pool is full, and the key given back is within its share).
    InsteadOf(String),
}

impl State {
    /// Where a connection of `key` given back goes under `caps`; `None`: it is not kept
    /// (a new key beyond the cap on keys, or a full pool and the key at its share already,
    /// or nobody over theirs).
    pub(super) fn place(&self, key: &str, caps: &Caps) -> Option<Place> {
        let mine = self.idle.get(key).map(Vec::len);
        if mine.is_none() && self.idle.len() >= caps.keys {
            return None;
        }
        if self.count < caps.total {
            return Some(Place::Free);
        }
        let share = self.share(caps, usize::from(mine.is_none()));
        if mine.unwrap_or(0) >= share {
            return None;
        }
        // Within its share, a key always finds one over theirs while the share is the
        // pool's room divided among the keys (the others hold more than their part of it).
        self.over_share(share).map(Place::InsteadOf)
    }

    /// Each key's share now: the pool's room divided among the keys holding idle
    /// connections and `more` keys about to, at most `caps.per_key`, at least one.
    pub(super) fn share(&self, caps: &Caps, more: usize) -> usize {
        let keys = (self.idle.len() + more).max(1);
        caps.per_key.min(caps.total / keys).max(1)
    }

    /// The key to close an idle connection of when one must go (its oldest): the key
    /// furthest over its share, else the key whose oldest connection is idle longest.
    pub(super) fn to_evict(&self, caps: &Caps) -> Option<String> {
        self.over_share(self.share(caps, 0)).or_else(|| {
            self.idle
                .iter()
                .filter_map(|(k, list)| Some((k, list.first()?.since)))
                .min_by_key(|(_, since)| *since)
                .map(|(k, _)| k.clone())
        })
    }

    /// The key holding the most idle connections, when that is more than its share.
    fn over_share(&self, share: usize) -> Option<String> {
        self.idle
            .iter()
            .map(|(k, list)| (k, list.len()))
            .filter(|(_, n)| *n > share)
            .max_by_key(|(_, n)| *n)
            .map(|(k, _)| k.clone())
    }

    /// Takes the connection of `key` idle longest out of the pool.
    pub(super) fn remove_oldest(&mut self, key: &str) -> Option<Idle> {
        let list = self.idle.get_mut(key)?;
        let oldest = (!list.is_empty()).then(|| list.remove(0));
        if list.is_empty() {
            self.idle.remove(key);
        }
        self.count -= usize::from(oldest.is_some());
        oldest
    }

    /// Drops expired and closed connections.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        self.idle.retain(|_, list| {
            list.retain(|i| i.fresh_at(now));
            !list.is_empty()
        });
        self.count = self.idle.values().map(Vec::len).sum();
        self.expired_at = Some(now);
    }

    /// [`Self::expire`] unless it ran in the last [`EXPIRE_EVERY`]; whether it ran.
    pub(super) fn expire_if_due(&mut self) -> bool {
        if self.expired_at.is_some_and(|t| t.elapsed() < EXPIRE_EVERY) {
            return false;
        }
        self.expire();
        true
    }
}
