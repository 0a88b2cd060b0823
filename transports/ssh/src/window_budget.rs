//! One SSH session's window budget: how much more window the visitors' readers may grant
//! their channels (channel_io.rs), what a channel opens with, and whether one more visitor
//! fits. A channel's *commitment* is what the client may still send it plus what waits
//! unread for it; the session's channels' commitments together stay within
//! `max_session_backlog`, beyond the [`FLOOR`] each is always refilled to, and within twice
//! it altogether.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The window every forwarded channel opens with (russh's `window_size`), and keeps
/// whatever its session's budget: two SSH packets.
pub(crate) const FLOOR: u32 = 64 * 1024;

/// The window budget and backlog cap of one SSH session.
pub(crate) struct BacklogBudget {
    /// The most one channel may have committed (`window_size`).
    pub(crate) window: usize,
    /// The least: what it opens with, refilled whatever the budget (`FLOOR`, or `window`
    /// when that is smaller).
    pub(crate) floor: usize,
    /// A visitor whose backlog passes this is cut (`max_backlog`).
    pub(crate) per_visitor: usize,
    /// All the session's channels' commitments together stay within this, beyond each
    /// one's floor (`max_session_backlog`).
    pub(crate) per_session: usize,
    /// The session's channels' commitments now.
    pub(crate) committed: AtomicUsize,
    /// The session's forwarded channels open now.
    pub(crate) open: AtomicUsize,
    /// Bytes waiting unread in every session's backlogs (`tunneld_ssh_backlog_bytes`).
    pub(crate) waiting: prometheus::IntGauge,
    pub(crate) cuts: prometheus::IntCounterVec,
    pub(crate) transport: String,
}

impl BacklogBudget {
    pub(crate) fn new(
        window: u32,
        per_visitor: usize,
        per_session: usize,
        cuts: prometheus::IntCounterVec,
        waiting: prometheus::IntGauge,
        transport: String,
    ) -> Arc<Self> {
        let window = window as usize;
        Arc::new(Self {
            window,
            floor: window.min(FLOOR as usize),
            per_visitor,
            per_session,
            committed: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            waiting,
            cuts,
            transport,
        })
    }

    /// The session's channels' commitments now.
    #[cfg(test)]
    pub(crate) fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// How much more window to grant a channel with `committed` bytes committed: up to its
    /// share of the session's budget (the budget over the channels open, within the floor
    /// and `window`) out of what is free, and at least back up to the floor; nothing while
    /// the channel still has over half its share, or when the grant would be smaller than
    /// half the floor (too small to be worth a message). Counted as committed.
    pub(crate) fn grant(&self, committed: usize) -> usize {
        let open = self.open.load(Ordering::Relaxed).max(1);
        let share = (self.per_session / open).clamp(self.floor, self.window);
        if committed > share / 2 {
            return 0;
        }
        let mut amount = 0;
        // Readers on both threads may grant at once: each takes what is free when it adds.
        let taken = self
            .committed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                let free = self.per_session.saturating_sub(total);
                amount = (share - committed)
                    .min(free)
                    .max(self.floor.saturating_sub(committed));
                (amount >= self.floor / 2).then_some(total + amount)
            });
        if taken.is_ok() {
            amount
        } else {
            0
        }
    }

    /// Takes one more visitor's opening window, if the session's channels' commitments (with
    /// the floor each is refilled to whatever the budget) stay within twice the budget, so
    /// what a session's visitors can leave unread at tunneld is bounded however many come.
    /// [`ChannelIo::start`] takes the reservation over; [`Self::unreserve`] gives it back
    /// when the channel does not open.
    pub(crate) fn reserve(&self) -> bool {
        self.committed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                (total + self.floor <= 2 * self.per_session).then_some(total + self.floor)
            })
            .is_ok()
    }

    /// Gives back a reservation whose channel did not open.
    pub(crate) fn unreserve(&self) {
        self.committed.fetch_sub(self.floor, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 1 << 20;
    const F: usize = FLOOR as usize;

    fn budget(per_session: usize) -> Arc<BacklogBudget> {
        let cuts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("cuts", "test"),
            &["transport", "cap"],
        )
        .expect("counter");
        let waiting = prometheus::IntGauge::new("waiting", "test").expect("gauge");
        BacklogBudget::new(W as u32, 2 * W, per_session, cuts, waiting, "t".into())
    }

    /// A channel's commitment taken from `b` (as an open does) or given back (a close).
    fn take(b: &BacklogBudget, n: usize) {
        b.committed.fetch_add(n, Ordering::Relaxed);
    }
    fn give_back(b: &BacklogBudget, n: usize) {
        b.committed.fetch_sub(n, Ordering::Relaxed);
    }

    #[test]
    fn grants_fill_a_window_from_the_session_budget_and_never_fall_below_the_floor() {
        // Room for the floor of three channels and 1.5 windows besides.
        let b = budget(3 * F + W + W / 2);
        (0..3).for_each(|_| take(&b, F));
        assert_eq!(b.grant(F), W - F, "the first gets a whole window");
        assert_eq!(b.grant(W / 2 + 1), 0, "over half a window: not yet");
        assert_eq!(b.grant(F), W / 2 + F, "the second, what is left");
        assert_eq!(
            b.grant(F),
            0,
            "the budget is spent: the third keeps its floor"
        );
        assert_eq!(b.grant(F / 4), F - F / 4, "but is refilled up to it");
        assert_eq!(b.grant(F / 2 + 1), 0, "a refill under half the floor waits");
        assert_eq!(
            b.committed(),
            3 * F + W + W / 2 + (F - F / 4),
            "the floor's overdraft"
        );
        // The first channel closes: its window goes back to the budget.
        give_back(&b, W);
        assert_eq!(b.grant(F), W - F, "a whole window again");
    }

    #[test]
    fn many_open_channels_share_the_budget_instead_of_the_first_ones_taking_it() {
        let b = budget(16 * 2 * F);
        b.open.store(16, Ordering::Relaxed);
        assert_eq!(b.grant(F), F, "a sixteenth of the budget each: two floors");
        assert_eq!(b.grant(F + 1), 0, "over half of that: not yet");
        b.open.store(1000, Ordering::Relaxed);
        assert_eq!(b.grant(F / 2), F / 2, "never less than the floor");
        b.open.store(1, Ordering::Relaxed);
        assert_eq!(
            b.grant(F),
            W - F,
            "alone: a whole window (the budget allowing)"
        );
    }

    #[test]
    fn visitors_are_taken_while_commitments_stay_within_twice_the_budget() {
        let b = budget(4 * F);
        (0..7).for_each(|_| take(&b, F));
        assert!(
            b.reserve(),
            "seven floors and one more: eight, twice the budget"
        );
        assert!(!b.reserve(), "no room for a ninth");
        b.unreserve();
        assert!(
            b.reserve(),
            "the eighth's reservation given back: room again"
        );
        give_back(&b, F);
        assert!(b.reserve(), "a visitor gone: room for another");
        assert!(!b.reserve());
        assert_eq!(b.committed(), 8 * F);
    }
}
