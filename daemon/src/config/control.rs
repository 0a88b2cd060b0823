//! The `control:` section: the provisioning API and the plain web port.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// HTTPS listener (tunneld's own certificate): the provisioning API and `GET /cacert`.
    pub listen: SocketAddr,
    /// Plain-HTTP listener: `GET /cacert`, and a 302 from `<name>.<domain>` to the tunnel's
    /// HTTPS endpoint.
    #[serde(default)]
    pub web_listen: Option<SocketAddr>,
    /// The https-subdomain frontend that serves `http` and `https` tunnels.
    pub names_frontend: String,
    /// The ports frontend that serves `tcp` tunnels.
    #[serde(default)]
    pub ports_frontend: Option<String>,
    /// The transport `tunnelc setup` configures by default (yamux, h2-reverse or ssh; with
    /// an ssh transport anywhere in the config, `tunnelc setup --transport ssh` works too).
    pub transport: String,
    /// Host clients use to reach the transport; defaults to the host of the API URL they used.
    #[serde(default)]
    pub public_host: Option<String>,
    /// `host:port` of the `ssh` transport as clients reach it, for the `TUNNEL=ssh://...`
    /// line of pipe2me-shape answers. Default: the bound address of the first transport of
    /// type `ssh` (its host replaced by `public_host`, else the names frontend's domain, when
    /// bound to all addresses).
    #[serde(default)]
    pub ssh_endpoint: Option<String>,
    /// A tunnel's leases lapse unless renewed within this (never past its token's expiry).
    #[serde(default = "d30d", with = "serde_human")]
    pub lease: Duration,
    /// Lifetime of certificates signed for tunnels.
    #[serde(default = "d90d", with = "serde_human")]
    pub certificate_lifetime: Duration,
    /// Tunnels one token may create when it sets no `max_names`.
    #[serde(default = "d16")]
    pub default_max_tunnels: u32,
    /// Connections open at once on each listener.
    #[serde(default = "d256")]
    pub max_connections: usize,
    /// Deadline for the TLS handshake and each request head.
    #[serde(default = "d10s", with = "serde_human")]
    pub header_timeout: Duration,
}

fn d30d() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn d90d() -> Duration {
    Duration::from_secs(90 * 86_400)
}
fn d16() -> u32 {
    16
}
fn d256() -> usize {
    256
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}

impl ControlConfig {
    /// Checks of values alone: `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.lease < Duration::from_secs(60) {
            return Err(("lease", "must be at least 1m".into()));
        }
        if self.certificate_lifetime < Duration::from_secs(3600) {
            return Err(("certificate_lifetime", "must be at least 1h".into()));
        }
        if self.certificate_lifetime > Duration::from_secs(825 * 86_400) {
            return Err(("certificate_lifetime", "must be at most 825d".into()));
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if let Some(e) = &self.ssh_endpoint {
            let port = e.rsplit_once(':').filter(|(h, _)| !h.is_empty());
            if !port.is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0)) {
                return Err(("ssh_endpoint", format!("`{e}` is not host:port")));
            }
        }
        if self.default_max_tunnels == 0 {
            return Err(("default_max_tunnels", "must be at least 1".into()));
        }
        Ok(())
    }
}
