//! Configuration of the `rendezvous` frontend.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tunneld_core::auth::{token_digest, Secret};
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTPS listener for visitors.
    pub listen: SocketAddr,
    /// Host shown in endpoints; defaults to the listen address.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Also accept hidden servers' `CONNECT uuid:<ID>` here (node-rendezvous used one port).
    #[serde(default = "yes")]
    pub parking: bool,
    /// How long a visitor waits for a parked connection of its id.
    #[serde(default = "d5s", with = "serde_human")]
    pub visitor_wait: Duration,
    /// Deadline for each request head.
    #[serde(default = "d15s", with = "serde_human")]
    pub header_timeout: Duration,
    /// How long a CONNECT visitor waits for the tunnel client to answer.
    #[serde(default = "d10s", with = "serde_human")]
    pub open_timeout: Duration,
    /// Connections open at once on the listener (parked ones included).
    #[serde(default = "d4096")]
    pub max_connections: usize,
    /// After a client disconnects, its tunnel names stay reserved for it this long.
    #[serde(default = "d60s", with = "serde_human")]
    pub reclaim_grace: Duration,
    /// Who may use `CONNECT <tunnel>:<port>`.
    #[serde(default)]
    pub connect_access: ConnectAccess,
}

/// Visitor credentials for `CONNECT <tunnel>:<port>`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectAccess {
    #[serde(default)]
    pub auth: AccessMode,
    /// `auth: basic`: user -> password (or `sha256:<hex>` of it).
    #[serde(default)]
    pub users: BTreeMap<String, Secret>,
    /// `auth: token`: tunnel name -> the token its visitors send as
    /// `Proxy-Authorization: Bearer <token>` (or `sha256:<hex>`).
    #[serde(default)]
    pub tokens: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone who knows a tunnel's name.
    None,
    /// `Proxy-Authorization: Basic` with a user from `users`.
    #[default]
    Basic,
    /// `Proxy-Authorization: Bearer` with the tunnel's token from `tokens`.
    Token,
}

fn yes() -> bool {
    true
}
fn d5s() -> Duration {
    Duration::from_secs(5)
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d15s() -> Duration {
    Duration::from_secs(15)
}
fn d60s() -> Duration {
    Duration::from_secs(60)
}
fn d4096() -> usize {
    4096
}

impl Config {
    /// Checks values; the error names the key (relative to the component).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "must be at least 1".into()));
        }
        if self.visitor_wait > Duration::from_secs(60) {
            return Err(("visitor_wait".into(), "must be at most 60s".into()));
        }
        for (key, map) in [
            ("connect_access.users", &self.connect_access.users),
            ("connect_access.tokens", &self.connect_access.tokens),
        ] {
            for (name, secret) in map {
                token_digest(&secret.0).map_err(|e| (format!("{key}.{name}"), e.to_string()))?;
            }
        }
        match self.connect_access.auth {
            AccessMode::Basic if self.connect_access.users.is_empty() => Err((
                "connect_access.users".into(),
                "auth: basic needs at least one user (or set auth: none)".into(),
            )),
            AccessMode::Token if self.connect_access.tokens.is_empty() => Err((
                "connect_access.tokens".into(),
                "auth: token needs a token for at least one tunnel name".into(),
            )),
            _ => Ok(()),
        }
    }
}
