//! Every metric tunneld exports, in one registry passed explicitly (no globals).
//! `docs/metrics.md` documents each one.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub sessions_active: IntGaugeVec,
    pub sessions_total: IntCounterVec,
    pub handshakes_total: IntCounterVec,
    pub handshakes_pending: IntGauge,
    pub protocol_errors_total: IntCounterVec,
    pub streams_opened_total: IntCounterVec,
    pub streams_active: IntGaugeVec,
    pub stream_open_failures_total: IntCounterVec,
    pub stream_open_seconds: HistogramVec,
    pub bytes_total: IntCounterVec,
    pub ports_allocated: IntGaugeVec,
    pub claims_refused_total: IntCounterVec,
    pub admin_requests_total: IntCounterVec,
    pub pool_streams_total: IntCounterVec,
    pub pool_failovers_total: IntCounterVec,
    pub threshold_pairs_pending: IntGaugeVec,
    pub threshold_pair_timeouts_total: IntCounterVec,
    pub rendezvous_parked: IntGaugeVec,
    pub rendezvous_park_requests_total: IntCounterVec,
    pub rendezvous_parked_dropped_total: IntCounterVec,
    pub rendezvous_totp_failures_total: IntCounterVec,
    pub rendezvous_visitors_total: IntCounterVec,
    pub connect_requests_total: IntCounterVec,
    pub http_requests_total: IntCounterVec,
    pub http_names_active: IntGaugeVec,
    pub passthrough_connections_total: IntCounterVec,
    pub upstreams_2ptth: IntGaugeVec,
    pub ws_requests_total: IntCounterVec,
    pub ws_conversations_active: IntGaugeVec,
    pub ws_pauses_total: IntCounterVec,
    pub control_requests_total: IntCounterVec,
    pub provisioned_tunnels: IntGaugeVec,
    pub certificates_issued_total: IntCounterVec,
    pub sessions_cut_total: IntCounterVec,
    pub streams_refused_total: IntCounterVec,
    pub streams_stalled_total: IntCounterVec,
    pub session_conflicts_total: IntCounterVec,
    pub visitors_idle_closed_total: IntCounterVec,
    pub state_lookups_total: IntCounterVec,
    pub state_checks_total: IntCounterVec,
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
            sessions_active: gauge(
                &r,
                "tunneld_sessions_active",
                "Connected tunnel client sessions",
                &["transport"],
            )?,
            sessions_total: counter(
                &r,
                "tunneld_sessions_total",
                "Tunnel client sessions accepted since start",
                &["transport"],
            )?,
            handshakes_total: counter(
                &r,
                "tunneld_handshakes_total",
                "Finished handshakes by outcome (ok, or the reason for refusal)",
                &["transport", "outcome"],
            )?,
            handshakes_pending,
            protocol_errors_total: counter(
                &r,
                "tunneld_protocol_errors_total",
                "Malformed or oversized input from tunnel clients, by reason",
                &["transport", "reason"],
            )?,
            streams_opened_total: counter(
                &r,
                "tunneld_streams_opened_total",
                "Visitor streams opened to tunnel clients",
                &["frontend"],
            )?,
            streams_active: gauge(
                &r,
                "tunneld_streams_active",
                "Visitor streams currently open",
                &["frontend"],
            )?,
            stream_open_failures_total: counter(
                &r,
                "tunneld_stream_open_failures_total",
                "Visitor connections that could not be given a stream, by reason",
                &["frontend", "reason"],
            )?,
            stream_open_seconds,
            bytes_total: counter(
                &r,
                "tunneld_bytes_total",
                "Bytes relayed, by direction (in = visitor to tunnel client, out = back)",
                &["frontend", "direction"],
            )?,
            ports_allocated: gauge(
                &r,
                "tunneld_ports_allocated",
                "Public ports currently bound for tunnels",
                &["frontend"],
            )?,
            claims_refused_total: counter(
                &r,
                "tunneld_claims_refused_total",
                "Tunnel requests refused by a frontend, by reason",
                &["frontend", "reason"],
            )?,
            admin_requests_total: counter(
                &r,
                "tunneld_admin_requests_total",
                "Admin API requests by route and status code",
                &["route", "code"],
            )?,
            pool_streams_total: counter(
                &r,
                "tunneld_pool_streams_total",
                "Visitor streams of admin routes, by route and by the client (pool member) that served each",
                &["route", "client"],
            )?,
            pool_failovers_total: counter(
                &r,
                "tunneld_pool_failovers_total",
                "Pool members passed over for a visitor because they were offline or failed, by route and reason",
                &["route", "reason"],
            )?,
            threshold_pairs_pending: gauge(
                &r,
                "tunneld_threshold_pairs_pending",
                "Visitors of threshold-dialect clients waiting for the client to open their stream",
                &["transport"],
            )?,
            threshold_pair_timeouts_total: counter(
                &r,
                "tunneld_threshold_pair_timeouts_total",
                "Visitors of threshold-dialect clients whose stream did not arrive in time",
                &["transport"],
            )?,
            rendezvous_parked: gauge(
                &r,
                "tunneld_rendezvous_parked",
                "Hidden-server connections parked and waiting for a visitor, by rendezvous id",
                &["id"],
            )?,
            rendezvous_park_requests_total: counter(
                &r,
                "tunneld_rendezvous_park_requests_total",
                "Hidden-server CONNECT uuid: requests, by outcome (ok, or the refusal)",
                &["outcome"],
            )?,
            rendezvous_parked_dropped_total: counter(
                &r,
                "tunneld_rendezvous_parked_dropped_total",
                "Parked connections dropped without a visitor (closed by the peer, evicted by a newer one, early data, shutdown)",
                &["reason"],
            )?,
            rendezvous_totp_failures_total: counter(
                &r,
                "tunneld_rendezvous_totp_failures_total",
                "TOTP codes refused, by reason (wrong_code, malformed_code, replayed_code, unknown_id, locked_out)",
                &["reason"],
            )?,
            rendezvous_visitors_total: counter(
                &r,
                "tunneld_rendezvous_visitors_total",
                "Visitor requests on rendezvous frontends, by outcome (matched, challenged, nothing_parked, ...)",
                &["frontend", "outcome"],
            )?,
            connect_requests_total: counter(
                &r,
                "tunneld_connect_requests_total",
                "CONNECT <tunnel>:<port> requests on rendezvous frontends, by outcome",
                &["frontend", "outcome"],
            )?,
            http_requests_total: counter(
                &r,
                "tunneld_http_requests_total",
                "Visitor HTTP requests on https-subdomain frontends, by outcome (forwarded, upgraded, not_found, offline, local_refused, misdirected, bad_request, timeout, session)",
                &["frontend", "outcome"],
            )?,
            http_names_active: gauge(
                &r,
                "tunneld_http_names_active",
                "Names served by connected tunnels on https-subdomain frontends",
                &["frontend"],
            )?,
            passthrough_connections_total: counter(
                &r,
                "tunneld_passthrough_connections_total",
                "TLS connections routed by SNI without termination, by outcome",
                &["frontend", "outcome"],
            )?,
            upstreams_2ptth: gauge(
                &r,
                "tunneld_2ptth_upstreams",
                "Connected 2ptth initiators (0 or 1), by frontend",
                &["frontend"],
            )?,
            ws_requests_total: counter(
                &r,
                "tunneld_ws_requests_total",
                "Requests on websocket transport ports, by route (create, visitor, other) and the status answered (101 for a tunnel created, 200 for a visitor connected to a tunnel)",
                &["transport", "route", "code"],
            )?,
            ws_conversations_active: gauge(
                &r,
                "tunneld_ws_conversations_active",
                "Open conversations on websocket transport sessions",
                &["transport"],
            )?,
            ws_pauses_total: counter(
                &r,
                "tunneld_ws_pauses_total",
                "Pause (P) messages tunneld sent because a conversation's receive buffer was full",
                &["transport"],
            )?,
            control_requests_total: counter(
                &r,
                "tunneld_control_requests_total",
                "Requests to the provisioning API and the plain web port, by route and status",
                &["route", "code"],
            )?,
            provisioned_tunnels: gauge(
                &r,
                "tunneld_provisioned_tunnels",
                "Tunnels made through the provisioning API whose leases tunneld holds",
                &["state"],
            )?,
            certificates_issued_total: counter(
                &r,
                "tunneld_certificates_issued_total",
                "Certificates tunneld's CA signed for tunnels, by outcome (issued, refused)",
                &["outcome"],
            )?,
            sessions_cut_total: counter(
                &r,
                "tunneld_sessions_cut_total",
                "Live sessions ended because their token expired or was revoked",
                &["reason"],
            )?,
            streams_refused_total: counter(
                &r,
                "tunneld_streams_refused_total",
                "Visitor streams refused by a stream cap (per tunnel or per visitor address)",
                &["transport", "reason"],
            )?,
            streams_stalled_total: counter(
                &r,
                "tunneld_streams_stalled_total",
                "Visitor streams reset because their writes made no progress for limits.stream_stall_timeout",
                &["frontend"],
            )?,
            session_conflicts_total: counter(
                &r,
                "tunneld_session_conflicts_total",
                "Claims asked for by a second session of a client while another session held them, by outcome (refused: the holder answered its probe; replaced: it did not, or it was the same tunnelc)",
                &["outcome"],
            )?,
            visitors_idle_closed_total: counter(
                &r,
                "tunneld_visitors_idle_closed_total",
                "Visitor connections closed for idling: no request (HTTP, limits.http_idle_timeout; before the first request the frontend's header_timeout) or no byte either way (spliced, limits.idle_timeout)",
                &["frontend"],
            )?,
            state_lookups_total: counter(
                &r,
                "tunneld_state_lookups_total",
                "Lookups the data path made in the in-memory state (tokens, rendezvous, tunnels)",
                &["table"],
            )?,
            state_checks_total: counter(
                &r,
                "tunneld_state_checks_total",
                "Checks of the in-memory state against the state store, by outcome (current, reloaded, failed); concurrent lookups share one",
                &["outcome"],
            )?,
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
