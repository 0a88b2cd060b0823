//! Configuration of the yamux transport (both sides share the tuning part).

use serde::Deserialize;
use std::net::SocketAddr;

pub const KIB: usize = 1024;
/// yamux's initial per-stream window; every stream needs at least this much.
pub const STREAM_WINDOW: usize = 256 * KIB;
/// By default a session's window has this much above every stream's own 256 KiB: yamux
/// grows the window of a stream whose sender uses it up within two round trips (towards the
/// bandwidth-delay product), out of this shared part only. Without it every stream stays at
/// 256 KiB, which held one visitor to 4.1-4.9 Gbit/s on loopback while neither process was
/// busy; with it 6-7 (docs/benchmarks.md).
pub const GROWTH_WINDOW: usize = 16 * 1024 * KIB;
/// The most visitor streams `max_streams` allows a session. yamux's own ceiling is twice it
/// plus one, and its receive-window bound (at least 256 KiB a stream of that ceiling) is a
/// `usize`: 8 GiB at 16384 on 64-bit targets; a 32-bit build keeps 4096 (2 GiB).
pub const MAX_STREAMS: usize = if usize::BITS >= 64 { 16384 } else { 4096 };

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where tunnelc connects (TCP + TLS).
    pub listen: SocketAddr,
    /// yamux tuning (`yamux: { max_streams: 256, ... }`).
    #[serde(default)]
    pub yamux: Tuning,
    /// Also accept threshold / koding-tunnel clients on this listener (opt-in).
    #[serde(default)]
    pub threshold: Option<crate::threshold::ThresholdConfig>,
}

/// yamux tuning. Defaults favour throughput with bounded memory per session.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Streams one session may have open at once (both directions together).
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Upper bound, in KiB, of what one session may buffer unread across all its streams
    /// (default: 256 KiB × the yamux ceiling, plus [`GROWTH_WINDOW`]). Raised to 256 KiB ×
    /// the ceiling when smaller (each stream needs its window).
    #[serde(default)]
    pub max_receive_window_kib: Option<usize>,
    /// Largest data frame sent, in KiB (at most 1024, the largest a yamux peer accepts).
    #[serde(default = "default_split")]
    pub split_send_size_kib: usize,
}

fn default_max_streams() -> usize {
    2048
}
fn default_split() -> usize {
    256
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_streams: default_max_streams(),
            max_receive_window_kib: None,
            split_send_size_kib: default_split(),
        }
    }
}

impl Tuning {
    /// Checks the values yamux would otherwise panic on. The error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_STREAMS).contains(&self.max_streams) {
            return Err((
                "max_streams",
                format!("{} is outside 1..={MAX_STREAMS}", self.max_streams),
            ));
        }
        if !(16..=1024).contains(&self.split_send_size_kib) {
            return Err((
                "split_send_size_kib",
                format!("{} is outside 16..=1024", self.split_send_size_kib),
            ));
        }
        Ok(())
    }

    /// The session's receive window for a yamux stream ceiling of `ceiling`.
    fn receive_window(&self, ceiling: usize) -> usize {
        self.max_receive_window_kib
            .map(|k| k.saturating_mul(KIB))
            .unwrap_or(ceiling * STREAM_WINDOW + GROWTH_WINDOW)
            .max(ceiling * STREAM_WINDOW)
    }

    /// The yamux config. Call [`Tuning::validate`] first.
    pub fn yamux(&self) -> yamux::Config {
        let mut c = yamux::Config::default();
        let streams = self.max_streams.clamp(1, MAX_STREAMS);
        // yamux ends the whole session when a stream would exceed its ceiling, so the
        // ceiling is twice our own cap (`limit.rs`), plus the control stream.
        let ceiling = streams * 2 + 1;
        let window = self.receive_window(ceiling);
        // Order matters: each setter asserts window >= streams x 256 KiB.
        c.set_max_connection_receive_window(Some(window.max(512 * STREAM_WINDOW)));
        c.set_max_num_streams(ceiling);
        c.set_max_connection_receive_window(Some(window));
        c.set_split_send_size(self.split_send_size_kib.clamp(16, 1024) * KIB);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_no_panics() {
        assert!(Tuning::default().validate().is_ok());
        let _ = Tuning::default().yamux();
        // The default leaves room above every stream's own window for yamux to grow busy
        // streams' windows (the example config spells the same number out).
        let ceiling = 2 * default_max_streams() + 1;
        assert_eq!(
            Tuning::default().receive_window(ceiling),
            ceiling * STREAM_WINDOW + GROWTH_WINDOW
        );
        let small = Tuning {
            max_receive_window_kib: Some(1024),
            ..Tuning::default()
        };
        assert_eq!(small.receive_window(ceiling), ceiling * STREAM_WINDOW);
        assert_eq!(
            (ceiling * STREAM_WINDOW + GROWTH_WINDOW) / KIB,
            1_065_216,
            "config.example.yaml's yamux.max_receive_window_kib"
        );
        let t = Tuning {
            max_streams: 2048,
            max_receive_window_kib: None,
            split_send_size_kib: 1024,
        };
        let _ = t.yamux();
        // A window below 256 KiB x max_streams is raised, not refused.
        let small = Tuning {
            max_receive_window_kib: Some(1024),
            ..Tuning::default()
        };
        assert!(small.validate().is_ok());
        let _ = small.yamux();
        let bad = Tuning {
            max_streams: 0,
            ..Tuning::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "max_streams");
        // The largest cap builds a yamux config (its window asserts hold) and one more is
        // refused, naming the range.
        let most = Tuning {
            max_streams: MAX_STREAMS,
            ..Tuning::default()
        };
        assert!(most.validate().is_ok());
        let _ = most.yamux();
        let over = Tuning {
            max_streams: MAX_STREAMS + 1,
            ..Tuning::default()
        };
        assert_eq!(
            over.validate().unwrap_err().1,
            format!("{} is outside 1..={MAX_STREAMS}", MAX_STREAMS + 1)
        );
    }
}
