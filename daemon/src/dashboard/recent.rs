//! Recent errors and refusals for the dashboard: a bounded ring of the last [`KEPT`] events,
//! each with when, what and why. Fed by the dashboard's own login refusals and, once a
//! second, by the increase of the refusal counters tunneld already keeps (see `stats`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Events kept; older ones are dropped.
pub const KEPT: usize = 100;
/// Longest reason kept, in characters.
pub const MAX_WHY: usize = 200;

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
    /// Records an event. The same event again within a second adds to the last row's count
    /// (a flood of refusals is one row, not the end of the others); a reason is cut at
    /// [`MAX_WHY`] characters.
    pub fn push(&self, what: impl Into<String>, why: impl Into<String>, count: u64) {
        let (what, mut why) = (what.into(), why.into());
        if let Some((at, _)) = why.char_indices().nth(MAX_WHY) {
            why.truncate(at);
            why.push('…');
        }
        let mut ring = tunneld_core::sync::lock(&self.ring);
        if let Some(last) = ring.back_mut() {
            let recent = last.at.elapsed().is_ok_and(|d| d.as_secs() < 1);
            if recent && last.what == what && last.why == why {
                last.count += count;
                return;
            }
        }
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(Event {
            at: SystemTime::now(),
            what,
            why,
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

    #[test]
    fn a_flood_is_one_row_and_long_reasons_are_cut() {
        let r = Recent::default();
        r.push("other", "first", 1);
        for _ in 0..1000 {
            r.push("dashboard login refused", "wrong token from 192.0.2.1", 1);
        }
        r.push("x", "y".repeat(5000), 1);
        let all = r.newest_first();
        assert_eq!(all.len(), 3, "the earlier row stays");
        assert_eq!(all[1].count, 1000);
        assert_eq!(all[0].why.chars().count(), MAX_WHY + 1);
    }
}
