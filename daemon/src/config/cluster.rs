//! `cluster:`: several tunneld nodes sharing one routing table in Redis, visitors forwarded
//! between nodes over an mTLS link (docs/operations.md#cluster). Absent: a single tunneld,
//! nothing extra started.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: a DNS label (letters, digits, `-`). It is
    /// the name in this node's link certificate and the `node` of `GET /cluster`.
    pub node: String,
    /// The shared state: `redis://[user:password@]host[:port][/db]`.
    pub redis: String,
    /// Prefix of every key and channel, so several clusters can share one Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a route or a node entry lives unless its node renews it (every third of
    /// this): a node that dies loses its routes this long after, on its own.
    #[serde(default = "d10s", with = "serde_human")]
    pub lease_ttl: Duration,
    /// How often the node reads the whole routing table again (changes also arrive at once
    /// by pub/sub).
    #[serde(default = "d1s", with = "serde_human")]
    pub sync_interval: Duration,
    /// Where this node takes links from the other nodes (mTLS).
    pub link: SocketAddr,
    /// The address other nodes dial for this node's link; `link` when unset (which must then
    /// not be a wildcard address).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// A directory with the cluster's CA (`ca.pem`, `ca.key`), the same on every node: each
    /// node issues its own link certificate from it at start.
    pub ca: PathBuf,
}

fn default_prefix() -> String {
    "tunneld".into()
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d1s() -> Duration {
    Duration::from_secs(1)
}

impl ClusterConfig {
    /// Checks the values; each error names its key under `cluster.`.
    pub fn check(&self, errors: &mut Vec<String>) {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label(&self.node) {
            errors.push(format!(
                "cluster.node: `{}` is not a DNS label (1-63 letters, digits or `-`, not starting or ending with `-`)",
                self.node
            ));
        }
        if !self.redis.starts_with("redis://") && !self.redis.starts_with("redis+unix://") {
            errors.push(format!(
                "cluster.redis: `{}` is not a redis:// or redis+unix:// URL",
                crate::config::cluster::redact(&self.redis)
            ));
        } else if let Err(e) = redis::Client::open(self.redis.as_str()) {
            errors.push(format!("cluster.redis: {e}"));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            errors.push("cluster.prefix: 1-64 letters, digits, `-`, `_` or `.`".into());
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(600) {
            errors.push("cluster.lease_ttl: between 1s and 10m".into());
        }
        if self.sync_interval < Duration::from_millis(100) || self.sync_interval > self.lease_ttl {
            errors.push("cluster.sync_interval: between 100ms and cluster.lease_ttl".into());
        }
        if self.advertise.is_none() && self.link.ip().is_unspecified() {
            errors.push(format!(
                "cluster.advertise: required when cluster.link ({}) is a wildcard address: other nodes need an address to dial",
                self.link
            ));
        }
    }

    /// The address other nodes dial.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.link)
    }
}

/// `url` with its password hidden (user info and `pass`/`password` query values), for errors
/// and logs: the state store's, which opens the same URL.
pub use tunneld_state::redis_store::redact;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> ClusterConfig {
        serde_yaml_ng::from_str(yaml).expect("parses")
    }

    #[test]
    fn checks_name_every_key() {
        let good = cfg("node: n1\nredis: redis://127.0.0.1:6379\nlink: 127.0.0.1:7100\nca: ca\n");
        let mut e = Vec::new();
        good.check(&mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(good.lease_ttl, Duration::from_secs(10));
        let bad = cfg("node: -x\nredis: http://h\nprefix: 'a b'\nlease_ttl: 100ms\nsync_interval: 1h\nlink: 0.0.0.0:7100\nca: ca\n");
        let mut e = Vec::new();
        bad.check(&mut e);
        for key in [
            "cluster.node",
            "cluster.redis",
            "cluster.prefix",
            "cluster.lease_ttl",
            "cluster.sync_interval",
            "cluster.advertise",
        ] {
            assert!(e.iter().any(|l| l.starts_with(key)), "{key} in {e:?}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert!(!redact("redis+unix:///s?pass=secret").contains("secret"));
    }
}
