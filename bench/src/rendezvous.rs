//! tunneld's rendezvous frontend (TLS, HTTP/1.1): `CONNECT <tunnel>:80` to a named tunnel of
//! tunnelc over yamux, `CONNECT <id>:80` to a connection tunnelc keeps parked for a
//! rendezvous id over the `connect` transport, and node-rendezvous visitors (an HTTP request
//! whose Basic username is the id, matched to a parked connection) for the HTTPS table.

use crate::endpoint::Endpoint;
use crate::https::Public;
use crate::systems::{start_tunnelc, start_tunnelc_until, start_tunneld, Proc, System};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;

/// The rendezvous id tunnelc parks for (owned by the bench client).
pub const ID: &str = "bench-id";
const VISITOR: &str = "visitor";
const PASSWORD: &str = "visitor-password-0123456789";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `CONNECT bench:80`: tunnelc over yamux+TLS with a tunnel naming the frontend.
    Named,
    /// `CONNECT bench-id:80`: tunnelc over `connect` keeping 64 connections parked.
    Parked,
}

/// A visitor's Basic credentials (`user:password`).
pub fn basic(user: &str, password: &str) -> String {
    data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
}

/// tunneld with the rendezvous frontend, the yamux and connect transports, and tunnelc in
/// the way `via` says; the rendezvous address, its CA (PEM) and the processes.
async fn start(
    via: Via,
    bins: &Path,
    service: SocketAddr,
    dir: &Path,
) -> Result<(SocketAddr, String, Proc, Proc)> {
    let components = format!(
        "rendezvous: {{ max_parked_per_id: 64 }}\ntransports: {{ edge: {{ type: yamux, listen: 127.0.0.1:0, yamux: {{ max_streams: 4096 }} }}, park: {{ type: connect, listen: 127.0.0.1:0 }} }}\nfrontends: {{ rendezvous: {{ type: rendezvous, listen: 127.0.0.1:0, connect_access: {{ auth: basic, users: {{ {VISITOR}: {PASSWORD} }} }} }} }}\n"
    );
    let (server, addrs, ca) = start_tunneld(
        bins,
        dir,
        "",
        &components,
        &["transport=edge", "transport=park", "frontend=rendezvous"],
    )
    .await?;
    let (edge, park, rdv) = (&addrs[0], &addrs[1], addrs[2].parse()?);
    let client = match via {
        Via::Named => {
            let yaml = format!(
                "server: {edge}\nserver_name: localhost\ntls: {{ ca: {ca} }}\nyamux: {{ max_streams: 4096 }}\ntunnels:\n  bench:\n    local: {service}\n    frontend: rendezvous\n"
            );
            start_tunnelc(bins, dir, &yaml).await?.0
        }
        Via::Parked => {
            let conf = dir.join("tunneld.yaml");
            let out = tokio::process::Command::new(bins.join("tunneld"))
                .arg("--config")
                .arg(&conf)
                .args(["rendezvous", "add", ID, "--client", "bench"])
                .output()
                .await
                .context("tunneld rendezvous add")?;
            if !out.status.success() {
                bail!(
                    "tunneld rendezvous add: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let yaml = format!(
                "server: {park}\nserver_name: localhost\ntransport: connect\ntls: {{ ca: {ca} }}\nrendezvous:\n  {ID}: {{ local: \"{service}\", parked: 64 }}\n"
            );
            start_tunnelc_until(bins, dir, &yaml, &format!("rendezvous {ID}: parked"))
                .await?
                .0
        }
    };
    let ca_pem = std::fs::read_to_string(&ca).with_context(|| ca.clone())?;
    Ok((rdv, ca_pem, server, client))
}

/// A row of the main table: visitors that CONNECT through the rendezvous frontend.
pub async fn tunneld_connect(
    via: Via,
    bins: &Path,
    service: SocketAddr,
    dir: &Path,
) -> Result<System> {
    let (rdv, ca_pem, server, client) = start(via, bins, service, dir).await?;
    let (name, target) = match via {
        Via::Named => (
            "tunneld rendezvous CONNECT <tunnel> (yamux+tls)",
            "bench:80",
        ),
        Via::Parked => (
            "tunneld rendezvous CONNECT <id> (connect, parked)",
            "bench-id:80",
        ),
    };
    let endpoint = Endpoint::rendezvous(rdv, &ca_pem, target, &basic(VISITOR, PASSWORD))?;
    crate::load::wait_ready(&endpoint, crate::systems::START).await?;
    Ok(System {
        name: name.into(),
        endpoint,
        server: Some(server),
        client: Some(client),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}

/// For the HTTPS table: node-rendezvous visitors (`Authorization: Basic <id>:x`; the frontend
/// speaks HTTP/1.1 only), each connection matched to one of tunnelc's parked connections.
pub async fn visitors(bins: &Path, service: SocketAddr, dir: &Path) -> Result<(Public, String)> {
    let (rdv, _, server, client) = start(Via::Parked, bins, service, dir).await?;
    let public = Public::new(
        "tunneld rendezvous, node-rendezvous visitors (connect, parked)",
        rdv,
        vec![server, client],
    );
    Ok((public, format!("Authorization: Basic {}", basic(ID, "x"))))
}
