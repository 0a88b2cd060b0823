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
    /// `active`, `revoked`, `expired` or `used` (a spent single-use token) at `now`.
    pub fn state(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else if self.single_use && self.used_at.is_some() {
            "used"
        } else {
            "active"
        }
    }

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
    /// How its protocols are served (the API shape that made it).
    #[serde(default)]
    pub flavour: TunnelFlavour,
    /// Hex SHA-256 of the tunnel's secret id (pipe2me-shape tunnels: the `ID=` of `POST
    /// /tunnels/<token>`, which the tunnel's routes take in place of a token).
    #[serde(default)]
    pub id_digest: Option<String>,
}

/// How a provisioned tunnel's protocols are leased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelFlavour {
    /// The native API: `http` and `https` as the name `<name>.<domain>` on the names
    /// frontend, `tcp` as a port on the ports frontend.
    #[default]
    Native,
    /// pipe2me's API: one port on the ports frontend per protocol (raw TCP), whatever the
    /// protocol, each leased as a `tcp` tunnel named `<name>-<protocol>`.
    Pipe2me,
}

impl TunnelFlavour {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelFlavour::Native => "native",
            TunnelFlavour::Pipe2me => "pipe2me",
        }
    }

    /// The stored form (`None` for native, so older rows read as native).
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("native") => Some(TunnelFlavour::Native),
            Some("pipe2me") => Some(TunnelFlavour::Pipe2me),
            Some(_) => None,
        }
    }
}

/// An SSH public key that authenticates sessions of the `ssh` transport: a client's key
/// (`tunneld token add --ssh-key`) or a key uploaded for one provisioned tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKeyRecord {
    /// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// `<algorithm> <base64 blob>`, without options or comment.
    pub key: String,
    pub comment: Option<String>,
    /// The client id (a stored token's name) the key authenticates as.
    pub client: String,
    /// The provisioned tunnel the key is bound to: it may then bind only that tunnel's routes.
    pub tunnel: Option<String>,
    pub created_at: u64,
}

impl SshKeyRecord {
    /// The key's algorithm (the first word of `key`).
    pub fn algorithm(&self) -> &str {
        self.key.split(' ').next().unwrap_or_default()
    }
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
