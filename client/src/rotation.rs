//! Which tunneld server tunnelc tries next, and how long it waits first: round robin over
//! `server` and `servers` (a cluster behind several addresses), with a jittered exponential
//! backoff that grows only when a whole round of servers failed.

use std::time::Duration;
use tunneld_core::auth::random_bytes;

/// A session up at least this long worked: the wait after it starts from
/// `reconnect.initial` again. A shorter one counts as a failure of its server, so a server
/// that welcomes and drops at once is not retried in a hot loop.
pub(crate) const STABLE: Duration = Duration::from_secs(10);

/// Backoff: doubles from `initial` up to `max` with each attempt; each wait is drawn from
/// [d/2, d].
struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// The wait at this attempt.
    fn current(&self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        let r = u64::from_le_bytes(random_bytes::<8>());
        let half = base / 2;
        half + Duration::from_nanos(r % (half.as_nanos().max(1) as u64))
    }
}

/// Round robin over `count` servers (index 0 is `server`, first). Every failure moves to
/// the next server after a wait; the wait doubles only once a whole round of servers failed
/// in a row. With one server this is plain [`Backoff`].
pub(crate) struct ServerRotation {
    count: usize,
    current: usize,
    /// Failures in a row in this round (since the last working session or full round).
    failed: usize,
    backoff: Backoff,
}

impl ServerRotation {
    pub(crate) fn new(count: usize, initial: Duration, max: Duration) -> Self {
        Self {
            count: count.max(1),
            current: 0,
            failed: 0,
            backoff: Backoff {
                initial,
                max,
                attempt: 0,
            },
        }
    }

    /// The server to try now.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The current server failed (a dial, a park, a session that did not last): the next
    /// server, and the wait before trying it.
    pub(crate) fn next_after_failure(&mut self) -> (usize, Duration) {
        let wait = self.backoff.current();
        self.failed += 1;
        if self.failed >= self.count {
            // Every server failed once in a row: the next round waits longer.
            self.failed = 0;
            self.backoff.attempt = self.backoff.attempt.saturating_add(1);
        }
        self.current = (self.current + 1) % self.count;
        (self.current, wait)
    }

    /// An established session ended after `up_for`: the next server, and the wait before
    /// trying it (about `initial` when the session worked, at least [`STABLE`]).
    pub(crate) fn after_session(&mut self, up_for: Duration) -> (usize, Duration) {
        if up_for >= STABLE {
            self.succeeded();
        }
        // The end of the session is the first failure of a new round.
        self.next_after_failure()
    }

    /// The current server hands its sessions over (its node is leaving): the next server,
    /// tried at once.
    pub(crate) fn handed_over(&mut self) -> usize {
        self.succeeded();
        self.current = (self.current + 1) % self.count;
        self.current
    }

    /// The current server works (a visitor came through a parked connection): the next
    /// failure waits about `initial` again.
    pub(crate) fn succeeded(&mut self) {
        self.failed = 0;
        self.backoff.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Whether `d` is a jittered wait of `base`: within [base/2, base].
    fn about(d: Duration, base: Duration) -> bool {
        d >= base / 2 && d <= base
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempt: 0,
        };
        let first = b.current();
        assert!(about(first, 100 * MS), "{first:?}");
        for attempt in 0..40 {
            b.attempt = attempt;
            let d = b.current();
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        b.attempt = u32::MAX;
        let late = b.current();
        assert!(about(late, Duration::from_secs(2)), "{late:?}");
    }

    #[test]
    fn failures_go_round_robin_and_grow_only_per_round() {
        let mut r = ServerRotation::new(3, 100 * MS, Duration::from_secs(10));
        assert_eq!(r.current(), 0);
        let mut seen = Vec::new();
        for _ in 0..7 {
            let (next, wait) = r.next_after_failure();
            seen.push((next, wait));
        }
        let order: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [1, 2, 0, 1, 2, 0, 1]);
        // The first round waits about `initial` between servers, the second twice that...
        for (i, (_, wait)) in seen.iter().enumerate() {
            let base = 100 * MS * (1 << (i / 3));
            assert!(about(*wait, base), "failure {i}: {wait:?} for {base:?}");
        }
    }

    #[test]
    fn a_working_session_waits_about_initial_then_moves_on() {
        let mut r = ServerRotation::new(3, 100 * MS, Duration::from_secs(10));
        for _ in 0..9 {
            r.next_after_failure();
        }
        // Three whole rounds failed: the wait is 8 × initial; now server 0 works a while.
        assert_eq!(r.current(), 0);
        let (next, wait) = r.after_session(Duration::from_secs(60));
        assert_eq!(next, 1);
        assert!(about(wait, 100 * MS), "{wait:?}");
        // Server 1 and 2 fail: still the first round, no growth.
        let (next, wait) = r.next_after_failure();
        assert_eq!(next, 2);
        assert!(about(wait, 100 * MS), "{wait:?}");
        let (next, wait) = r.next_after_failure();
        assert_eq!(next, 0);
        assert!(about(wait, 100 * MS), "{wait:?}");
        // The round (0's end, 1, 2) failed: now it grows.
        let (next, wait) = r.next_after_failure();
        assert_eq!(next, 1);
        assert!(about(wait, 200 * MS), "{wait:?}");
    }

    #[test]
    fn a_short_session_counts_as_a_failure() {
        let mut r = ServerRotation::new(2, 100 * MS, Duration::from_secs(10));
        r.next_after_failure();
        r.next_after_failure();
        // One whole round failed; a session that drops at once does not reset it.
        let (next, wait) = r.after_session(Duration::from_secs(1));
        assert_eq!(next, 1);
        assert!(about(wait, 200 * MS), "{wait:?}");
    }

    #[test]
    fn one_server_behaves_as_plain_backoff() {
        let mut r = ServerRotation::new(1, 100 * MS, Duration::from_millis(400));
        let waits: Vec<Duration> = (0..4)
            .map(|_| r.next_after_failure())
            .map(|(i, w)| {
                assert_eq!(i, 0);
                w
            })
            .collect();
        for (w, base) in waits.iter().zip([100, 200, 400, 400]) {
            assert!(about(*w, base * MS), "{w:?} for {base} ms");
        }
        // A working session: about `initial`, then growing again from there.
        let (_, w) = r.after_session(STABLE);
        assert!(about(w, 100 * MS), "{w:?}");
        let (_, w) = r.next_after_failure();
        assert!(about(w, 200 * MS), "{w:?}");
        r.succeeded();
        let (_, w) = r.next_after_failure();
        assert!(about(w, 100 * MS), "{w:?}");
    }

    #[test]
    fn zero_servers_is_one() {
        let mut r = ServerRotation::new(0, 100 * MS, Duration::from_secs(1));
        assert_eq!(r.next_after_failure().0, 0);
    }

    #[test]
    fn a_handover_moves_on_at_once_and_resets_the_backoff() {
        let mut r = ServerRotation::new(3, 100 * MS, 10_000 * MS);
        for _ in 0..6 {
            r.next_after_failure();
        }
        assert_eq!(r.current(), 0);
        assert_eq!(r.handed_over(), 1);
        assert_eq!(r.current(), 1);
        // The backoff starts over: the next failure waits about `initial`.
        let (_, wait) = r.next_after_failure();
        assert!(about(wait, 100 * MS), "{wait:?}");
        let mut one = ServerRotation::new(1, 100 * MS, 10_000 * MS);
        assert_eq!(one.handed_over(), 0);
    }
}
