//! The server's `limits:` section as every component reads it: [`DataLimits`] is one
//! snapshot, [`LiveLimits`] the shared cell a reload replaces. Components read the cell when
//! a connection, handshake or stream starts, so a reload reaches everything that starts
//! after it while what is open keeps the limits it started with.

use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The server's `limits:` section as the components apply it (everything but the
/// failed-authentication budget, which [`crate::throttle::FailureThrottle`] keeps).
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
    pub stream_stall_timeout: Duration,
    /// Visitor connections open at once from one source address on one listener.
    pub max_connections_per_address: usize,
    /// A spliced visitor connection (TCP port, TLS passthrough, rendezvous, websocket
    /// conversation) with no byte either way for this long is closed; zero: never.
    pub idle_timeout: Duration,
    /// An HTTP visitor connection with no request in progress for this long is closed.
    pub http_idle_timeout: Duration,
    /// One deadline for a peer's TLS handshake, hello and authentication.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once on the transports, overall and per source address.
    pub max_pending_handshakes: usize,
    pub max_pending_per_address: usize,
    /// Interval of client keepalive pings (told to each client in its welcome).
    pub keepalive: Duration,
    /// How long a drain (SIGTERM) waits for open visitor streams.
    pub drain_timeout: Duration,
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
            stream_stall_timeout: Duration::from_secs(60),
            max_connections_per_address: 1024,
            idle_timeout: Duration::from_secs(600),
            http_idle_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            max_pending_per_address: 16,
            keepalive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
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

    /// Whole seconds between keepalive pings, at least one.
    pub fn keepalive_secs(&self) -> u64 {
        self.keepalive.as_secs().max(1)
    }
}

/// The running server's limits, shared by every component and replaced whole by a reload.
#[derive(Debug, Clone, Default)]
pub struct LiveLimits(Arc<RwLock<DataLimits>>);

impl LiveLimits {
    pub fn new(limits: DataLimits) -> Self {
        Self(Arc::new(RwLock::new(limits)))
    }

    /// The limits as they are now.
    pub fn get(&self) -> DataLimits {
        *crate::sync::read(&self.0)
    }

    /// Replaces the limits; what starts from now on gets them.
    pub fn set(&self, limits: DataLimits) {
        *crate::sync::write(&self.0) = limits;
    }
}

/// A setting a component reads each time it needs it: a value fixed when the component was
/// made, or one field of the live limits (so a reload moves it).
#[derive(Debug, Clone)]
pub enum Setting<T> {
    Fixed(T),
    Live(LiveLimits, fn(&DataLimits) -> T),
}

impl<T: Copy> Setting<T> {
    pub fn get(&self) -> T {
        match self {
            Setting::Fixed(v) => *v,
            Setting::Live(l, field) => field(&l.get()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_cell() {
        let a = LiveLimits::new(DataLimits::default());
        let b = a.clone();
        b.set(DataLimits {
            max_streams_per_tunnel: 3,
            ..DataLimits::default()
        });
        assert_eq!(a.get().max_streams_per_tunnel, 3);
    }
}
