//! Checks that need the whole resolved configuration and fail at start otherwise: two
//! listeners on one address (unless a frontend shares a transport's port on purpose, which
//! has no address of its own), a listener inside a ports frontend's range, and files that
//! do not exist or cannot be read. `--check` reports them with every other error.

use super::{FrontendConfig, ServerConfig, TransportConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every listening address with its key path.
fn listeners(cfg: &ServerConfig) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for (name, t) in &cfg.transports {
        let addr = match t {
            TransportConfig::Yamux(c) => Some(c.listen),
            TransportConfig::Connect(c) => Some(c.listen),
            TransportConfig::H2Reverse(c) => c.listen,
            TransportConfig::Websocket(c) => Some(c.listen),
            TransportConfig::Ssh(c) => Some(c.listen),
        };
        if let Some(a) = addr {
            out.push((format!("transports.{name}.listen"), a));
        }
    }
    for (name, f) in &cfg.frontends {
        match f {
            FrontendConfig::Https(c) => out.push((format!("frontends.{name}.listen"), c.listen)),
            FrontendConfig::Rendezvous(c) => {
                out.push((format!("frontends.{name}.listen"), c.listen))
            }
            FrontendConfig::Ports(_) => {}
        }
    }
    if let Some(a) = &cfg.admin {
        out.push(("admin.listen".into(), a.listen));
    }
    if let Some(c) = &cfg.control {
        out.push(("control.listen".into(), c.listen));
        if let Some(w) = c.web_listen {
            out.push(("control.web_listen".into(), w));
        }
    }
    out
}

/// Whether two listeners would take the same socket (port 0 never clashes).
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Listener clashes and unreadable files, each naming its key path.
pub(super) fn check(cfg: &ServerConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let all = listeners(cfg);
    for (i, (ka, a)) in all.iter().enumerate() {
        for (kb, b) in &all[i + 1..] {
            if clash(a, b) {
                errors.push(format!("{kb}: {b} is also {ka} ({a}): give each listener its own port (a frontend shares a transport's port with `transport:`, without a listen of the transport's own)"));
            }
        }
        for (name, f) in &cfg.frontends {
            if let FrontendConfig::Ports(p) = f {
                let ip_overlaps =
                    a.ip() == p.bind || a.ip().is_unspecified() || p.bind.is_unspecified();
                if ip_overlaps && a.port() != 0 && p.range.contains(a.port()) {
                    errors.push(format!(
                        "{ka}: port {} is inside frontends.{name}.range, which hands its ports to tunnels",
                        a.port()
                    ));
                }
            }
        }
    }
    for (key, path) in files(cfg) {
        if let Err(e) = std::fs::File::open(&path) {
            errors.push(format!("{key}: cannot read {}: {e}", path.display()));
        }
    }
    errors
}

/// Files the configuration names, with their key paths.
fn files(cfg: &ServerConfig) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut push = |k: String, p: &Option<PathBuf>| {
        if let Some(p) = p {
            out.push((k, p.clone()));
        }
    };
    push("tls.cert".into(), &cfg.tls.cert);
    push("tls.key".into(), &cfg.tls.key);
    push("auth.client_ca".into(), &cfg.auth.client_ca);
    for (name, t) in &cfg.transports {
        match t {
            TransportConfig::Websocket(c) => {
                push(format!("transports.{name}.cert"), &c.cert);
                push(format!("transports.{name}.key"), &c.key);
            }
            TransportConfig::Ssh(c) => push(format!("transports.{name}.host_key"), &c.host_key),
            _ => {}
        }
    }
    for (name, f) in &cfg.frontends {
        if let FrontendConfig::Https(c) = f {
            push(format!("frontends.{name}.cert"), &c.cert);
            push(format!("frontends.{name}.key"), &c.key);
            if let Some(a) = &c.acme {
                push(format!("frontends.{name}.acme.ca"), &a.ca);
            }
        }
    }
    out
}
