//! The daemon's own series: the admin and provisioning APIs, admin pools, provisioned
//! tunnels and certificates, sessions cut by the sweep, the dashboard. Registered on core's registry when
//! tunneld starts ([`of`] from then on finds them).

use std::sync::Arc;
use tunneld_core::metrics::Metrics;

tunneld_core::metric_series! {
    /// What only the daemon counts.
    pub struct DaemonMetrics {
        counter admin_requests_total: "tunneld_admin_requests_total", ["route", "code"],
            "Admin API requests by route and status code";
        counter pool_streams_total: "tunneld_pool_streams_total", ["route", "client"],
            "Visitor streams of admin routes, by route and by the client (pool member) that served each";
        counter pool_failovers_total: "tunneld_pool_failovers_total", ["route", "reason"],
            "Pool members passed over for a visitor because they were offline or failed, by route and reason";
        counter control_requests_total: "tunneld_control_requests_total", ["route", "code"],
            "Requests to the provisioning API and the plain web port, by route and status";
        gauge provisioned_tunnels: "tunneld_provisioned_tunnels", ["state"],
            "Tunnels made through the provisioning API whose leases tunneld holds";
        counter certificates_issued_total: "tunneld_certificates_issued_total", ["outcome"],
            "Certificates tunneld's CA signed for tunnels, by outcome (issued, refused)";
        counter acme_orders_total: "tunneld_acme_orders_total", ["frontend", "result"],
            "ACME orders of an https-subdomain frontend, by result (issued, failed)";
        gauge acme_certificate_expiry_seconds: "tunneld_acme_certificate_expiry_seconds", ["frontend"],
            "When the first of a frontend's ACME certificates expires (Unix time)";
        counter sessions_cut_total: "tunneld_sessions_cut_total", ["reason"],
            "Live sessions ended because their token expired, was revoked, or was removed or changed by a reload";
        counter config_reloads_total: "tunneld_config_reloads_total", ["result"],
            "Configuration reloads (SIGHUP, POST /reload) by result (ok, error)";
        counter dashboard_logins_total: "tunneld_dashboard_logins_total", ["result"],
            "Dashboard logins (POST /ui/login) by result (ok, refused)";
        gauge dashboard_event_streams: "tunneld_dashboard_event_streams", [],
            "Open dashboard event streams (GET /ui/events)";
    }
}

/// The daemon's series on `m`; `None` only if they cannot register (tunneld's start
/// registers them first and stops on that error, so a running tunneld always has them).
pub fn of(m: &Metrics) -> Option<Arc<DaemonMetrics>> {
    m.plugin::<DaemonMetrics>().ok()
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::DaemonMetrics>(include_str!(
            "../../docs/metrics.md"
        ));
    }
}
