//! Where clients reach the `ssh` transport: the transport is `control.transport` when that
//! names one of type `ssh`, else the first transport of type `ssh`. Its `host:port` (the
//! pipe2me-shape `TUNNEL=ssh://<tunnel>@<host>:<port>` line and `GET /v1/config`'s
//! `ssh_endpoint`) is `control.ssh_endpoint` when set (even with no ssh transport here), else the transport's bound address,
//! its host replaced by `control.public_host` (else the names frontend's domain) when it is
//! bound to all addresses. Its host key (`GET /v1/config`'s `ssh_host_key`) is read from the
//! file the transport made or loaded at start. Nothing at all when there is no ssh transport.

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

/// The ssh transport clients are sent to, by name.
pub fn ssh_transport<'a>(
    cfg: &'a ServerConfig,
    c: &ControlConfig,
) -> Option<(&'a String, &'a tunneld_transport_ssh::Config)> {
    let ssh = |(name, t): (&'a String, &'a TransportConfig)| match t {
        TransportConfig::Ssh(s) => Some((name, s)),
        _ => None,
    };
    cfg.transports
        .get_key_value(&c.transport)
        .and_then(ssh)
        .or_else(|| cfg.transports.iter().find_map(ssh))
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
    let (name, _) = ssh_transport(cfg, c)?;
    let addr = bound.get(name)?;
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

/// The ssh transport's public host key line (`ssh-ed25519 AAAA...`), once it is bound (the
/// transport makes the key on first start).
pub fn ssh_host_key(cfg: &ServerConfig, c: &ControlConfig) -> Option<String> {
    let (name, t) = ssh_transport(cfg, c)?;
    let file = t.host_key.clone().unwrap_or_else(|| {
        cfg.state_dir
            .join(tunneld_transport_ssh::host_key::DEFAULT_FILE)
    });
    match tunneld_transport_ssh::host_key::load_or_create(&file, false) {
        Ok(key) => Some(tunneld_transport_ssh::host_key::public_line(&key)),
        Err(e) => {
            tracing::warn!(transport = %name, error = %e, "cannot read the ssh host key for GET /v1/config");
            None
        }
    }
}
