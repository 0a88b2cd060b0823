//! Cluster mode's series (registered only when `cluster:` is set).

tunneld_core::metric_series! {
    /// What the cluster counts.
    pub struct ClusterMetrics {
        gauge cluster_nodes: "tunneld_cluster_nodes", [],
            "Nodes of the cluster that announced themselves within their lease (this one included)";
        gauge cluster_routes: "tunneld_cluster_routes", ["holder"],
            "Routes of the shared table on this node: held by its own sessions (local) or mirrored for another node (remote)";
        counter cluster_link_streams_total: "tunneld_cluster_link_streams_total", ["node", "direction", "result"],
            "Visitor streams over the links between nodes, by the other node, direction (out: to the node holding the tunnel; in: from a node a visitor reached) and result";
        counter cluster_link_connections_total: "tunneld_cluster_link_connections_total", ["result"],
            "Connections to this node's link port, by result: ok (a node's TLS handshake), tls_error, timeout, too_many_pending, too_many_pending_from_address, too_many_connections";
        counter cluster_redis_errors_total: "tunneld_cluster_redis_errors_total", ["op"],
            "Failed calls to the cluster's Redis, by operation";
        gauge cluster_redis_up: "tunneld_cluster_redis_up", [],
            "1 while the last call to the cluster's Redis worked";
        counter cluster_routes_lost_total: "tunneld_cluster_routes_lost_total", [],
            "Routes of this node's sessions that another node took over (the session is ended)";
        counter cluster_mirror_refusals_total: "tunneld_cluster_mirror_refusals_total", ["frontend"],
            "Routes of other nodes that a local frontend could not mirror (a local tunnel or another program holds the port or name)";
    }
}

impl ClusterMetrics {
    /// Counts one connection to the link port.
    pub fn connection(&self, result: &str) {
        self.cluster_link_connections_total
            .with_label_values(&[result])
            .inc();
    }

    /// Counts one link stream.
    pub fn stream(&self, node: &str, direction: &str, result: &str) {
        self.cluster_link_streams_total
            .with_label_values(&[node, direction, result])
            .inc();
    }

    /// Counts a failed Redis call, or marks Redis up.
    pub fn redis<T, E>(&self, op: &str, r: &Result<T, E>) {
        match r {
            Ok(_) => self.cluster_redis_up.with_label_values::<&str>(&[]).set(1),
            Err(_) => {
                self.cluster_redis_up.with_label_values::<&str>(&[]).set(0);
                self.cluster_redis_errors_total
                    .with_label_values(&[op])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// docs/metrics.md documents each series, and the set registers.
    #[test]
    fn documented_and_registers() {
        tunneld_core::metrics::check_set::<super::ClusterMetrics>(include_str!(
            "../../../docs/metrics.md"
        ));
    }
}
