//! Configuration of a `ports` frontend.

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tunneld_core::duration::serde_human;

/// An inclusive range of ports, written `20000-20999` (or a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port number from 1 to 65535"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(format!("range `{s}` ends before it starts"));
        }
        Ok(PortRange { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Port(u16),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Port(p) => p.to_string().parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the tunnel ports are bound on.
    #[serde(default = "default_bind")]
    pub bind: IpAddr,
    /// Ports handed out to tunnels.
    pub range: PortRange,
    /// Host name shown in endpoints (`tcp://HOST:PORT`); defaults to the bind address.
    #[serde(default)]
    pub public_host: Option<String>,
    /// How long a released port stays reserved for the client that held it.
    #[serde(default = "default_grace", with = "serde_human")]
    pub reclaim_grace: Duration,
    /// How long a visitor waits for the tunnel client to answer.
    #[serde(default = "default_open_timeout", with = "serde_human")]
    pub open_timeout: Duration,
    /// Open visitor connections per port; more are closed at once.
    #[serde(default = "default_max_conns")]
    pub max_connections_per_port: usize,
}

fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_open_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_conns() -> usize {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            "20000-20010".parse::<PortRange>(),
            Ok(PortRange {
                first: 20000,
                last: 20010
            })
        );
        assert_eq!("8080".parse::<PortRange>().map(|r| r.len()), Ok(1));
        assert!("9-1"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("ends before"));
        assert!("0-10"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("not a port"));
        assert!("x".parse::<PortRange>().is_err());
    }
}
