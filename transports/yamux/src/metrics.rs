//! The yamux transport's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// threshold-dialect sessions' visitor pairing.
    pub struct YamuxMetrics {
        gauge threshold_pairs_pending: "tunneld_threshold_pairs_pending", ["transport"],
            "Visitors of threshold-dialect clients waiting for the client to open their stream";
        counter threshold_pair_timeouts_total: "tunneld_threshold_pair_timeouts_total", ["transport"],
            "Visitors of threshold-dialect clients whose stream did not arrive in time";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::YamuxMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
