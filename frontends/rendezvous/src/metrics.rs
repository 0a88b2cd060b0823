//! The rendezvous frontend's own series (registered through core's registry handle). The
//! park requests' counter is core's: the `connect` transport counts into it too.

tunneld_core::metric_series! {
    /// Parked connections, TOTP refusals, visitors and CONNECT requests.
    pub struct RendezvousMetrics {
        gauge rendezvous_parked: "tunneld_rendezvous_parked", ["id"],
            "Hidden-server connections parked and waiting for a visitor, by rendezvous id";
        counter rendezvous_parked_dropped_total: "tunneld_rendezvous_parked_dropped_total", ["reason"],
            "Parked connections dropped without a visitor (closed by the peer, evicted by a newer one, early data, shutdown)";
        counter rendezvous_totp_failures_total: "tunneld_rendezvous_totp_failures_total", ["reason"],
            "TOTP codes refused, by reason (wrong_code, malformed_code, replayed_code, unknown_id, locked_out)";
        counter rendezvous_visitors_total: "tunneld_rendezvous_visitors_total", ["frontend", "outcome"],
            "Visitor requests on rendezvous frontends, by outcome (matched, challenged, nothing_parked, ...)";
        counter connect_requests_total: "tunneld_connect_requests_total", ["frontend", "outcome"],
            "CONNECT <tunnel>:<port> requests on rendezvous frontends, by outcome";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::RendezvousMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
