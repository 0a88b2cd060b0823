//! Where pipe2me-shape clients reach the `ssh` transport (the `TUNNEL=ssh://<tunnel>@<host>:<port>`
//! line): `control.ssh_endpoint` when set, else the bound address of the first transport of
//! type `ssh`, its host replaced by `control.public_host` (else the names frontend's domain)
//! when it is bound to all addresses. No line at all when there is neither.

use crate::config::control::ControlConfig;
use crate::config::server::{ServerConfig, TransportConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A transport's `type:`.
pub fn transport_type(t: &TransportConfig) -> &'static str {
    match t {
        TransportConfig::Yamux(_) => "yamux",
        TransportConfig::Connect(_) => "connect",
        TransportConfig::H2Reverse(_) => "h2-reverse",
        TransportConfig::Websocket(_) => "websocket",
        TransportConfig::Ssh(_) => "ssh",
    }
}

/// `host:port` of the ssh transport as clients reach it, if there is one.
pub fn ssh_endpoint(
    cfg: &ServerConfig,
    c: &ControlConfig,
    domain: &str,
    bound: &BTreeMap<String, SocketAddr>,
) -> Option<String> {
    if let Some(e) = &c.ssh_endpoint {
        return Some(e.clone());
    }
    let addr = cfg
        .transports
        .iter()
        .filter(|(_, t)| transport_type(t) == "ssh")
        .find_map(|(name, _)| bound.get(name))?;
    Some(if addr.ip().is_unspecified() {
        format!(
            "{}:{}",
            c.public_host.as_deref().unwrap_or(domain),
            addr.port()
        )
    } else {
        addr.to_string()
    })
}
