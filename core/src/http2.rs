//! HTTP/2 settings and error names shared by every HTTP/2 connection tunneld makes or
//! accepts: the links of the `h2-reverse` transport (both ends) and the visitors' own
//! connections on the `https-subdomain` frontend.

use hyper_util::rt::TokioTimer;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why [`H2Tuning::validate`] refused a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H2TuningError {
    #[error("max_frame_size must be between 16384 and 16777215")]
    FrameSize,
    #[error("windows must be at least 65535 bytes")]
    WindowTooSmall,
    #[error("windows (and window_growth_budget) must be below 2^31")]
    WindowTooLarge,
    #[error("max_concurrent_streams must be positive and max_header_list_size at least 4096")]
    StreamsOrHeaderList,
}

/// HTTP/2 settings of a connection (a reversed link, or a visitor's own). Every limit is
/// finite. Windows are per stream first: on a link the connection window is never smaller than
/// `stream_window` times `max_concurrent_streams` plus `window_growth_budget` (the stream
/// window is lowered to fit below 2^31), so streams whose visitors stopped reading can hold
/// at most their own windows and never freeze the rest of the connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct H2Tuning {
    /// Receive window per stream, bytes. On a link, lowered to (2^31 - 1 - growth budget) /
    /// (streams + 1) when larger (not below 65535), so the connection window can cover every
    /// stream.
    pub stream_window: u32,
    /// The most a stream's receive window grows to while its reader keeps up, bytes: it
    /// doubles each time the peer has used half of it while nothing waited unread (a
    /// download to a fast visitor); a stream whose reader is slow keeps `stream_window`.
    /// 0, or not above `stream_window`: windows never grow.
    pub stream_window_max: u32,
    /// Bytes by which all streams of one connection together may have grown at once; a
    /// stream's growth returns when it ends.
    pub window_growth_budget: u32,
    /// Receive window of the whole connection, bytes; on a link raised to at least
    /// `stream_window * (max_concurrent_streams + 1) + window_growth_budget` (capped at
    /// 2^31 - 1).
    pub connection_window: u32,
    /// Largest DATA frame payload accepted, bytes (16 KiB to 16 MiB).
    pub max_frame_size: u32,
    /// Streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list, bytes; also bounds CONTINUATION frames per block. On a
    /// tunnel link it is raised to carry any head below `limits.max_request_head`.
    pub max_header_list_size: u32,
    /// Bytes buffered per stream for sending.
    pub max_send_buf_size: usize,
    /// Streams reset by the peer before they were handled, before GOAWAY.
    pub max_pending_reset_streams: usize,
    /// Streams tunneld must reset because the peer broke the protocol, before GOAWAY.
    pub max_local_error_resets: usize,
}

impl Default for H2Tuning {
    fn default() -> Self {
        Self {
            // A link's stream takes this much before it waits for a window update, and
            // each new stream may be sent this much at once. Larger windows carried one
            // download faster (4.1 Gbit/s at 256 KiB, 5.1 at 1 MiB), but they are also what a
            // tenant's many cancelled or slow downloads put on the link all at once, ahead of
            // its neighbours: the neighbour's p99 in the test
            // integration-tests/tests/isolation/cancelled.rs went from 150-185 ms to 180-230
            // at 512 KiB and 260-310 at 1 MiB (docs/benchmarks.md).
            stream_window: 256 << 10,
            // Only streams whose readers keep up grow, at most 4 to 2 MiB at once per link:
            // one download to a fast visitor ran at 4.1 Gbit/s with 256 KiB and 6.2 with
            // 2 MiB, while cancelled or slow downloads stay at 256 KiB.
            stream_window_max: 2 << 20,
            window_growth_budget: 8 << 20,
            connection_window: 256 << 20,
            max_frame_size: 256 << 10,
            max_concurrent_streams: 1024,
            max_header_list_size: 128 << 10,
            max_send_buf_size: 1 << 20,
            max_pending_reset_streams: 20,
            max_local_error_resets: 256,
        }
    }
}

/// Streams tunnelc's HTTP/2 server takes above the `max_streams` its hello announces.
pub fn h2_headroom(max_streams: u32) -> u32 {
    (max_streams / 64).max(16)
}

impl H2Tuning {
    /// tunnelc's side of a link: it trusts its own tunneld, which forwards every visitor's
    /// cancellation, so bursts of resets must never end the connection (h2's rapid-reset
    /// guard is for strangers); heads up to `max_head` pass; `max_streams` visitor streams at
    /// once and [`h2_headroom`] more: tunneld's control requests (probes, mapping changes)
    /// must never queue behind visitors, and a stream tunneld has counted as ended may still
    /// be open a moment (its reset on the way). The connection window grows with them (see
    /// [`H2Tuning::for_link`]).
    pub fn tunnelc(limits: &crate::limits::DataLimits, max_streams: u32) -> Self {
        let n = max_streams.max(1);
        Self {
            max_concurrent_streams: n.saturating_add(h2_headroom(n)),
            max_pending_reset_streams: 1 << 16,
            max_local_error_resets: 1 << 16,
            ..Self::default()
        }
        .for_link(limits)
    }

    /// These settings for a tunnel link, which carries many visitors at once: the stream
    /// window lowered to (2^31 - 1 - window_growth_budget) / (max_concurrent_streams + 1) when
    /// larger (not below 65535) and the connection window raised to `stream_window *
    /// (max_concurrent_streams + 1) + window_growth_budget` (capped at 2^31 - 1; the budget
    /// lowered to what room is left), so the streams of visitors that stopped reading, grown
    /// or not, can never exhaust it, and the header list raised to carry any head within
    /// `limits`. (A visitor's
    /// own HTTP/2 connection keeps its configured window: it only hurts itself.)
    pub fn for_link(self, limits: &crate::limits::DataLimits) -> Self {
        const MAX_WINDOW: u64 = i32::MAX as u64;
        let slots = u64::from(self.max_concurrent_streams) + 1;
        let budget = u64::from(self.window_growth_budget).min(MAX_WINDOW);
        let stream = u64::from(self.stream_window).min(((MAX_WINDOW - budget) / slots).max(65_535));
        // With the stream window at HTTP/2's minimum, the budget takes what room is left.
        let budget = budget.min(MAX_WINDOW.saturating_sub(stream * slots));
        let w = u64::from(self.connection_window).max(stream * slots + budget);
        Self {
            stream_window: u32::try_from(stream).unwrap_or(self.stream_window),
            window_growth_budget: u32::try_from(budget).unwrap_or(0),
            connection_window: u32::try_from(w.min(MAX_WINDOW)).unwrap_or(i32::MAX as u32),
            max_header_list_size: self.max_header_list_size.max(limits.link_header_list()),
            // Every visitor that gives up cancels its stream while the other end may still be
            // sending on it; the frames that cross the cancellation are answered with resets
            // h2 counts as protocol errors. On a link they are routine, so they must never
            // add up to a GOAWAY (which would end every tunnel of the client).
            max_local_error_resets: self.max_local_error_resets.max(1 << 16),
            ..self
        }
    }

    /// Checks the values against what HTTP/2 allows.
    pub fn validate(&self) -> Result<(), H2TuningError> {
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err(H2TuningError::FrameSize);
        }
        if self.stream_window < 65_535 || self.connection_window < 65_535 {
            return Err(H2TuningError::WindowTooSmall);
        }
        if self.stream_window > i32::MAX as u32
            || self.connection_window > i32::MAX as u32
            || self.stream_window_max > i32::MAX as u32
            || self.window_growth_budget > i32::MAX as u32
        {
            return Err(H2TuningError::WindowTooLarge);
        }
        if self.max_concurrent_streams == 0 || self.max_header_list_size < 4096 {
            return Err(H2TuningError::StreamsOrHeaderList);
        }
        Ok(())
    }

    /// A client builder with these settings (tunneld's side of a reversed connection) whose
    /// connection runs its tasks on `exec`.
    pub fn client_on<E: Clone>(
        &self,
        exec: E,
        keepalive: Duration,
    ) -> hyper::client::conn::http2::Builder<E> {
        let mut b = hyper::client::conn::http2::Builder::new(exec);
        b.timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buf_size(self.max_send_buf_size)
            // Remember every stream cancelled recently, so late frames on it are dropped
            // quietly instead of being answered as errors.
            .max_concurrent_reset_streams(self.max_concurrent_streams as usize)
            .max_pending_accept_reset_streams(self.max_pending_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_resets)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive * 3)
            .keep_alive_while_idle(true);
        if let Some((max, budget)) = self.growth() {
            b.stream_window_growth(max, budget);
        }
        b
    }

    /// The growth of stream windows (most per stream, budget per connection), when on.
    fn growth(&self) -> Option<(u32, u32)> {
        (self.stream_window_max > self.stream_window && self.window_growth_budget > 0)
            .then_some((self.stream_window_max, self.window_growth_budget))
    }

    /// A server builder with these settings (tunnelc's side, and the public listener) whose
    /// connection runs its tasks (each stream's service) on `exec`.
    pub fn server_on<E>(
        &self,
        exec: E,
        keepalive: Duration,
    ) -> hyper::server::conn::http2::Builder<E> {
        let mut b = hyper::server::conn::http2::Builder::new(exec);
        b.timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buf_size(self.max_send_buf_size)
            .max_pending_accept_reset_streams(self.max_pending_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_resets)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive * 3);
        if let Some((max, budget)) = self.growth() {
            b.stream_window_growth(max, budget);
        }
        b
    }
}

/// The HTTP/2 error code inside a hyper error (a GOAWAY or RST_STREAM either side sent),
/// lower-cased for metric labels: `enhance_your_calm`, `protocol_error`, ...
pub fn h2_reason(e: &hyper::Error) -> Option<&'static str> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.reason().map(reason_name);
        }
        src = s.source();
    }
    None
}

/// The name of an HTTP/2 error code from a fixed set (RFC 9113 section 7); a peer's
/// unknown codes are all `unknown`, so no peer can mint metric series.
pub fn reason_name(r: h2::Reason) -> &'static str {
    const NAMES: [&str; 14] = [
        "no_error",
        "protocol_error",
        "internal_error",
        "flow_control_error",
        "settings_timeout",
        "stream_closed",
        "frame_size_error",
        "refused_stream",
        "cancel",
        "compression_error",
        "connect_error",
        "enhance_your_calm",
        "inadequate_security",
        "http_1_1_required",
    ];
    usize::try_from(u32::from(r))
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("unknown")
}

#[cfg(test)]
mod reason_tests {
    #[test]
    fn reason_names_come_from_a_fixed_set() {
        assert_eq!(
            super::reason_name(h2::Reason::ENHANCE_YOUR_CALM),
            "enhance_your_calm"
        );
        assert_eq!(super::reason_name(h2::Reason::NO_ERROR), "no_error");
        assert_eq!(super::reason_name(h2::Reason::from(0xdead_beef)), "unknown");
        assert_eq!(super::reason_name(h2::Reason::from(14)), "unknown");
    }
}

#[cfg(test)]
mod link_window_tests {
    use super::H2Tuning;
    use crate::limits::DataLimits;

    #[test]
    fn a_link_window_covers_every_stream() {
        let limits = DataLimits::default();
        // The default: 256 KiB a stream, and a connection window for all 1024 and one more.
        let t = H2Tuning::default().for_link(&limits);
        assert_eq!(t.stream_window, 256 << 10);
        let budget = 8 << 20;
        assert_eq!(t.window_growth_budget, budget);
        assert_eq!(t.connection_window, (256 << 10) * 1025 + budget);
        // tunnelc's default 4096 streams and headroom fit as they are.
        let t = H2Tuning::tunnelc(&limits, 4096);
        assert_eq!(t.stream_window, 256 << 10);
        assert_eq!(t.connection_window, (256 << 10) * (4096 + 64 + 1) + budget);
        // 16384 streams and headroom: the stream window shrinks to fit below 2^31.
        let t = H2Tuning::tunnelc(&limits, 16384);
        let slots = u64::from(t.max_concurrent_streams) + 1;
        assert_eq!(t.max_concurrent_streams, 16384 + 256);
        let grown = u64::from(budget);
        assert!(u64::from(t.stream_window) * slots + grown <= i32::MAX as u64);
        assert!((u64::from(t.stream_window) + 1) * slots + grown > i32::MAX as u64);
        assert_eq!(
            u64::from(t.connection_window),
            u64::from(t.stream_window) * slots + grown
        );
        // Too many streams for 64 KiB each: the window keeps HTTP/2's minimum.
        let t = H2Tuning {
            max_concurrent_streams: 1 << 16,
            ..H2Tuning::default()
        }
        .for_link(&limits);
        assert_eq!(t.stream_window, 65_535);
        assert_eq!(t.connection_window, i32::MAX as u32);
        // No room is left for growth, so there is none.
        assert_eq!(t.window_growth_budget, 0);
        assert!(t.validate().is_ok());
        // A window that fits stays as configured, and so does a larger connection window.
        let t = H2Tuning {
            stream_window: 65_535,
            ..H2Tuning::default()
        }
        .for_link(&limits);
        assert_eq!(t.stream_window, 65_535);
        assert_eq!(t.connection_window, 256 << 20);
        let t = H2Tuning {
            stream_window: 1 << 20,
            ..H2Tuning::default()
        }
        .for_link(&limits);
        assert_eq!(t.stream_window, 1 << 20);
        assert_eq!(t.connection_window, (1 << 20) * 1025 + budget);
    }

    #[test]
    fn growth_settings_past_2_31_are_refused() {
        for bad in [
            H2Tuning {
                stream_window_max: 1 << 31,
                ..H2Tuning::default()
            },
            H2Tuning {
                window_growth_budget: u32::MAX,
                ..H2Tuning::default()
            },
        ] {
            assert_eq!(bad.validate(), Err(super::H2TuningError::WindowTooLarge));
        }
        // Off (0) is fine, and so is a most below the initial window (never grows).
        let off = H2Tuning {
            stream_window_max: 0,
            window_growth_budget: 0,
            ..H2Tuning::default()
        };
        assert!(off.validate().is_ok());
    }
}
