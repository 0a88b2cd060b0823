//! What `tunnelc setup` writes: one directory per tunnel under the setup directory, with
//! `client.yaml` (runs with `tunnelc --config`), `tunnel.json` (the API's answer and the local
//! ports), `key.pem`, `cert.pem` and `ca.pem`; with `--transport ssh`, the OpenSSH files of
//! [`super::ssh`] instead of `client.yaml`.

use crate::provision_api::TunnelInfo;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "client.yaml";
pub const RECORD: &str = "tunnel.json";
pub const KEY: &str = "key.pem";
pub const CERT: &str = "cert.pem";
pub const CA: &str = "ca.pem";

/// `tunnel.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupRecord {
    /// The provisioning API's URL.
    pub server: String,
    pub tunnel: TunnelInfo,
    /// Local port per protocol.
    pub local: BTreeMap<String, u16>,
    /// Set up for stock OpenSSH (`--transport ssh`): no `client.yaml`, the ssh files instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<super::ssh::SshRecord>,
}

/// One set-up tunnel on disk.
#[derive(Debug, Clone)]
pub struct TunnelDir {
    pub path: PathBuf,
    pub record: SetupRecord,
}

impl TunnelDir {
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// `--dir`'s default: `$TUNNELC_DIR`, else `$XDG_DATA_HOME/tunnelc`, else
/// `~/.local/share/tunnelc`.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("TUNNELC_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("tunnelc"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/tunnelc")),
        None => bail!("no --dir given and neither TUNNELC_DIR, XDG_DATA_HOME nor HOME is set"),
    }
}

/// Writes `contents` to `path` atomically, readable by the owner only when `private`.
pub fn write(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        let _ = private;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// The tunnels in `dir` (all, or the one named).
pub fn load(dir: &Path, name: Option<&str>) -> anyhow::Result<Vec<TunnelDir>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} does not exist: run `tunnelc setup` first",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let rec = path.join(RECORD);
        if !rec.is_file() {
            continue;
        }
        let text = std::fs::read(&rec).with_context(|| format!("{}", rec.display()))?;
        let record: SetupRecord = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a tunnel record", rec.display()))?;
        out.push(TunnelDir { path, record });
    }
    out.sort_by(|a, b| a.record.tunnel.name.cmp(&b.record.tunnel.name));
    match name {
        Some(n) => {
            out.retain(|t| t.record.tunnel.name == n);
            if out.is_empty() {
                bail!(
                    "no tunnel `{n}` in {} (`tunnelc list` shows them)",
                    dir.display()
                );
            }
        }
        None if out.is_empty() => {
            bail!("no tunnels in {}: run `tunnelc setup` first", dir.display())
        }
        None => {}
    }
    Ok(out)
}

/// The `notAfter` of the first certificate in a PEM file, Unix seconds.
pub fn cert_not_after(path: &Path) -> anyhow::Result<u64> {
    let certs = tunneld_core::tls::load_certs(path)?;
    let first = certs.first().context("no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(first)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp().max(0) as u64)
}
