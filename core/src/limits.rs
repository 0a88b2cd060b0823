//! Caps on open connections and pending handshakes, overall and per source address, so a
//! flood of slow or idle peers from one address can neither exhaust memory nor starve honest
//! clients of slots; and the data-path limits every component applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

mod live;
pub use live::{DataLimits, LiveLimits, Setting, DEFAULT_MAX_HEAD};

/// Slots (connections, or handshakes in progress) counted overall and per source address.
#[derive(Debug)]
pub struct AddressLimiter {
    max_total: Cap,
    max_per_ip: Cap,
    state: Mutex<State>,
}

/// A connection cap: fixed, or one field of the live limits.
pub type Cap = Setting<usize>;

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The transports' cap on handshakes in progress.
pub type HandshakeLimiter = AddressLimiter;

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Total => "too_many_pending",
            Refused::PerAddress => "too_many_pending_from_address",
        }
    }

    /// The metric reason when the slot is an open visitor connection.
    pub fn connection_reason(self) -> &'static str {
        match self {
            Refused::Total => "too_many_connections",
            Refused::PerAddress => "too_many_from_address",
        }
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<AddressLimiter>,
    ip: IpAddr,
    /// Whether this permit still counts against its address (see [`Permit::leave_address`]).
    per_address: bool,
}

impl Permit {
    /// Stops counting this connection against its source address, keeping it in the total:
    /// for connections that turn out not to be visitors (a hidden server parking on a
    /// rendezvous port parks many from one address, bounded per id elsewhere).
    pub fn leave_address(&mut self) {
        if std::mem::take(&mut self.per_address) {
            let mut s = crate::sync::lock(&self.limiter.state);
            if let Some(n) = s.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    s.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl AddressLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Self::with_caps(Setting::Fixed(max_total), Setting::Fixed(max_per_ip))
    }

    pub fn with_caps(max_total: Cap, max_per_ip: Cap) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            state: Mutex::new(State::default()),
        })
    }

    /// The transports' handshake limiter: `limits.max_pending_handshakes` overall and
    /// `limits.max_pending_per_address` per address, as they are at each handshake.
    pub fn handshakes(limits: &LiveLimits) -> Arc<Self> {
        Self::with_caps(
            Setting::Live(limits.clone(), |l| l.max_pending_handshakes),
            Setting::Live(limits.clone(), |l| l.max_pending_per_address),
        )
    }

    /// A listener's visitor connections: `max_total` overall and
    /// `limits.max_connections_per_address` per address, as it is at each accept.
    pub fn visitors(max_total: usize, limits: &LiveLimits) -> Arc<Self> {
        Self::with_caps(
            Setting::Fixed(max_total),
            Setting::Live(limits.clone(), |l| l.max_connections_per_address),
        )
    }

    /// Takes a slot for `ip` (counted by [`crate::throttle::address_key`]: IPv6 by /64).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let ip = crate::throttle::address_key(ip);
        let (max_total, max_per_ip) = (self.max_total.get(), self.max_per_ip.get());
        let mut s = crate::sync::lock(&self.state);
        if s.total >= max_total {
            return Err(Refused::Total);
        }
        let n = s.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(Refused::PerAddress);
        }
        *n += 1;
        s.total += 1;
        Ok(Permit {
            limiter: self.clone(),
            ip,
            per_address: true,
        })
    }

    /// A visitor connection's slot, or `None` with the refusal counted in
    /// `tunneld_stream_open_failures_total{frontend=component}`.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        metrics: &crate::metrics::Metrics,
        component: &str,
    ) -> Option<Permit> {
        self.try_acquire(ip)
            .map_err(|refused| {
                metrics
                    .stream_open_failures_total
                    .with_label_values(&[component, refused.connection_reason()])
                    .inc()
            })
            .ok()
    }

    pub fn pending(&self) -> usize {
        crate::sync::lock(&self.state).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.leave_address();
        let mut s = crate::sync::lock(&self.limiter.state);
        s.total = s.total.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address() {
        let l = AddressLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let p1 = l.try_acquire(a).expect("1");
        let _p2 = l.try_acquire(a).expect("2");
        assert_eq!(l.try_acquire(a).unwrap_err(), Refused::PerAddress);
        let _p3 = l.try_acquire(b).expect("3");
        assert_eq!(l.try_acquire(b).unwrap_err(), Refused::Total);
        drop(p1);
        let _p4 = l.try_acquire(b).expect("a slot is free again");
        assert_eq!(l.pending(), 3);
    }

    #[test]
    fn live_caps_follow_a_reload() {
        let live = LiveLimits::new(DataLimits {
            max_connections_per_address: 1,
            ..DataLimits::default()
        });
        let l = AddressLimiter::visitors(10, &live);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let _p1 = l.try_acquire(a).expect("1");
        assert_eq!(l.try_acquire(a).unwrap_err(), Refused::PerAddress);
        live.set(DataLimits {
            max_connections_per_address: 2,
            ..DataLimits::default()
        });
        let _p2 = l.try_acquire(a).expect("the raised cap admits a second");
    }
}
