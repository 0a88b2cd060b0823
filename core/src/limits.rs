//! Caps on open connections and pending handshakes, overall and per source address, so a
//! flood of slow or idle peers from one address can neither exhaust memory nor starve honest
//! clients of slots; and the data-path limits every component applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Slots (connections, or handshakes in progress) counted overall and per source address.
#[derive(Debug)]
pub struct AddressLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<State>,
}

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
        Arc::new(Self {
            max_total,
            max_per_ip,
            state: Mutex::new(State::default()),
        })
    }

    /// Takes a slot for `ip` (counted by [`crate::throttle::address_key`]: IPv6 by /64).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let ip = crate::throttle::address_key(ip);
        let mut s = crate::sync::lock(&self.state);
        if s.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = s.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
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
}

/// Limits on the data path that every frontend and transport applies the same way, from the
/// server's `limits:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Largest visitor request head (request line and headers), bytes: every frontend answers
    /// `431` above it, and the links are sized to carry anything below it.
    pub max_request_head: usize,
    /// Largest response head a local service may answer with, bytes: above it the visitor
    /// gets `502` and nothing else is touched.
    pub max_response_head: usize,
    /// Visitor streams open at once through one tunnel of one session.
    pub max_streams_per_tunnel: usize,
    /// Visitor streams open at once from one source address through one session.
    pub max_streams_per_address: usize,
    /// A stream whose writes make no progress for this long (a visitor that stopped reading,
    /// or a service that did) is reset.
    pub stream_stall_timeout: std::time::Duration,
    /// Visitor connections open at once from one source address on one listener.
    pub max_connections_per_address: usize,
    /// A spliced visitor connection (TCP port, TLS passthrough, rendezvous, websocket
    /// conversation) with no byte either way for this long is closed; zero: never.
    pub idle_timeout: std::time::Duration,
    /// An HTTP visitor connection with no request in progress for this long is closed.
    pub http_idle_timeout: std::time::Duration,
}

/// The default head limit, 64 KiB (what trusted proxies accept: about 60 KiB).
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

impl Default for DataLimits {
    fn default() -> Self {
        Self {
            max_request_head: DEFAULT_MAX_HEAD,
            max_response_head: DEFAULT_MAX_HEAD,
            max_streams_per_tunnel: 1024,
            max_streams_per_address: 1024,
            stream_stall_timeout: std::time::Duration::from_secs(60),
            max_connections_per_address: 1024,
            idle_timeout: std::time::Duration::from_secs(600),
            http_idle_timeout: std::time::Duration::from_secs(75),
        }
    }
}

impl DataLimits {
    /// The header list size a link must accept to carry any head below the limits: the head
    /// itself plus HTTP/2's 32 bytes of accounting per field (at most 100 fields) and the
    /// stream header tunneld adds.
    pub fn link_header_list(&self) -> u32 {
        let head = self.max_request_head.max(self.max_response_head);
        u32::try_from(head + 32 * 128 + 8 * 1024).unwrap_or(u32::MAX)
    }
}
