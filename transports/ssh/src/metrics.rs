//! The ssh transport's own series (registered through core's registry handle).

tunneld_core::metric_series! {
    /// Remote forwards and refused requests of SSH sessions.
    pub struct SshMetrics {
        counter forwards_total: "tunneld_ssh_forwards_total", ["transport", "kind", "outcome"],
            "Remote forward (tcpip-forward) requests of SSH sessions, by tunnel kind (tcp, http, tls) and outcome (ok, or the refusal's reason)";
        counter refused_total: "tunneld_ssh_refused_total", ["transport", "request"],
            "SSH requests tunneld refuses by design, by request (exec, subsystem, direct-tcpip, x11, agent, streamlocal)";
        counter backlog_cuts_total: "tunneld_ssh_backlog_cuts_total", ["transport", "cap"],
            "Visitors cut because the SSH client sent them more than allowed, by cap (window: past the window granted, visitor: past max_backlog, extended_data: a second stream)";
        gauge backlog_bytes: "tunneld_ssh_backlog_bytes", ["transport"],
            "Bytes SSH clients sent visitors that wait unread at tunneld (each visitor's within its window, a session's within twice max_session_backlog)";
        counter auth_total: "tunneld_ssh_auth_total", ["transport", "outcome"],
            "SSH public-key authentications, by outcome (ok, unknown_key, token_refused, store_error, throttled)";
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::SshMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
