//! Configuration of the `connect` transport.

use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TLS listener for hidden servers.
    pub listen: SocketAddr,
    /// Connections open at once (parked ones included); more are closed at once.
    #[serde(default = "d4096")]
    pub max_connections: usize,
}

fn d4096() -> usize {
    4096
}

impl Config {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        Ok(())
    }
}
