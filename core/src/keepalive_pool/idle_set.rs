//! The idle connections of a pool, by key, and where a connection given back goes: into
//! free room, or, once the pool is full, in the place of the oldest idle connection of the
//! key furthest over its share.

use super::{Caps, Conn, IDLE_FOR};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Default)]
pub(super) struct State {
    pub(super) idle: HashMap<String, Vec<Idle>>,
    /// Idle connections in all.
    pub(super) count: usize,
    /// Whether a reaper task runs (it ends when nothing is idle).
    pub(super) reaping: bool,
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
        self.since.elapsed() < IDLE_FOR && !self.conn.seen_closed()
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
        if mine.unwrap_or(0) >= caps.per_key {
            return None;
        }
        self.over_share(caps.per_key).map(Place::InsteadOf)
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
        self.idle.retain(|_, list| {
            list.retain(Idle::fresh);
            !list.is_empty()
        });
        self.count = self.idle.values().map(Vec::len).sum();
    }
}
