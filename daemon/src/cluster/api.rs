//! `GET /cluster` on the admin API: the nodes, their load, and who holds what.

use super::Cluster;
use crate::http_serve::{json_resp, Resp};
use http::StatusCode;
use serde_json::{json, Value};

/// The answer to `GET /cluster`; with cluster mode off, `enabled: false` and empty lists.
pub fn respond(cluster: Option<&Cluster>) -> Resp {
    let body = match cluster {
        Some(c) => c.status(),
        None => json!({
            "enabled": false,
            "node": null,
            "redis": "off",
            "read_at": 0,
            "nodes": [],
            "routes": [],
        }),
    };
    json_resp(StatusCode::OK, &body)
}

impl Cluster {
    /// The cluster as this node last read it.
    pub fn status(&self) -> Value {
        let view = self.view();
        let linked = self.links.connected();
        let redis_up = tunneld_core::sync::lock(&self.redis_up_since).is_some();
        let nodes: Vec<Value> = view
            .nodes
            .values()
            .map(|n| {
                json!({
                    "node": n.node,
                    "link": n.link.to_string(),
                    "sessions": n.sessions,
                    "routes": n.routes,
                    "started": n.started,
                    "updated": n.updated,
                    "self": n.node == self.cfg.node,
                    "linked": linked.contains(&n.node),
                })
            })
            .collect();
        let routes: Vec<Value> = view
            .routes
            .values()
            .filter(|r| r.frontend != super::presence::PRESENCE)
            .map(|r| {
                json!({
                    "frontend": r.frontend,
                    "port": r.port(),
                    "name": r.name(),
                    "node": r.node,
                    "owner": r.owner,
                    "tunnel": r.tunnel,
                    "kind": r.kind,
                    "state": if r.session == 0 { "released" } else if view.nodes.contains_key(&r.node) { "live" } else { "node_gone" },
                    "since": r.since,
                })
            })
            .collect();
        json!({
            "enabled": true,
            "node": self.cfg.node,
            "redis": if redis_up { "up" } else { "down" },
            "read_at": view.read_at,
            "nodes": nodes,
            "routes": routes,
        })
    }
}
