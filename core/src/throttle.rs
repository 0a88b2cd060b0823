//! What keeps guessing cheap to refuse and quiet in the logs.
//!
//! - [`FailureThrottle`]: failed authentications per source address (an IPv6 address counts
//!   by its /64), as a token bucket: `max` failures at once, `max` more per `window`. An
//!   address over it is refused before any credential is looked at, on every transport, the
//!   admin and control APIs and TPoT-1 alike (one budget per address for all of them).
//! - [`LogBudget`]: at most `per_window` log lines of one kind per window; the rest are
//!   counted and reported in one summary line per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; past it, addresses whose budget is whole again are forgotten
/// first, and a failure that still finds no room is not tracked (never an allocation per
/// attacker address without bound).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional: it refills continuously).
    left: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct FailureThrottle {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    max: f64,
    /// Failures given back per second.
    rate: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Table {
    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.left + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.max)
    }
}

/// `(max, rate)` of a budget of `max` failures refilled at `max` per `window`.
fn budget(max: u32, window: Duration) -> (f64, f64) {
    let max = f64::from(max.max(1));
    (max, max / window.as_secs_f64().max(0.001))
}

/// The key of an address for every per-address budget: IPv4 as is (also when mapped into
/// IPv6, or behind NAT64's `64:ff9b::/96`), other IPv6 by its /64 (one host's whole
/// allocation).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn key(ip: IpAddr) -> IpAddr {
    address_key(ip)
}

impl FailureThrottle {
    /// `max` failures at once from one address, refilled at `max` per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        let (max, rate) = budget(max, window);
        Self {
            table: Mutex::new(Table {
                max,
                rate,
                buckets: HashMap::new(),
            }),
        }
    }

    /// Changes the budget (a reload): addresses keep what they have left, capped at the new
    /// `max`, and refill at the new rate from now on.
    pub fn set_budget(&self, max: u32, window: Duration) {
        let (max, rate) = budget(max, window);
        let now = Instant::now();
        let mut t = self.lock();
        let refilled: Vec<(IpAddr, f64)> = t
            .buckets
            .iter()
            .map(|(k, b)| (*k, t.refilled(*b, now)))
            .collect();
        for (k, left) in refilled {
            t.buckets.insert(
                k,
                Bucket {
                    left: left.min(max),
                    at: now,
                },
            );
        }
        t.max = max;
        t.rate = rate;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }

    /// `Err(wait)` while `ip` has no failure left: how long until it has one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let t = self.lock();
        let Some(b) = t.buckets.get(&key(ip)) else {
            return Ok(());
        };
        let left = t.refilled(*b, now);
        if left >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - left) / t.rate).max(Duration::from_secs(1)))
        }
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let k = key(ip);
        let mut t = self.lock();
        let (max, rate) = (t.max, t.rate);
        if !t.buckets.contains_key(&k) && t.buckets.len() >= MAX_TRACKED {
            // Full: forget addresses whose budget is whole again, and if that is not enough
            // the older half (one scan per half-table of new addresses), so every new
            // address is tracked and the scans stay rare.
            let buckets = &mut t.buckets;
            buckets.retain(|_, b| (b.left + now.duration_since(b.at).as_secs_f64() * rate) < max);
            if buckets.len() >= MAX_TRACKED {
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                let mid = ages.len() / 2;
                let (_, cutoff, _) = ages.select_nth_unstable(mid);
                let cutoff = *cutoff;
                buckets.retain(|_, b| b.at > cutoff);
            }
        }
        let left = t.buckets.get(&k).map_or(max, |b| t.refilled(*b, now));
        t.buckets.insert(
            k,
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
    }

    /// Addresses tracked now (for tests and the metrics).
    pub fn tracked(&self) -> usize {
        self.lock().buckets.len()
    }
}

/// A budget of log lines of one kind.
#[derive(Debug)]
pub struct LogBudget {
    what: &'static str,
    per_window: u64,
    window: Duration,
    state: Mutex<(Instant, u64)>,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub fn new(what: &'static str, per_window: u64, window: Duration) -> Self {
        Self {
            what,
            per_window,
            window,
            state: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written now; a line that may not is counted.
    pub fn allow(&self) -> bool {
        let mut s = crate::sync::lock(&self.state);
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            *s = (now, 0);
        }
        if s.1 < self.per_window {
            s.1 += 1;
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Writes the summary of the lines suppressed since the last call, if any; call it once
    /// per window.
    pub fn summarize(&self) {
        let n = self.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(
                suppressed = n,
                "{n} more {} in the last {:?} were not logged one by one",
                self.what,
                self.window
            );
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_then_refill() {
        let t = FailureThrottle::new(3, Duration::from_millis(300));
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        for _ in 0..3 {
            assert!(t.check(a).is_ok());
            t.failed(a);
        }
        assert!(t.check(a).is_err(), "three failures use the budget");
        assert!(t.check(b).is_ok(), "another address is untouched");
        std::thread::sleep(Duration::from_millis(150));
        assert!(t.check(a).is_ok(), "a failure's worth came back");
    }

    #[test]
    fn a_new_budget_applies_to_addresses_already_tracked() {
        let t = FailureThrottle::new(1, Duration::from_secs(3600));
        let a: IpAddr = "127.0.0.3".parse().expect("ip");
        t.failed(a);
        assert!(t.check(a).is_err(), "one failure spends a budget of one");
        t.set_budget(3, Duration::from_secs(3600));
        assert!(t.check(a).is_err(), "what was spent stays spent");
        t.failed(a);
        t.set_budget(1, Duration::from_millis(1));
        // A millisecond window refills within a millisecond; poll, bounded.
        let until = Instant::now() + Duration::from_secs(5);
        let refilled = loop {
            if t.check(a).is_ok() || Instant::now() > until {
                break t.check(a).is_ok();
            }
            std::thread::yield_now();
        };
        assert!(refilled, "the new window's rate applies");
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let t = FailureThrottle::new(1, Duration::from_secs(60));
        t.failed("2001:db8:1:2::1".parse().expect("ip"));
        assert!(t.check("2001:db8:1:2::ffff".parse().expect("ip")).is_err());
        assert!(t.check("2001:db8:1:3::1".parse().expect("ip")).is_ok());
    }

    #[test]
    fn the_table_is_bounded_and_new_addresses_are_still_tracked() {
        let t = FailureThrottle::new(1, Duration::from_secs(3600));
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(t.tracked() <= MAX_TRACKED);
        let late = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        t.failed(late);
        assert!(
            t.check(late).is_err(),
            "an address seen when the table was full"
        );
    }

    #[test]
    fn nat64_and_mapped_addresses_count_as_their_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(address_key("64:ff9b::c000:207".parse().expect("ip")), v4);
        assert_eq!(address_key("::ffff:192.0.2.7".parse().expect("ip")), v4);
        assert_ne!(
            address_key("64:ff9b::c000:208".parse().expect("ip")),
            address_key("64:ff9b::c000:207".parse().expect("ip"))
        );
    }

    #[test]
    fn log_lines_past_the_budget_are_counted() {
        let l = LogBudget::new("refusals", 2, Duration::from_secs(60));
        assert!(l.allow() && l.allow());
        assert!(!l.allow() && !l.allow());
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
        l.summarize();
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 0);
    }
}
