//! Every metric tunneld exports, in one registry passed explicitly (no globals).
//! `docs/metrics.md` documents each one.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Declares the labelled series: each row is `counter|gauge field: "name", [labels], help;`.
/// The struct gets one field per row, and `register` makes and registers them in order.
macro_rules! series {
    ($($kind:ident $field:ident: $name:literal, [$($label:literal),* $(,)?], $help:literal;)*) => {
        /// The labelled counters and gauges (see [`Metrics`]).
        pub struct Series {
            $(pub $field: series!(@type $kind),)*
        }

        impl Series {
            /// Every series' name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            fn register(r: &Registry) -> Result<Self, prometheus::Error> {
                Ok(Self {
                    $($field: $kind(r, $name, $help, &[$($label),*])?,)*
                })
            }
        }
    };
    (@type counter) => { IntCounterVec };
    (@type gauge) => { IntGaugeVec };
}

series! {
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
    gauge ports_allocated: "tunneld_ports_allocated", ["frontend"],
        "Public ports currently bound for tunnels";
    counter claims_refused_total: "tunneld_claims_refused_total", ["frontend", "reason"],
        "Tunnel requests refused by a frontend, by reason";
    counter admin_requests_total: "tunneld_admin_requests_total", ["route", "code"],
        "Admin API requests by route and status code";
    counter pool_streams_total: "tunneld_pool_streams_total", ["route", "client"],
        "Visitor streams of admin routes, by route and by the client (pool member) that served each";
    counter pool_failovers_total: "tunneld_pool_failovers_total", ["route", "reason"],
        "Pool members passed over for a visitor because they were offline or failed, by route and reason";
    gauge threshold_pairs_pending: "tunneld_threshold_pairs_pending", ["transport"],
        "Visitors of threshold-dialect clients waiting for the client to open their stream";
    counter threshold_pair_timeouts_total: "tunneld_threshold_pair_timeouts_total", ["transport"],
        "Visitors of threshold-dialect clients whose stream did not arrive in time";
    gauge rendezvous_parked: "tunneld_rendezvous_parked", ["id"],
        "Hidden-server connections parked and waiting for a visitor, by rendezvous id";
    counter rendezvous_park_requests_total: "tunneld_rendezvous_park_requests_total", ["outcome"],
        "Hidden-server CONNECT uuid: requests, by outcome (ok, or the refusal)";
    counter rendezvous_parked_dropped_total: "tunneld_rendezvous_parked_dropped_total", ["reason"],
        "Parked connections dropped without a visitor (closed by the peer, evicted by a newer one, early data, shutdown)";
    counter rendezvous_totp_failures_total: "tunneld_rendezvous_totp_failures_total", ["reason"],
        "TOTP codes refused, by reason (wrong_code, malformed_code, replayed_code, unknown_id, locked_out)";
    counter rendezvous_visitors_total: "tunneld_rendezvous_visitors_total", ["frontend", "outcome"],
        "Visitor requests on rendezvous frontends, by outcome (matched, challenged, nothing_parked, ...)";
    counter connect_requests_total: "tunneld_connect_requests_total", ["frontend", "outcome"],
        "CONNECT <tunnel>:<port> requests on rendezvous frontends, by outcome";
    counter http_requests_total: "tunneld_http_requests_total", ["frontend", "outcome"],
        "Visitor HTTP requests on https-subdomain frontends, by outcome (forwarded, upgraded, not_found, offline, local_refused, misdirected, bad_request, timeout, session)";
    gauge http_names_active: "tunneld_http_names_active", ["frontend"],
        "Names served by connected tunnels on https-subdomain frontends";
    counter passthrough_connections_total: "tunneld_passthrough_connections_total", ["frontend", "outcome"],
        "TLS connections routed by SNI without termination, by outcome";
    gauge upstreams_2ptth: "tunneld_2ptth_upstreams", ["frontend"],
        "Connected 2ptth initiators (0 or 1), by frontend";
    counter ws_requests_total: "tunneld_ws_requests_total", ["transport", "route", "code"],
        "Requests on websocket transport ports, by route (create, visitor, other) and the status answered (101 for a tunnel created, 200 for a visitor connected to a tunnel)";
    gauge ws_conversations_active: "tunneld_ws_conversations_active", ["transport"],
        "Open conversations on websocket transport sessions";
    counter ws_pauses_total: "tunneld_ws_pauses_total", ["transport"],
        "Pause (P) messages tunneld sent because a conversation's receive buffer was full";
    counter control_requests_total: "tunneld_control_requests_total", ["route", "code"],
        "Requests to the provisioning API and the plain web port, by route and status";
    gauge provisioned_tunnels: "tunneld_provisioned_tunnels", ["state"],
        "Tunnels made through the provisioning API whose leases tunneld holds";
    counter certificates_issued_total: "tunneld_certificates_issued_total", ["outcome"],
        "Certificates tunneld's CA signed for tunnels, by outcome (issued, refused)";
    counter sessions_cut_total: "tunneld_sessions_cut_total", ["reason"],
        "Live sessions ended because their token expired or was revoked";
    counter streams_refused_total: "tunneld_streams_refused_total", ["transport", "reason"],
        "Visitor streams refused by a stream cap (per tunnel or per visitor address)";
    counter streams_stalled_total: "tunneld_streams_stalled_total", ["frontend"],
        "Visitor streams reset because their writes made no progress for limits.stream_stall_timeout";
    counter session_conflicts_total: "tunneld_session_conflicts_total", ["outcome"],
        "Claims asked for by a second session of a client while another session held them, by outcome (refused: the holder answered its probe; replaced: it did not, or it was the same tunnelc)";
    counter visitors_idle_closed_total: "tunneld_visitors_idle_closed_total", ["frontend"],
        "Visitor connections closed for idling: no request (HTTP, limits.http_idle_timeout; before the first request the frontend's header_timeout) or no byte either way (spliced, limits.idle_timeout)";
    counter state_lookups_total: "tunneld_state_lookups_total", ["table"],
        "Lookups the data path made in the in-memory state (tokens, rendezvous, tunnels)";
    counter state_checks_total: "tunneld_state_checks_total", ["outcome"],
        "Checks of the in-memory state against the state store, by outcome (current, reloaded, failed); concurrent lookups share one";
}

pub struct Metrics {
    pub registry: Registry,
    pub handshakes_pending: IntGauge,
    pub stream_open_seconds: HistogramVec,
    /// Every labelled counter and gauge; `metrics.sessions_total` reads through to it.
    pub series: Series,
}

impl std::ops::Deref for Metrics {
    type Target = Series;
    fn deref(&self) -> &Series {
        &self.series
    }
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let m = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn gauge(
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
        Ok(Self {
            series: Series::register(&r)?,
            handshakes_pending,
            stream_open_seconds,
            registry: r,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/metrics.md documents every series, and every series registers.
    #[test]
    fn every_series_is_documented_and_registers() {
        let m = Metrics::new().expect("registry");
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .expect("docs/metrics.md");
        let all = Series::NAMES
            .iter()
            .chain(["tunneld_handshakes_pending", "tunneld_stream_open_seconds"].iter());
        for name in all {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
        assert!(Series::NAMES.len() >= 38);
        m.sessions_total.with_label_values(&["edge"]).inc();
        assert!(m
            .render()
            .contains("tunneld_sessions_total{transport=\"edge\"} 1"));
    }
}
