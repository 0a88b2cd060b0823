//! The websocket transport's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// Requests on websocket ports and the conversations of their sessions.
    pub struct WsMetrics {
        counter requests_total: "tunneld_ws_requests_total", ["transport", "route", "code"],
            "Requests on websocket transport ports, by route (create, visitor, other) and the status answered (101 for a tunnel created, 200 for a visitor connected to a tunnel)";
        gauge conversations_active: "tunneld_ws_conversations_active", ["transport"],
            "Open conversations on websocket transport sessions";
        counter pauses_total: "tunneld_ws_pauses_total", ["transport"],
            "Pause (P) messages tunneld sent because a conversation's receive buffer was full";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::WsMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
