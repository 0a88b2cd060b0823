//! Per-tunnel series, opt-in (`admin.per_tunnel_metrics`): streams and bytes by frontend and
//! public tunnel name (the https host name, the public port, the rendezvous id).
//!
//! Their number is capped: at most `cap` tunnels have series at once. When a new tunnel comes
//! and the set is full, the least recently used tunnel with no open stream gives its place up
//! (its series are removed; Prometheus' `rate()` takes its return as a counter reset). When
//! every tracked tunnel has open streams, the newcomer counts under `tunnel="_other"` of its
//! frontend. So a server with many short-lived names keeps a bounded scrape.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The label value of tunnels that found the set full.
pub const OVERFLOW: &str = "_other";

/// Names of the per-tunnel series (docs/metrics.md documents each).
pub const NAMES: &[&str] = &[
    "tunneld_tunnel_streams_total",
    "tunneld_tunnel_streams_active",
    "tunneld_tunnel_bytes_total",
    "tunneld_tunnel_series",
    "tunneld_tunnel_series_evicted_total",
];

type Key = (String, String);

/// One tunnel's series.
struct Entry {
    key: Key,
    active: IntGauge,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

/// One open visitor stream of a tunnel: counted as active until dropped. Hold it (or a
/// clone of its `Arc`) for as long as the stream lives.
pub struct TunnelStream {
    entry: Arc<Entry>,
}

impl TunnelStream {
    /// Adds `n` bytes from the visitor to the tunnel client.
    pub fn count_in(&self, n: u64) {
        self.entry.bytes_in.inc_by(n);
    }

    /// Adds `n` bytes from the tunnel client back to the visitor.
    pub fn count_out(&self, n: u64) {
        self.entry.bytes_out.inc_by(n);
    }

    /// The counter of one direction (`inbound`: visitor to tunnel client).
    pub fn counter(&self, inbound: bool) -> &IntCounter {
        if inbound {
            &self.entry.bytes_in
        } else {
            &self.entry.bytes_out
        }
    }

    /// The tunnel label this stream counts under (`_other` when the set was full).
    pub fn tunnel(&self) -> &str {
        &self.entry.key.1
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.entry.active.dec();
    }
}

/// The per-tunnel series and the tunnels that have them now.
pub struct TunnelSeries {
    streams: IntCounterVec,
    active: IntGaugeVec,
    bytes: IntCounterVec,
    tracked: IntGauge,
    evicted: IntCounter,
    cap: usize,
    live: Mutex<HashMap<Key, (Arc<Entry>, Instant)>>,
}

impl TunnelSeries {
    /// Makes the series and registers them on `r`; at most `cap` tunnels at once.
    pub fn register(r: &Registry, cap: usize) -> Result<Self, prometheus::Error> {
        let streams = IntCounterVec::new(
            Opts::new(NAMES[0], "Visitor streams opened, by tunnel (opt-in)"),
            &["frontend", "tunnel"],
        )?;
        let active = IntGaugeVec::new(
            Opts::new(NAMES[1], "Visitor streams open now, by tunnel (opt-in)"),
            &["frontend", "tunnel"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(NAMES[2], "Bytes relayed, by tunnel and direction (opt-in)"),
            &["frontend", "tunnel", "direction"],
        )?;
        let tracked = IntGauge::new(NAMES[3], "Tunnels with per-tunnel series now")?;
        let evicted = IntCounter::new(
            NAMES[4],
            "Tunnels whose per-tunnel series were removed to make room (the set was full)",
        )?;
        r.register(Box::new(streams.clone()))?;
        r.register(Box::new(active.clone()))?;
        r.register(Box::new(bytes.clone()))?;
        r.register(Box::new(tracked.clone()))?;
        r.register(Box::new(evicted.clone()))?;
        Ok(Self {
            streams,
            active,
            bytes,
            tracked,
            evicted,
            cap: cap.max(1),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// A new visitor stream of `tunnel` on `frontend`: counted as opened, and active until
    /// the returned guard drops.
    pub fn stream(&self, frontend: &str, tunnel: &str) -> TunnelStream {
        let entry = self.entry(frontend, tunnel);
        self.streams
            .with_label_values(&[frontend, &entry.key.1])
            .inc();
        entry.active.inc();
        TunnelStream { entry }
    }

    fn entry(&self, frontend: &str, tunnel: &str) -> Arc<Entry> {
        let mut live = crate::sync::lock(&self.live);
        let now = Instant::now();
        let key = (frontend.to_string(), tunnel.to_string());
        if let Some((e, used)) = live.get_mut(&key) {
            *used = now;
            return e.clone();
        }
        let key = if live.len() < self.cap || self.evict_one(&mut live) {
            key
        } else {
            let other = (frontend.to_string(), OVERFLOW.to_string());
            if let Some((e, used)) = live.get_mut(&other) {
                *used = now;
                return e.clone();
            }
            other
        };
        let e = Arc::new(self.make(key.clone()));
        live.insert(key, (e.clone(), now));
        self.tracked.set(live.len() as i64);
        e
    }

    fn make(&self, key: Key) -> Entry {
        let (f, t) = (key.0.as_str(), key.1.as_str());
        Entry {
            active: self.active.with_label_values(&[f, t]),
            bytes_in: self.bytes.with_label_values(&[f, t, "in"]),
            bytes_out: self.bytes.with_label_values(&[f, t, "out"]),
            key,
        }
    }

    /// Removes the least recently used tunnel with no open stream (none of its guards
    /// alive); false when every tracked tunnel has one.
    fn evict_one(&self, live: &mut HashMap<Key, (Arc<Entry>, Instant)>) -> bool {
        let idle = live
            .iter()
            .filter(|(k, (e, _))| k.1 != OVERFLOW && Arc::strong_count(e) == 1)
            .min_by_key(|(_, (_, used))| *used)
            .map(|(k, _)| k.clone());
        let Some(key) = idle else {
            return false;
        };
        live.remove(&key);
        let (f, t) = (key.0.as_str(), key.1.as_str());
        let _ = self.streams.remove_label_values(&[f, t]);
        let _ = self.active.remove_label_values(&[f, t]);
        let _ = self.bytes.remove_label_values(&[f, t, "in"]);
        let _ = self.bytes.remove_label_values(&[f, t, "out"]);
        self.evicted.inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn counts_streams_and_bytes_per_tunnel() {
        let r = Registry::new();
        let s = TunnelSeries::register(&r, 10).expect("register");
        let a = s.stream("web", "app.localhost");
        a.count_in(5);
        a.count_out(7);
        let text = render(&r);
        assert!(text
            .contains("tunneld_tunnel_streams_total{frontend=\"web\",tunnel=\"app.localhost\"} 1"));
        assert!(text.contains(
            "tunneld_tunnel_streams_active{frontend=\"web\",tunnel=\"app.localhost\"} 1"
        ));
        assert!(text.contains(
            "tunneld_tunnel_bytes_total{direction=\"in\",frontend=\"web\",tunnel=\"app.localhost\"} 5"
        ));
        drop(a);
        assert!(render(&r).contains(
            "tunneld_tunnel_streams_active{frontend=\"web\",tunnel=\"app.localhost\"} 0"
        ));
    }

    /// Past the cap, an idle tunnel's series make room; with every tracked tunnel busy, the
    /// newcomer counts under `_other`.
    #[test]
    fn the_cap_evicts_idle_tunnels_then_overflows() {
        let r = Registry::new();
        let s = TunnelSeries::register(&r, 2).expect("register");
        drop(s.stream("tcp", "40001"));
        let busy = s.stream("tcp", "40002");
        let third = s.stream("tcp", "40003");
        assert_eq!(third.tunnel(), "40003");
        let text = render(&r);
        assert!(!text.contains("tunnel=\"40001\""), "evicted: {text}");
        assert!(text.contains("tunneld_tunnel_series_evicted_total 1"));
        let fourth = s.stream("tcp", "40004");
        assert_eq!(fourth.tunnel(), OVERFLOW);
        fourth.count_in(3);
        let text = render(&r);
        assert!(text.contains(
            "tunneld_tunnel_bytes_total{direction=\"in\",frontend=\"tcp\",tunnel=\"_other\"} 3"
        ));
        assert!(text.contains("tunneld_tunnel_series 3"));
        drop((busy, third, fourth));
    }
}
