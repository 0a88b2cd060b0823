//! The metrics registry, passed explicitly (no globals): the series every component shares
//! (sessions, handshakes, streams, bytes, claims) are declared here; each plug-in declares
//! its own with [`metric_series!`](crate::metric_series) and registers them through
//! [`Metrics::plugin`]. `docs/metrics.md` documents each one.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntGauge, Opts, TextEncoder};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Declares a set of labelled series: each row is
/// `counter|gauge field: "name", [labels], help;`. The struct gets one field per row and
/// implements [`SeriesSet`] (its names, and registering them in order).
#[macro_export]
macro_rules! metric_series {
    ($(#[$meta:meta])* $vis:vis struct $set:ident {
        $($kind:ident $field:ident: $name:literal, [$($label:literal),* $(,)?], $help:literal;)*
    }) => {
        $(#[$meta])*
        $vis struct $set {
            $(pub $field: $crate::metric_series!(@type $kind),)*
        }

        impl $crate::metrics::SeriesSet for $set {
            const NAMES: &'static [&'static str] = &[$($name),*];

            fn register(r: &$crate::metrics::Registry) -> Result<Self, $crate::metrics::MetricsError> {
                Ok(Self {
                    $($field: $crate::metrics::$kind(r, $name, $help, &[$($label),*])?,)*
                })
            }
        }
    };
    (@type counter) => { $crate::metrics::IntCounterVec };
    (@type gauge) => { $crate::metrics::IntGaugeVec };
}

pub use prometheus::{Error as MetricsError, IntCounterVec, IntGaugeVec, Registry};

/// A set of series declared with [`metric_series!`](crate::metric_series).
pub trait SeriesSet: Send + Sync + Sized + 'static {
    /// Every series' name, in declaration order.
    const NAMES: &'static [&'static str];
    /// Makes the series and registers them on `r`.
    fn register(r: &Registry) -> Result<Self, MetricsError>;
}

crate::metric_series! {
    /// The labelled counters and gauges every component shares (see [`Metrics`]).
    pub struct Series {
    gauge sessions_active: "tunneld_sessions_active", ["transport"],
        "Connected tunnel client sessions";
    counter sessions_total: "tunneld_sessions_total", ["transport"],
        "Tunnel client sessions accepted since start";
    counter handshakes_total: "tunneld_handshakes_total", ["transport", "outcome"],
        "Finished handshakes by outcome (ok, or the reason for refusal)";
    counter protocol_errors_total: "tunneld_protocol_errors_total", ["transport", "reason"],
        "Malformed or oversized input from tunnel clients, by reason";
    counter streams_opened_total: "tunneld_streams_opened_total", ["frontend"],
        "Visitor streams opened to tunnel clients";
    gauge streams_active: "tunneld_streams_active", ["frontend"],
        "Visitor streams currently open";
    counter stream_open_failures_total: "tunneld_stream_open_failures_total", ["frontend", "reason"],
        "Visitor connections that could not be given a stream, by reason";
    counter bytes_total: "tunneld_bytes_total", ["frontend", "direction"],
        "Bytes relayed, by direction (in = visitor to tunnel client, out = back)";
    counter claims_refused_total: "tunneld_claims_refused_total", ["frontend", "reason"],
        "Tunnel requests refused by a frontend, by reason";
    counter rendezvous_park_requests_total: "tunneld_rendezvous_park_requests_total", ["outcome"],
        "Hidden-server CONNECT uuid: requests, by outcome (ok, or the refusal)";
    counter streams_refused_total: "tunneld_streams_refused_total", ["transport", "reason"],
        "Visitor streams refused by a stream cap (per tunnel or per visitor address)";
    counter kept_streams_total: "tunneld_kept_streams_total", ["transport", "result"],
        "Visitor HTTP requests sent on kept-alive tunnel streams: reused (an idle stream of an earlier request) or opened (a new stream, kept after its response); evicted: idle kept streams closed to make room for a visitor refused for want of a stream; displaced: idle kept streams of the tunnel furthest over its share closed, once the session's idle streams are at their cap, to keep one of a tunnel within its share";
    counter streams_stalled_total: "tunneld_streams_stalled_total", ["frontend"],
        "Visitor streams reset because their writes made no progress for limits.stream_stall_timeout";
    counter session_conflicts_total: "tunneld_session_conflicts_total", ["outcome"],
        "Claims asked for by a second session of a client while another session held them, by outcome (refused: the holder answered its probe; replaced: it did not, or it was the same tunnelc)";
    counter visitors_idle_closed_total: "tunneld_visitors_idle_closed_total", ["frontend"],
        "Visitor connections closed for idling: no request (HTTP, limits.http_idle_timeout; before the first request the frontend's header_timeout) or no byte either way (spliced, limits.idle_timeout)";
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub handshakes_pending: IntGauge,
    pub stream_open_seconds: HistogramVec,
    /// Every shared labelled counter and gauge; `metrics.sessions_total` reads through to it.
    pub series: Series,
    /// The plug-ins' series sets, by type, each registered once.
    plugins: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Per-tunnel series, once enabled ([`Metrics::enable_tunnel_series`]).
    tunnels: std::sync::OnceLock<crate::tunnel_metrics::TunnelSeries>,
}

impl std::ops::Deref for Metrics {
    type Target = Series;
    fn deref(&self) -> &Series {
        &self.series
    }
}

/// The names of `names` that `doc` (docs/metrics.md's text) does not mention as `` `name` ``:
/// each plug-in's test checks its own set with it.
pub fn undocumented<'a>(names: &[&'a str], doc: &str) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect()
}

/// For each crate's test of its set: `doc` (docs/metrics.md's text) names every series of
/// `S`, and `S` registers on a fresh registry. Panics, naming what is wrong, otherwise.
pub fn check_set<S: SeriesSet>(doc: &str) {
    let missing = undocumented(S::NAMES, doc);
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    let m = Metrics::new().expect("a registry");
    if let Err(e) = m.plugin::<S>() {
        panic!("the series do not register: {e}");
    }
}

/// Makes and registers one labelled counter (used by [`metric_series!`](crate::metric_series)).
pub fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let m = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

/// Makes and registers one labelled gauge (used by [`metric_series!`](crate::metric_series)).
pub fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let handshakes_pending = IntGauge::new(
            "tunneld_handshakes_pending",
            "Handshakes (TLS + hello + auth) in progress",
        )?;
        r.register(Box::new(handshakes_pending.clone()))?;
        let stream_open_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tunneld_stream_open_seconds",
                "Time from a visitor's connection to the tunnel client's answer on the new stream",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["frontend"],
        )?;
        r.register(Box::new(stream_open_seconds.clone()))?;
        r.register(Box::new(crate::fd_limit::FdCollector::new()?))?;
        Ok(Self {
            series: Series::register(&r)?,
            handshakes_pending,
            stream_open_seconds,
            registry: r,
            plugins: Mutex::new(HashMap::new()),
            tunnels: std::sync::OnceLock::new(),
        })
    }

    /// Turns the per-tunnel series on, for at most `cap` tunnels at once (once; later calls
    /// change nothing).
    pub fn enable_tunnel_series(&self, cap: usize) -> Result<(), MetricsError> {
        if self.tunnels.get().is_none() {
            let set = crate::tunnel_metrics::TunnelSeries::register(&self.registry, cap)?;
            let _ = self.tunnels.set(set);
        }
        Ok(())
    }

    /// A visitor stream of `tunnel` on `frontend` for the per-tunnel series, when they are
    /// on: hold it while the stream lives.
    pub fn tunnel_stream(
        &self,
        frontend: &str,
        tunnel: &str,
    ) -> Option<Arc<crate::tunnel_metrics::TunnelStream>> {
        self.tunnels
            .get()
            .map(|t| Arc::new(t.stream(frontend, tunnel)))
    }

    /// A plug-in's series set, registered on this registry the first time any component
    /// asks for it; components of one kind share it and tell themselves apart by label.
    pub fn plugin<S: SeriesSet>(&self) -> Result<Arc<S>, MetricsError> {
        let mut sets = crate::sync::lock(&self.plugins);
        if let Some(set) = sets
            .get(&TypeId::of::<S>())
            .and_then(|a| a.clone().downcast::<S>().ok())
        {
            return Ok(set);
        }
        let set = Arc::new(S::register(&self.registry)?);
        sets.insert(TypeId::of::<S>(), set.clone());
        Ok(set)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A gauge raised by one while this lives (a visitor's place in `streams_active`, say),
/// lowered when it is dropped, wherever the task that holds it ends.
pub struct Up(IntGauge);

impl Up {
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::metric_series! {
        struct Extra {
            counter extra_total: "tunneld_test_extra_total", ["x"], "A plug-in's series";
        }
    }

    /// A plug-in's set registers once and is shared; its series render with the others.
    #[test]
    fn plugin_series_register_once() {
        let m = Metrics::new().expect("registry");
        let a = m.plugin::<Extra>().expect("first");
        let b = m.plugin::<Extra>().expect("shared, not registered twice");
        assert!(Arc::ptr_eq(&a, &b));
        b.extra_total.with_label_values(&["y"]).inc();
        assert!(m.render().contains("tunneld_test_extra_total{x=\"y\"} 1"));
        assert_eq!(Extra::NAMES, &["tunneld_test_extra_total"]);
    }

    /// docs/metrics.md documents every series, and every series registers.
    #[test]
    fn every_series_is_documented_and_registers() {
        let m = Metrics::new().expect("registry");
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .expect("docs/metrics.md");
        let all = Series::NAMES
            .iter()
            .chain(
                [
                    "tunneld_handshakes_pending",
                    "tunneld_stream_open_seconds",
                    "process_open_fds",
                    "process_max_fds",
                ]
                .iter(),
            )
            .chain(crate::tunnel_metrics::NAMES.iter());
        for name in all {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
        assert!(Series::NAMES.contains(&"tunneld_sessions_total"));
        m.sessions_total.with_label_values(&["edge"]).inc();
        assert!(m
            .render()
            .contains("tunneld_sessions_total{transport=\"edge\"} 1"));
    }
}
