//! Recent errors and refusals for the dashboard: a bounded ring of the last [`KEPT`] events,
//! each with when, what and why. Fed by the dashboard's own login refusals and, once a
//! second, by the increase of the refusal counters tunneld already keeps (see `stats`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Events kept; older ones are dropped.
pub const KEPT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    /// What was refused (`handshake refused`, `dashboard login refused`, ...).
    pub what: String,
    /// Why, as the counter's labels or the refusal's words.
    pub why: String,
    /// How many of them in that second (1 for single events).
    pub count: u64,
}

#[derive(Default)]
pub struct Recent {
    ring: Mutex<VecDeque<Event>>,
    /// Events pushed since start (the page reloads its tables when it moves).
    pushed: AtomicU64,
}

impl Recent {
    pub fn push(&self, what: impl Into<String>, why: impl Into<String>, count: u64) {
        let mut ring = tunneld_core::sync::lock(&self.ring);
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(Event {
            at: SystemTime::now(),
            what: what.into(),
            why: why.into(),
            count,
        });
        self.pushed.fetch_add(1, Ordering::Relaxed);
    }

    /// Events pushed since start.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        tunneld_core::sync::lock(&self.ring)
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_newest_first() {
        let r = Recent::default();
        for i in 0..(KEPT + 5) {
            r.push("x", format!("n{i}"), 1);
        }
        let all = r.newest_first();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].why, format!("n{}", KEPT + 4));
        assert_eq!(all[KEPT - 1].why, "n5");
        assert_eq!(r.pushed(), (KEPT + 5) as u64);
    }
}
