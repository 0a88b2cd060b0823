//! Once a second: the totals the dashboard shows live (read from the metrics registry and
//! the hub), their rates, a generation number that changes when the set of sessions or
//! routes changes, and the refusal counters' increase as recent events.

use super::recent::Recent;
use prometheus::core::Collector;
use prometheus::proto::{LabelPair, MetricFamily};
use serde::Serialize;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;

/// How often the totals are read (and events sent).
pub const TICK: Duration = Duration::from_secs(1);

/// What one server-sent event carries.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Totals {
    pub clients: usize,
    pub sessions: usize,
    pub tunnels: usize,
    pub streams_active: i64,
    pub streams_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub streams_per_s: f64,
    /// Changes when a session or route comes or goes (the page then reloads its tables).
    pub generation: u64,
    /// Recent errors and refusals recorded since start (the page reloads its tables too).
    pub refusals: u64,
}

fn label<'a>(labels: &'a [LabelPair], name: &str) -> &'a str {
    labels
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

fn value(m: &prometheus::proto::Metric) -> f64 {
    // A series is a counter or a gauge; the other reads as 0.
    m.get_counter().get_value() + m.get_gauge().get_value()
}

fn families(c: &dyn Collector) -> Vec<MetricFamily> {
    c.collect()
}

/// The sum of a series over the labels `keep` accepts.
fn sum(c: &dyn Collector, keep: impl Fn(&[LabelPair]) -> bool) -> f64 {
    families(c)
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| keep(m.get_label()))
        .map(value)
        .sum()
}

/// Each labelled value of a series, keyed by its labels as `k=v k=v`.
fn by_labels(c: &dyn Collector, keep: &dyn Fn(&[LabelPair]) -> bool) -> HashMap<String, f64> {
    families(c)
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| keep(m.get_label()))
        .map(|m| {
            let key = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect::<Vec<_>>()
                .join(" ");
            (key, value(m))
        })
        .collect()
}

type Keep = fn(&[LabelPair]) -> bool;

fn any(_: &[LabelPair]) -> bool {
    true
}

/// The refusal and error counters, with what each counts.
fn sources(m: &Metrics) -> Vec<(&'static str, Box<dyn Collector>, Keep)> {
    let mut out: Vec<(&'static str, Box<dyn Collector>, Keep)> = vec![
        (
            "handshake refused",
            Box::new(m.handshakes_total.clone()),
            |l| label(l, "outcome") != "ok",
        ),
        (
            "protocol error",
            Box::new(m.protocol_errors_total.clone()),
            any,
        ),
        (
            "visitor stream failed",
            Box::new(m.stream_open_failures_total.clone()),
            any,
        ),
        (
            "visitor stream refused (cap)",
            Box::new(m.streams_refused_total.clone()),
            any,
        ),
        (
            "tunnel refused",
            Box::new(m.claims_refused_total.clone()),
            any,
        ),
        (
            "rendezvous park refused",
            Box::new(m.rendezvous_park_requests_total.clone()),
            |l| label(l, "outcome") != "ok",
        ),
        (
            "session conflict refused",
            Box::new(m.session_conflicts_total.clone()),
            |l| label(l, "outcome") == "refused",
        ),
    ];
    if let Some(own) = crate::metrics::of(m) {
        out.push((
            "admin API request refused",
            Box::new(own.admin_requests_total.clone()),
            // The dashboard records its own refusals as they happen.
            |l| matches!(label(l, "code"), "401" | "403" | "429") && label(l, "route") != "/ui",
        ));
        out.push(("session cut", Box::new(own.sessions_cut_total.clone()), any));
    }
    out
}

/// The hub's sessions and routes as one number that changes when either set does.
fn shape_hash(hub: &Hub) -> u64 {
    let mut h = DefaultHasher::new();
    let sessions: BTreeSet<u64> = hub.sessions().iter().map(|s| s.info.id).collect();
    sessions.hash(&mut h);
    let mut routes: Vec<(String, String, String, String, &str)> = hub
        .routes()
        .into_iter()
        .map(|r| (r.frontend, r.tunnel, r.endpoint, r.owner, r.state))
        .collect();
    routes.sort();
    routes.hash(&mut h);
    h.finish()
}

/// Reads the totals once a second and publishes them until `stop`.
pub fn spawn(
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    recent: Arc<Recent>,
    stop: CancellationToken,
) -> watch::Receiver<Totals> {
    let (tx, rx) = watch::channel(Totals::default());
    tokio::spawn(async move {
        let sources = sources(&metrics);
        let mut last_counts: Vec<HashMap<String, f64>> =
            sources.iter().map(|(_, c, k)| by_labels(&**c, k)).collect();
        let mut prev: Option<(Instant, Totals)> = None;
        let mut last_shape = None;
        let mut generation = 0u64;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let shape = shape_hash(&hub);
            if last_shape != Some(shape) {
                generation += 1;
                last_shape = Some(shape);
            }
            let now = Instant::now();
            let mut t = read(&hub, &metrics, generation);
            if let Some((then, p)) = &prev {
                let secs = now.duration_since(*then).as_secs_f64().max(0.001);
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                t.bytes_in_per_s = rate(t.bytes_in, p.bytes_in);
                t.bytes_out_per_s = rate(t.bytes_out, p.bytes_out);
                t.streams_per_s = rate(t.streams_total, p.streams_total);
            }
            for ((what, c, keep), last) in sources.iter().zip(last_counts.iter_mut()) {
                let now_counts = by_labels(&**c, keep);
                for (labels, v) in &now_counts {
                    let delta = v - last.get(labels).copied().unwrap_or(0.0);
                    if delta >= 1.0 {
                        recent.push(*what, labels.clone(), delta as u64);
                    }
                }
                *last = now_counts;
            }
            t.refusals = recent.pushed();
            prev = Some((now, t.clone()));
            if tx.send(t).is_err() {
                return;
            }
        }
    });
    rx
}

fn read(hub: &Hub, m: &Metrics, generation: u64) -> Totals {
    let sessions = hub.sessions();
    let clients: BTreeSet<&str> = sessions.iter().map(|s| s.info.client_id.as_str()).collect();
    let dir = |d: &'static str| move |l: &[LabelPair]| label(l, "direction") == d;
    Totals {
        clients: clients.len(),
        sessions: sessions.len(),
        tunnels: hub.routes().len(),
        streams_active: sum(&m.streams_active, any) as i64,
        streams_total: sum(&m.streams_opened_total, any) as u64,
        bytes_in: sum(&m.bytes_total, dir("in")) as u64,
        bytes_out: sum(&m.bytes_total, dir("out")) as u64,
        generation,
        ..Totals::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums and per-label values come from the registry's series.
    #[test]
    fn sums_and_labels() {
        let m = Metrics::new().expect("registry");
        m.bytes_total.with_label_values(&["tcp", "in"]).inc_by(5);
        m.bytes_total.with_label_values(&["web", "in"]).inc_by(7);
        m.bytes_total.with_label_values(&["web", "out"]).inc_by(3);
        assert_eq!(sum(&m.bytes_total, |l| label(l, "direction") == "in"), 12.0);
        m.handshakes_total.with_label_values(&["edge", "ok"]).inc();
        m.handshakes_total
            .with_label_values(&["edge", "bad_token"])
            .inc_by(2);
        let keep: &dyn Fn(&[LabelPair]) -> bool = &|l| label(l, "outcome") != "ok";
        let v = by_labels(&m.handshakes_total, keep);
        assert_eq!(v.len(), 1);
        assert_eq!(v.get("outcome=bad_token transport=edge"), Some(&2.0));
    }
}
