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
    use super::*;
    use tunneld_core::metrics::{undocumented, Metrics, SeriesSet};

    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/metrics.md"
        ))
        .expect("docs/metrics.md");
        assert_eq!(undocumented(YamuxMetrics::NAMES, &doc), Vec::<&str>::new());
        let m = Metrics::new().expect("registry");
        assert!(m.plugin::<YamuxMetrics>().is_ok());
    }
}
