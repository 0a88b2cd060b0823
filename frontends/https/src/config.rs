//! Configuration of an `https-subdomain` frontend.

mod acme;

pub use acme::{AcmeConfig, ChallengeKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tunneld_core::duration::serde_human;
use tunneld_core::http2::H2Tuning;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public TLS listener.
    pub listen: SocketAddr,
    /// Tunnels are served at `<name>.<domain>`.
    pub domain: String,
    /// The port in public URLs, when visitors reach the listener through another port (a
    /// load balancer); defaults to the listener's own.
    #[serde(default)]
    pub public_port: Option<u16>,
    /// A certificate (typically a wildcard for `*.<domain>`) and its key. Without them the
    /// frontend issues a certificate per name from tunneld's own CA.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Certificates from an ACME CA (instead of tunneld's own CA) for the apex and each
    /// claimed name; not with `cert`.
    #[serde(default)]
    pub acme: Option<Box<AcmeConfig>>,
    /// The `h2-reverse` transport that shares this port: connections offering its ALPN id go
    /// to it, all others are visitors.
    #[serde(default)]
    pub transport: Option<String>,
    /// Accept original 2ptth initiators (ALPN `2ptth`, no credentials) as the upstream of one
    /// hostname.
    #[serde(default)]
    pub compat_2ptth: Option<Compat2ptth>,
    /// Names that several clients may serve together: new requests go round-robin to the
    /// connected members, and a member that drops is skipped.
    #[serde(default)]
    pub pools: BTreeMap<String, Vec<String>>,
    /// How long a name stays reserved for its owner after a disconnect.
    #[serde(default = "d2m", with = "serde_human")]
    pub reclaim_grace: Duration,
    /// Time for a visitor to send a request head (HTTP/1.1) and for the TLS handshake.
    #[serde(default = "d15s", with = "serde_human")]
    pub header_timeout: Duration,
    /// Time for a tunnel client to accept a stream or answer a request's head.
    #[serde(default = "d30s", with = "serde_human")]
    pub open_timeout: Duration,
    /// Open visitor connections at most.
    #[serde(default = "d4096")]
    pub max_connections: usize,
    /// HTTP/2 limits toward visitors.
    #[serde(default = "visitor_h2")]
    pub h2: H2Tuning,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Compat2ptth {
    /// Visitors with this Host are served by the connected 2ptth initiator.
    pub hostname: String,
}

fn d2m() -> Duration {
    Duration::from_secs(120)
}
fn d15s() -> Duration {
    Duration::from_secs(15)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}
fn d4096() -> usize {
    4096
}

/// Visitor-facing HTTP/2: windows for one browser, about 100 streams (what nginx and envoy
/// allow), the same flood budgets.
pub fn visitor_h2() -> H2Tuning {
    H2Tuning {
        stream_window: 1 << 20,
        // A visitor's own streams never grow (frontends/https/src/visitor.rs sets it
        // whatever the configuration says).
        stream_window_max: 0,
        window_growth_budget: 0,
        connection_window: 4 << 20,
        max_frame_size: 16 << 10,
        max_concurrent_streams: 128,
        ..H2Tuning::default()
    }
}

/// Whether `label` can be a DNS label of a tunnel name: 1-63 of `a-z`, `0-9`, `-`, not at
/// either end.
pub fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Config {
    /// Checks values serde cannot: returns (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let d = &self.domain;
        if d.is_empty()
            || d != &d.to_ascii_lowercase()
            || !d.split('.').all(|l| valid_label(l) || l == "_")
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
        if let Some(a) = &self.acme {
            if self.cert.is_some() {
                return Err((
                    "acme".into(),
                    "not with cert: a configured certificate already covers the names".into(),
                ));
            }
            a.validate()?;
        }
        for (name, members) in &self.pools {
            if !valid_label(name) {
                return Err((
                    format!("pools.{name}"),
                    "a pool name must be a DNS label (a-z, 0-9, -)".into(),
                ));
            }
            if members.is_empty() {
                return Err((
                    format!("pools.{name}"),
                    "list at least one client id".into(),
                ));
            }
        }
        if let Some(c) = &self.compat_2ptth {
            if c.hostname.is_empty() || c.hostname != c.hostname.to_ascii_lowercase() {
                return Err((
                    "compat_2ptth.hostname".into(),
                    "must be a lower-case host name".into(),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "must be at least 1".into()));
        }
        self.h2.validate().map_err(|e| ("h2".into(), e.to_string()))
    }
}
