//! tunneld's kept-alive tunnel streams: on a session whose tunnelc splices each stream to one
//! local connection (yamux streams, websocket conversations, h2-reverse `CONNECT` streams; it says
//! [`crate::proto::CAP_KEEPALIVE`]), a visitor HTTP request of an `http` tunnel goes on an
//! idle HTTP/1.1 stream left by an earlier request of the same tunnel, so neither a stream nor
//! a local connection is opened per request (nginx's upstream `keepalive`, across the tunnel).
//!
//! Bounded per session: [`PER_SESSION`] idle streams in all (and at most half the session's
//! stream cap), each for [`crate::keepalive_pool::IDLE_FOR`]; a tunnel alone may fill that,
//! but once it is full a tunnel within its share (the session's idle streams divided among
//! the tunnels keeping some, at most [`PER_TUNNEL`] and half of them) takes the place of the
//! oldest idle stream of the tunnel furthest over its share. Idle
//! streams hold no visitor's stream permit: each request takes one of its own (the per-tunnel
//! and per-address caps count requests in flight, as before); a visitor refused because the
//! session's streams are all in use takes the place of the stream idle longest instead.
//! Never kept: tunnels whose tunnelc said `+no-keepalive:<name>` (`reuse_connections:
//! false`), streams with a PROXY header (it names one visitor), upgrades.

use crate::http_forward::Body;
use crate::io::BoxIo;
use crate::keepalive_pool::{Caps, LocalPool};
use crate::proto::Hello;
use crate::session::{OpenError, StreamHeader};
use prometheus::IntCounter;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

/// Each tunnel's share of a session's idle kept streams: what a tunnel keeps however busy
/// its neighbours are (it may keep more while the session's pool has room). As a hard cap
/// per tunnel it was too small for HTTP/2 visitors with 640 requests in flight (64
/// connections x 10 streams in the benchmark): at 64, half of such requests found no idle
/// stream and opened a stream and a local connection each, which the pool then closed again
/// (HTTP/2 over websocket 20k -> 37k req/s); at 512, one in 25.
pub const PER_TUNNEL: usize = 512;
/// Idle kept streams per session, all tunnels together.
pub const PER_SESSION: usize = 1024;

/// A session's idle HTTP/1.1 streams, by tunnel.
pub struct KeptStreams {
    pool: Arc<LocalPool>,
    /// Tunnels whose streams carry one request each.
    off: BTreeSet<String>,
    reused: IntCounter,
    opened: IntCounter,
    evicted: IntCounter,
}

impl KeptStreams {
    /// For a session whose tunnelc keeps streams alive; `counters` is the
    /// `tunneld_kept_streams_total` series for (`reused`, `opened`, `evicted`, `displaced`).
    /// `stream_cap`: the session's own cap on open streams, of which idle kept streams take
    /// at most half. They never keep a neighbour tunnel's visitor out (a visitor refused for
    /// want of a stream takes the place of the one idle longest); a smaller share left a
    /// tunnel of tunnelc's default cap (2048) 256 idle streams, and HTTP/2 visitors with
    /// 640 requests in flight opened a stream and a local connection for one request in six.
    pub fn for_hello(
        hello: &Hello,
        stream_cap: Option<usize>,
        counters: (IntCounter, IntCounter, IntCounter, IntCounter),
    ) -> Option<Self> {
        let off = hello.keepalive_off()?;
        let total = stream_cap.map_or(PER_SESSION, |c| (c / 2).min(PER_SESSION));
        if total == 0 {
            return None;
        }
        Some(Self {
            pool: LocalPool::with_caps(
                Caps {
                    // A share of half at most: a busy tunnel's excess gives way to its
                    // neighbours' streams as they come back.
                    per_key: PER_TUNNEL.min(total / 2).max(1),
                    keys: total,
                    total,
                },
                Some(counters.3),
            ),
            off,
            reused: counters.0,
            opened: counters.1,
            evicted: counters.2,
        })
    }

    /// The pool key of a request's stream, when it may be kept: the tunnel (and the admin
    /// mapping's local target).
    pub fn key(&self, h: &StreamHeader) -> Option<String> {
        if h.proxy_protocol.is_some() {
            return None;
        }
        match &h.target {
            None if self.off.contains(&h.tunnel) => None,
            None => Some(h.tunnel.clone()),
            // A service name (no port) is that tunnel's local service: its opt-out holds.
            Some(t) if !t.contains(':') && self.off.contains(t) => None,
            Some(t) => Some(format!("{}\n{t}", h.tunnel)),
        }
    }

    /// Sends `req` on an idle stream of `key`, or on the stream `open()` gives, which is kept
    /// once its response was read to the end.
    pub async fn request<O, F>(
        &self,
        key: &str,
        req: http::Request<Body>,
        max_head: usize,
        open: O,
    ) -> Result<http::Response<Body>, OpenError>
    where
        O: FnOnce() -> F,
        F: Future<Output = Result<BoxIo, OpenError>>,
    {
        match self.pool.send_pooled(key, req, max_head).await {
            Ok(answered) => {
                self.reused.inc();
                answered
            }
            // Boxed: opening a stream is the rarer path, and its futures would otherwise
            // make every request's future (moved and boxed per request) larger.
            Err(req) => {
                Box::pin(async {
                    let io = open().await?;
                    self.opened.inc();
                    self.pool.send_new(Some(key), io, req, max_head).await
                })
                .await
            }
        }
    }

    /// Idle streams kept now.
    pub fn idle(&self) -> usize {
        self.pool.idle()
    }

    /// Closes an idle stream (the oldest of the tunnel furthest over its share, else the one
    /// idle longest of any tunnel) so a visitor refused for want of a stream gets its
    /// place; resolves once the stream is closed. `None`: none is idle.
    pub fn evict_oldest(&self) -> Option<impl Future<Output = ()>> {
        let closed = self.pool.evict_oldest()?;
        self.evicted.inc();
        Some(closed)
    }
}
