//! The provisioning API's JSON shapes, shared by tunneld and `tunnelc setup`.

use serde::{Deserialize, Serialize};

/// `POST /v1/tunnels`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The public name (a DNS label); a readable `<mood>-<color>-<animal>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http`, `https` and/or `tcp` (default `https`).
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// One public endpoint of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `http`, `https` or `tcp`.
    pub protocol: String,
    /// Where visitors go, e.g. `https://calm-blue-otter.localhost:8444` or `tcp://host:20001`.
    pub url: String,
    /// The tunnel name tunnelc's hello uses for it.
    pub tunnel: String,
    /// The tunnel type in tunnelc's config (`http`, `tls`, `tcp`).
    pub kind: String,
}

/// A certificate signed for a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub serial: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: u64,
}

/// A provisioned tunnel as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    pub name: String,
    /// `<name>.<domain>`: the name certificates are signed for.
    pub fqdn: String,
    pub owner: String,
    pub protocols: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// `online` (its client is connected) or `offline`.
    pub state: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub certificates: Vec<CertInfo>,
}

/// `POST /v1/tunnels/<name>/certificate`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedCert {
    pub certificate: String,
    pub ca: String,
    pub serial: String,
    pub names: Vec<String>,
    pub not_after: u64,
}

/// `GET /v1/config`: what a client needs before it has a tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub domain: String,
    /// The transport `tunnelc setup` configures by default: `yamux`, `h2-reverse` or `ssh`.
    pub transport: String,
    pub transport_port: u16,
    /// Host for the transport, when it differs from the API's.
    pub transport_host: Option<String>,
    /// Whether the transport's certificate is signed by tunneld's CA (`/cacert`).
    pub transport_local_ca: bool,
    pub protocols: Vec<String>,
    pub version: String,
    /// `host:port` of tunneld's `ssh` transport (stock OpenSSH clients), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_endpoint: Option<String>,
    /// That transport's host key, `ssh-ed25519 AAAA...` (a `known_hosts` line without the
    /// host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
}
