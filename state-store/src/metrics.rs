//! The state cache's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// Lookups in the in-memory state, and its checks against the store.
    pub struct StateMetrics {
        counter state_lookups_total: "tunneld_state_lookups_total", ["table"],
            "Lookups the data path made in the in-memory state (tokens, rendezvous, tunnels)";
        counter state_checks_total: "tunneld_state_checks_total", ["outcome"],
            "Checks of the in-memory state against the state store, by outcome (current, reloaded, failed); concurrent lookups share one";
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunneld_core::metrics::{undocumented, Metrics, SeriesSet};

    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .expect("docs/metrics.md");
        assert_eq!(undocumented(StateMetrics::NAMES, &doc), Vec::<&str>::new());
        let m = Metrics::new().expect("registry");
        assert!(m.plugin::<StateMetrics>().is_ok());
    }
}
