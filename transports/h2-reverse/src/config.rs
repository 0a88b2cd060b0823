//! Configuration of the h2-reverse transport (`transports.<name>` with `type: h2-reverse`).

use serde::Deserialize;
use std::net::SocketAddr;
use tunneld_core::http2::H2Tuning;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Its own TLS listener. Omit it when an `https-subdomain` frontend shares its port with
    /// this transport (`frontends.<name>.transport`); at least one of the two is needed.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTP/2 windows, frame size and flood limits of the tunnel connections.
    #[serde(default)]
    pub h2: H2Tuning,
}

impl Config {
    /// Checks values serde cannot: returns (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.h2
            .validate()
            .map_err(|e| ("h2".to_string(), e.to_string()))
    }
}
