//! The records the state store keeps.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A token made with `tunneld token add`. Only the SHA-256 of the token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's name, which is also the client id its sessions get.
    pub name: String,
    /// Hex SHA-256 of the token.
    pub digest: String,
    pub max_ports: Option<u32>,
    pub max_names: Option<u32>,
    /// Unix seconds after which the token is refused and its sessions are cut.
    pub expires_at: Option<u64>,
    /// May create one tunnel only.
    pub single_use: bool,
    /// When a single-use token was used.
    pub used_at: Option<u64>,
    /// Transports (by component name) its sessions may use; all when `None`.
    pub transports: Option<Vec<String>>,
    pub revoked_at: Option<u64>,
    pub created_at: u64,
}

impl TokenRecord {
    /// Why the token cannot be used at `now`, if it cannot.
    pub fn refusal(&self, now: u64) -> Option<String> {
        if let Some(at) = self.revoked_at {
            return Some(format!(
                "token `{}` was revoked at {}",
                self.name,
                crate::rfc3339(at)
            ));
        }
        match self.expires_at {
            Some(at) if at <= now => Some(format!(
                "token `{}` expired at {} (lifespan)",
                self.name,
                crate::rfc3339(at)
            )),
            _ => None,
        }
    }
}

/// A tunnel made through the provisioning API: a name leased on the name frontend and one
/// port per `tcp` protocol on the ports frontend, kept while the tunnel exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    /// The public name (a DNS label): `<name>.<domain>`.
    pub name: String,
    /// The owning token's name (the client id).
    pub owner: String,
    /// `http`, `https` and/or `tcp`.
    pub protocols: Vec<String>,
    /// Leased public port per protocol that has one.
    pub ports: BTreeMap<String, u16>,
    pub created_at: u64,
    /// When the leases lapse unless renewed.
    pub expires_at: Option<u64>,
}

/// A certificate tunneld's CA signed for a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Hex serial number.
    pub serial: String,
    pub tunnel: String,
    pub owner: String,
    pub names: Vec<String>,
    pub not_after: u64,
    pub pem: String,
    pub created_at: u64,
}

/// A rendezvous id and its TOTP secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RendezvousRecord {
    pub id: String,
    /// Base32 TOTP secret.
    pub secret: String,
    pub step: u64,
    pub client: Option<String>,
    pub created: u64,
}
