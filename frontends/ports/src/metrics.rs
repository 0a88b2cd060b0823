//! The ports frontend's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// Public ports bound for tunnels.
    pub struct PortsMetrics {
        gauge ports_allocated: "tunneld_ports_allocated", ["frontend"],
            "Public ports currently bound for tunnels";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::PortsMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
