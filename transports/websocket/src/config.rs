//! Configuration of the websocket transport (`transports.<name>` with `type: websocket`).

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tunneld_core::auth::Secret;
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The one port for tunnel creation and visitors (plain HTTP unless `cert`/`key` are set).
    pub listen: SocketAddr,
    /// The server's own name: `GET /create-tpot` is served at this Host, visitors at
    /// `<name>.<domain>`.
    pub domain: String,
    /// The `https-subdomain` frontend whose names this port serves: tunnels created here
    /// claim their names there, so a tunnel is reachable on both ports.
    pub frontend: String,
    /// A certificate and key to accept TLS on this port itself (otherwise a proxy in front
    /// terminates TLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The TPoT key (at least 32 characters) original TPoT clients authenticate with
    /// (`Authorization: TPoT-1`). Our tunnelc can use it or a token.
    #[serde(default)]
    pub auth_key: Option<Secret>,
    /// Let TPoT clients create tunnels without a key when `auth_key` is not set (TPoT's own
    /// default; anyone who can reach the port can then publish a site).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed (addresses or
    /// CIDR blocks). From anyone else the headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Largest WebSocket message accepted.
    #[serde(default = "d1mib")]
    pub max_message: usize,
    /// Conversations one session may have open at once.
    #[serde(default = "d2048")]
    pub max_conversations: usize,
    /// Open connections on the port at most (visitors and tunnel clients together).
    #[serde(default = "d4096")]
    pub max_connections: usize,
    /// Time for a request head (and the TLS handshake when this port does TLS).
    #[serde(default = "d15s", with = "serde_human")]
    pub header_timeout: Duration,
    /// A tunnel client silent this long (no message, no ping) is dropped.
    #[serde(default = "d30s", with = "serde_human")]
    pub idle_timeout: Duration,
    /// Time for a tunnel client to answer a new conversation.
    #[serde(default = "d30s", with = "serde_human")]
    pub open_timeout: Duration,
}

fn d2048() -> usize {
    2048
}
fn d1mib() -> usize {
    1 << 20
}
fn d4096() -> usize {
    4096
}
fn d15s() -> Duration {
    Duration::from_secs(15)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}

/// An address block: `10.0.0.0/8`, `::1`, `127.0.0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Why an address block was refused (the text names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or CIDR block")]
    NotAnAddress(String),
    #[error("`{block}`: the prefix length must be 0-{max}")]
    BadPrefix { block: String, max: u8 },
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| CidrError::BadPrefix {
                    block: s.to_string(),
                    max,
                })?,
        };
        Ok(Cidr { addr, bits })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// TPoT's subdomain rule: lower-cased, `^[a-z0-9-]{1,24}$`, not starting with `-`.
pub fn valid_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=24).contains(&b.len())
        && b[0] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Config {
    /// Checks values serde cannot: returns (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let d = &self.domain;
        if d.is_empty()
            || d != &d.to_ascii_lowercase()
            || d.contains(':')
            || !d
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
        {
            return Err((
                "domain".into(),
                format!("`{d}` is not a lower-case DNS name"),
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(("key".into(), "required when cert is set".into())),
            (None, Some(_)) => return Err(("cert".into(), "required when key is set".into())),
            _ => {}
        }
        if let Some(k) = &self.auth_key {
            if k.0.chars().count() < crate::tpot_auth::MIN_KEY_LEN {
                return Err((
                    "auth_key".into(),
                    format!(
                        "must be at least {} characters",
                        crate::tpot_auth::MIN_KEY_LEN
                    ),
                ));
            }
        }
        if !(1024..=16 << 20).contains(&self.max_message) {
            return Err((
                "max_message".into(),
                "must be between 1024 and 16777216 bytes".into(),
            ));
        }
        if !(1..=65535).contains(&self.max_conversations) {
            return Err((
                "max_conversations".into(),
                "must be between 1 and 65535".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_and_subdomains() {
        let c: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let one: Cidr = "::1".parse().expect("v6");
        assert!(one.contains("::1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("1.2.3.4".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!(valid_subdomain("my-app1"));
        assert!(!valid_subdomain("-x"));
        assert!(!valid_subdomain("Upper"));
        assert!(!valid_subdomain(&"a".repeat(25)));
        assert!(!valid_subdomain("a.b"));
    }
}
