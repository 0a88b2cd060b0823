//! Per-user defaults for `tunnelc http` (TPoT kept them in `~/.tpot/config.json`):
//! `$XDG_CONFIG_HOME/tunnelc/config.yaml`, else `~/.config/tunnelc/config.yaml`. Every key
//! is optional; a flag on the command line wins over the file.
//!
//! ```yaml
//! server: https://tunnel.example.com
//! token: my-token          # or auth_key: <TPoT key>
//! ca: /path/to/ca.pem
//! subdomain: myapp
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tunneld_core::auth::Secret;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDefaults {
    /// tunneld's URL, `http(s)://host[:port]`.
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub token: Option<Secret>,
    /// A TPoT key instead of a token.
    #[serde(default)]
    pub auth_key: Option<Secret>,
    #[serde(default)]
    pub subdomain: Option<String>,
    /// PEM CA bundle to trust.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Trust exactly this certificate (`sha256:<hex>`).
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    /// The Host every request is rewritten to (default: the target).
    #[serde(default)]
    pub http_host: Option<String>,
    /// Leave the Host header alone.
    #[serde(default)]
    pub no_host_rewrite: bool,
}

/// Where the file is looked for.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tunnelc").join("config.yaml"))
}

/// Reads the defaults; a missing file means none. Errors name the file and the key.
pub fn load(path: Option<&Path>) -> Result<UserDefaults, String> {
    let Some(path) = path else {
        return Ok(UserDefaults::default());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserDefaults::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(UserDefaults::default());
    }
    let mut d: UserDefaults =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(ca) = &d.ca {
        if ca.is_relative() {
            d.ca = path.parent().map(|p| p.join(ca));
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_names_bad_ones() {
        let dir = std::env::temp_dir().join(format!("tunnelc-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("config.yaml");
        std::fs::write(&f, "server: http://localhost:8080\ntoken: t\nca: ca.pem\n").expect("write");
        let d = load(Some(&f)).expect("valid");
        assert_eq!(d.server.as_deref(), Some("http://localhost:8080"));
        assert_eq!(d.ca, Some(dir.join("ca.pem")));
        std::fs::write(&f, "sever: x\n").expect("write");
        let e = load(Some(&f)).expect_err("typo");
        assert!(e.contains("sever"), "{e}");
        assert!(load(Some(&dir.join("missing.yaml")))
            .expect("none")
            .server
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
