//! The hello tunnelc sends at every connect: its tunnels, its capabilities and the instance
//! id that names the process across reconnects.

use crate::config::client::{ClientConfig, TransportKind};
use tunneld_core::auth::{hex, random_bytes};
use tunneld_core::proto::{Hello, TunnelRequest, VERSION};

/// The hello of this tunnelc; `instance` names the process across its reconnects.
pub(crate) fn hello(cfg: &ClientConfig, instance: String) -> Hello {
    Hello {
        version: VERSION,
        token: cfg.token.as_ref().map(|t| t.0.clone()),
        tunnels: cfg
            .tunnels
            .iter()
            .map(|(name, t)| TunnelRequest {
                name: name.clone(),
                kind: t.kind,
                remote_port: t.remote_port,
                frontend: t.frontend.clone(),
                proxy_protocol: t.proxy_protocol,
                subdomain: t.subdomain.clone(),
            })
            .collect(),
        accept_server_mappings: cfg.accept_server_mappings,
        agent: agent(cfg),
        max_streams: Some(match cfg.transport {
            TransportKind::Websocket => cfg.max_conversations as u32,
            TransportKind::H2Reverse => cfg.h2.max_streams,
            _ => cfg.yamux.max_streams as u32,
        }),
        instance: Some(instance),
    }
}

/// The hello's agent text: version and capabilities. Every stream this tunnelc accepts is
/// spliced to one local connection, so tunneld may keep streams alive between HTTP requests
/// (`+keepalive`), except for tunnels that want a connection per request or per visitor.
fn agent(cfg: &ClientConfig) -> String {
    use tunneld_core::proto::{
        CAP_H2_MAX_STREAMS, CAP_HANDOVER, CAP_KEEPALIVE, CAP_MAX_STREAMS, CAP_RETRYING,
        NO_KEEPALIVE,
    };
    let mut agent = format!(
        "tunnelc {} {CAP_RETRYING} {CAP_HANDOVER} {CAP_KEEPALIVE} {CAP_MAX_STREAMS} {CAP_H2_MAX_STREAMS}",
        env!("CARGO_PKG_VERSION")
    );
    for (name, t) in &cfg.tunnels {
        if !t.reuse_connections || t.proxy_protocol.is_some() {
            agent.push_str(&format!(" {NO_KEEPALIVE}{name}"));
        }
    }
    agent
}

/// A fresh instance id: 16 random bytes in hex.
pub(crate) fn new_instance() -> String {
    hex(&random_bytes::<16>())
}
