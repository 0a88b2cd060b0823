//! `inspect:`: tunnelc's request inspector (the last requests of its http tunnels, as web
//! pages with replay), off unless `address` is set (or `--inspect ADDR`).

use serde::Deserialize;
use std::net::SocketAddr;

/// The address `tunnelc http` serves the inspector at when nothing else says (the next
/// nine ports are tried when it is taken, as ngrok does).
pub const QUICK_DEFAULT: &str = "127.0.0.1:4040";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InspectConfig {
    /// Where to serve the inspector: a loopback address (it shows bodies and cookies).
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// Requests kept, the oldest dropped first.
    #[serde(default = "d100")]
    pub max_requests: usize,
    /// Bytes kept of each request and response body (the rest is counted, not kept).
    #[serde(default = "d64k")]
    pub max_body: usize,
    /// Bytes kept in all (heads and bodies); the oldest requests are dropped to stay under.
    #[serde(default = "d16m")]
    pub max_memory: usize,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            address: None,
            max_requests: d100(),
            max_body: d64k(),
            max_memory: d16m(),
        }
    }
}

fn d100() -> usize {
    100
}
fn d64k() -> usize {
    64 << 10
}
fn d16m() -> usize {
    16 << 20
}

impl InspectConfig {
    pub fn check(&self, errors: &mut Vec<String>) {
        if let Some(a) = self.address {
            if !a.ip().is_loopback() {
                errors.push(format!("inspect.address: {a} is not a loopback address; the inspector shows request bodies and cookies to whoever reaches it"));
            }
        }
        if !(1..=100_000).contains(&self.max_requests) {
            errors.push("inspect.max_requests: must be between 1 and 100000".into());
        }
        if self.max_body > 16 << 20 {
            errors.push("inspect.max_body: at most 16777216 bytes".into());
        }
        if !(64 << 10..=4 << 30).contains(&self.max_memory) {
            errors.push("inspect.max_memory: must be between 65536 and 4294967296 bytes".into());
        } else if self.max_memory < self.max_body.saturating_mul(2) {
            errors.push("inspect.max_memory: must hold at least one request and response body (2 × inspect.max_body)".into());
        }
    }

    pub fn caps(&self) -> crate::inspect::store::Caps {
        crate::inspect::store::Caps {
            max_requests: self.max_requests,
            max_body: self.max_body,
            max_memory: self.max_memory,
        }
    }
}
