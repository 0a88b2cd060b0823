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
    /// The largest SSH flow-control window of a channel (visitor connection), in bytes: what
    /// the client may still send a visitor and what waits unread for it stay within this
    /// (the visitor's reader grants the window as it reads, out of the session's budget).
    #[serde(default = "window")]
    pub window_size: u32,
    /// Bytes from the client one visitor may have waiting unread before it is cut: only a
    /// client that ignores its window sends more than `window_size` ahead.
    #[serde(default = "backlog")]
    pub max_backlog: usize,
    /// The window budget all visitors of one SSH session share: each channel opens with
    /// 64 KiB (`channel_io::FLOOR`) and grows toward `window_size` out of it.
    #[serde(default = "session_backlog")]
    pub max_session_backlog: usize,
    /// The ciphers offered to clients. The client picks the first of its own list that is
    /// here: stock OpenSSH, by default, `chacha20-poly1305@openssh.com` whenever it is
    /// offered, so listing only the AES-GCM ones makes unchanged OpenSSH command lines take
    /// AES-GCM (about 1.9x the throughput up and 1.6x down on CPUs with AES instructions;
    /// see docs/transports.md) at the price of clients without AES-GCM (Dropbear's default
    /// build, paramiko).
    #[serde(default = "default_ciphers")]
    pub ciphers: Vec<String>,
    /// Keys are exchanged anew after this many bytes either way (and after an hour), like
    /// OpenSSH's `RekeyLimit`: 1 MiB to 1 GiB.
    #[serde(default = "rekey_limit")]
    pub rekey_limit: usize,
}

/// The most `rekey_limit` may be: russh's bound, RFC 4253's advice for the ciphers here.
pub const MAX_REKEY_LIMIT: usize = 1 << 30;

/// The ciphers `ciphers` may name: the AEAD ones and AES-CTR (with an SHA-2 HMAC, russh's
/// default MACs).
pub const KNOWN_CIPHERS: [&str; 6] = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// Every known cipher, so any client finds one it speaks (the order is the client's to
/// choose).
fn default_ciphers() -> Vec<String> {
    KNOWN_CIPHERS.iter().map(|c| c.to_string()).collect()
}

fn rekey_limit() -> usize {
    MAX_REKEY_LIMIT
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
        if !((1 << 20)..=MAX_REKEY_LIMIT).contains(&self.rekey_limit) {
            return Err((
                "rekey_limit".into(),
                "must be between 1048576 and 1073741824 bytes".into(),
            ));
        }
        if self.ciphers.is_empty() {
            return Err(("ciphers".into(), "must name at least one cipher".into()));
        }
        for (i, c) in self.ciphers.iter().enumerate() {
            if !KNOWN_CIPHERS.contains(&c.as_str()) {
                return Err((
                    format!("ciphers[{i}]"),
                    format!("unknown cipher `{c}`; known: {}", KNOWN_CIPHERS.join(", ")),
                ));
            }
            if self.ciphers[..i].contains(c) {
                return Err((format!("ciphers[{i}]"), format!("`{c}` is listed twice")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ciphers(ciphers: &[&str]) -> Config {
        Config {
            listen: ([127, 0, 0, 1], 2222).into(),
            host_key: None,
            keepalive_interval: d10s(),
            keepalive_max: two(),
            max_forwards: sixteen(),
            window_size: window(),
            max_backlog: backlog(),
            max_session_backlog: session_backlog(),
            ciphers: ciphers.iter().map(|c| c.to_string()).collect(),
            rekey_limit: rekey_limit(),
        }
    }

    #[test]
    fn every_known_cipher_is_russh_s() {
        for c in KNOWN_CIPHERS {
            assert!(russh::cipher::Name::try_from(c).is_ok(), "{c}");
        }
        assert_eq!(with_ciphers(&KNOWN_CIPHERS).validate(), Ok(()));
    }

    #[test]
    fn a_rekey_limit_out_of_range_is_refused_by_key() {
        for bad in [0, (1 << 20) - 1, MAX_REKEY_LIMIT + 1] {
            let c = Config {
                rekey_limit: bad,
                ..with_ciphers(&KNOWN_CIPHERS)
            };
            let (key, msg) = c.validate().err().unwrap_or_default();
            assert_eq!(key, "rekey_limit", "{bad}");
            assert!(msg.contains("between 1048576 and 1073741824"), "{msg}");
        }
    }

    #[test]
    fn bad_cipher_lists_are_refused_by_key() {
        let err = |c: &[&str]| with_ciphers(c).validate().err();
        assert_eq!(
            err(&[]).map(|e| e.0),
            Some("ciphers".to_string()),
            "an empty list"
        );
        let (key, msg) = err(&["aes128-gcm@openssh.com", "none"]).unwrap_or_default();
        assert_eq!(key, "ciphers[1]");
        assert!(msg.contains("unknown cipher `none`"), "{msg}");
        let (key, msg) = err(&["aes128-ctr", "3des-cbc"]).unwrap_or_default();
        assert_eq!(key, "ciphers[1]");
        assert!(msg.contains("known: aes128-gcm@openssh.com"), "{msg}");
        let (key, msg) = err(&["aes128-ctr", "aes128-ctr"]).unwrap_or_default();
        assert_eq!(key, "ciphers[1]");
        assert!(msg.contains("twice"), "{msg}");
    }
}
