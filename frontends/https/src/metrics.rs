//! The https-subdomain frontend's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// Visitor requests, names, passthrough connections and 2ptth upstreams.
    pub struct HttpsMetrics {
        counter http_requests_total: "tunneld_http_requests_total", ["frontend", "outcome"],
            "Visitor HTTP requests on https-subdomain frontends, by outcome (forwarded, upgraded, not_found, offline, local_refused, misdirected, bad_request, timeout, session)";
        gauge http_names_active: "tunneld_http_names_active", ["frontend"],
            "Names served by connected tunnels on https-subdomain frontends";
        counter passthrough_connections_total: "tunneld_passthrough_connections_total", ["frontend", "outcome"],
            "TLS connections routed by SNI without termination, by outcome";
        gauge upstreams_2ptth: "tunneld_2ptth_upstreams", ["frontend"],
            "Connected 2ptth initiators (0 or 1), by frontend";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::HttpsMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
