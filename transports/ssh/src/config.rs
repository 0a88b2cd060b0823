//! Configuration of the ssh transport (`transports.<name>` with `type: ssh`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where stock OpenSSH clients connect (`ssh -p PORT host`).
    pub listen: SocketAddr,
    /// The host key (OpenSSH private key format). Absent: `<state_dir>/ssh/host_ed25519_key`,
    /// made on first start.
    #[serde(default)]
    pub host_key: Option<PathBuf>,
    /// Keepalive requests are sent after this long without a packet from the client...
    #[serde(default = "d10s", with = "serde_human")]
    pub keepalive_interval: Duration,
    /// ...and the session ends after this many go unanswered (10 s x 2: a dead client is
    /// noticed within 30 s, its routes held for the frontends' grace period).
    #[serde(default = "two")]
    pub keepalive_max: usize,
    /// Remote forwards (`-R`) one SSH session may hold at once.
    #[serde(default = "sixteen")]
    pub max_forwards: usize,
    /// The SSH flow-control window of each channel (visitor connection), in bytes.
    #[serde(default = "window")]
    pub window_size: u32,
    /// Bytes from the client one visitor may have waiting unread before it is cut (the SSH
    /// library grants window as data arrives, so a visitor that stops reading is cut rather
    /// than allowed to stall the client's other forwards).
    #[serde(default = "backlog")]
    pub max_backlog: usize,
    /// The same for all visitors of one SSH session together.
    #[serde(default = "session_backlog")]
    pub max_session_backlog: usize,
}

fn backlog() -> usize {
    8 << 20
}
fn session_backlog() -> usize {
    64 << 20
}

fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn two() -> usize {
    2
}
fn sixteen() -> usize {
    16
}
fn window() -> u32 {
    1 << 21
}

impl Config {
    /// Checks values serde cannot: returns (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.keepalive_interval < Duration::from_secs(1) {
            return Err(("keepalive_interval".into(), "must be at least 1s".into()));
        }
        if !(1..=20).contains(&self.keepalive_max) {
            return Err(("keepalive_max".into(), "must be between 1 and 20".into()));
        }
        if !(1..=tunneld_core::hub::MAX_TUNNELS_PER_SESSION).contains(&self.max_forwards) {
            return Err((
                "max_forwards".into(),
                format!(
                    "must be between 1 and {}",
                    tunneld_core::hub::MAX_TUNNELS_PER_SESSION
                ),
            ));
        }
        if !(32 * 1024..=16 * 1024 * 1024).contains(&self.window_size) {
            return Err((
                "window_size".into(),
                "must be between 32768 and 16777216 bytes".into(),
            ));
        }
        if self.max_backlog < 2 * self.window_size as usize {
            return Err((
                "max_backlog".into(),
                "must be at least twice window_size".into(),
            ));
        }
        if self.max_session_backlog < self.max_backlog {
            return Err((
                "max_session_backlog".into(),
                "must be at least max_backlog".into(),
            ));
        }
        Ok(())
    }
}
