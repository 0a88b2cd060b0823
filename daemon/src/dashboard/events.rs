//! `GET /ui/events`: server-sent events with the totals once a second (`event: totals`,
//! JSON data). At most [`MAX_STREAMS`] at once; a stream ends when its session ends or
//! expires, and at drain.

use super::auth::Who;
use super::{reply, stats::Totals, Dashboard};
use crate::http_serve::Resp;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// Most event streams open at once.
pub const MAX_STREAMS: usize = 16;

/// One open stream: its slot, and the gauge it is counted in while it lives.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

struct Stream {
    dash: Arc<Dashboard>,
    rx: watch::Receiver<Totals>,
    /// The session whose cookie opened the stream (none for a bearer token).
    key: Option<[u8; 32]>,
    first: bool,
    _slot: Slot,
}

/// One event in the text/event-stream format.
fn event(t: &Totals, first: bool) -> Bytes {
    let data = serde_json::to_string(t).unwrap_or_else(|_| "{}".into());
    let retry = if first { "retry: 3000\n" } else { "" };
    Bytes::from(format!("{retry}event: totals\ndata: {data}\n\n"))
}

impl Stream {
    /// The next event, or `None` when the stream must end.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.first {
            tokio::select! {
                _ = self.dash.draining.cancelled() => return None,
                changed = self.rx.changed() => changed.ok()?,
            }
        }
        if self.dash.draining.is_cancelled() {
            return None;
        }
        if let Some(k) = &self.key {
            if !self.dash.sessions.alive(k) {
                return None;
            }
        }
        let first = std::mem::take(&mut self.first);
        let t = self.rx.borrow_and_update().clone();
        Some(event(&t, first))
    }
}

impl Dashboard {
    pub(super) fn events(self: &Arc<Self>, who: &Who) -> Resp {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "too many open event streams (at most {MAX_STREAMS}); close a dashboard tab"
                ),
            );
        };
        let gauge = crate::metrics::of(&self.metrics).map(|own| {
            own.dashboard_event_streams
                .with_label_values(&[] as &[&str])
        });
        if let Some(g) = &gauge {
            g.inc();
        }
        let state = Stream {
            dash: self.clone(),
            rx: self.totals.clone(),
            key: match who {
                Who::Session(f) => Some(f.key),
                Who::Bearer => None,
            },
            first: true,
            _slot: Slot {
                _permit: permit,
                gauge,
            },
        };
        let frames = futures::stream::unfold(state, |mut s| async move {
            let bytes = s.next().await?;
            Some((Ok::<_, Infallible>(Frame::data(bytes)), s))
        });
        let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_format() {
        let t = super::Totals {
            sessions: 2,
            generation: 7,
            ..Default::default()
        };
        let first = String::from_utf8(super::event(&t, true).to_vec()).expect("utf8");
        assert!(
            first.starts_with("retry: 3000\nevent: totals\ndata: {"),
            "{first}"
        );
        assert!(first.contains("\"sessions\":2") && first.contains("\"generation\":7"));
        assert!(first.ends_with("}\n\n"));
        let next = String::from_utf8(super::event(&t, false).to_vec()).expect("utf8");
        assert!(next.starts_with("event: totals\n"));
    }
}
