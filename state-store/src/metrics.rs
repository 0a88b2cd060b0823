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
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::StateMetrics>(include_str!(
            "../../docs/metrics.md"
        ));
    }
}
