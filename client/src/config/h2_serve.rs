//! tunnelc's HTTP/2 server settings for the h2-reverse transport (`h2:`).

use serde::Deserialize;

/// tunnelc's HTTP/2 server on an h2-reverse link (`h2:`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct H2Serve {
    /// Streams (visitors) tunnelc serves at once (its SETTINGS_MAX_CONCURRENT_STREAMS);
    /// sent in the hello, so tunneld opens no more (it refuses the next visitor itself).
    #[serde(default = "d4096u32")]
    pub max_streams: u32,
}

impl Default for H2Serve {
    fn default() -> Self {
        Self {
            max_streams: d4096u32(),
        }
    }
}

fn d4096u32() -> u32 {
    4096
}

impl H2Serve {
    /// The error names the key below `h2.`.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65535).contains(&self.max_streams) {
            return Err(format!(
                "max_streams: {} is outside 1..=65535",
                self.max_streams
            ));
        }
        Ok(())
    }
}
