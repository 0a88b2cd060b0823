//! The server's host key: loaded from the configured file, or made on first start in the
//! state directory (Ed25519, OpenSSH format, mode 0600) and kept there, so clients'
//! `known_hosts` entries stay valid across restarts. Its fingerprint is logged at start,
//! like the TLS pin.

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use std::path::{Path, PathBuf};

/// Where the default host key lives under the state directory.
pub const DEFAULT_FILE: &str = "ssh/host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read host key {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("host key {path} is not an OpenSSH private key: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("host key {path} is encrypted: give an unencrypted key")]
    Encrypted { path: PathBuf },
    #[error("cannot write host key {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot encode the new host key: {0}")]
    Encode(String),
}

/// Loads `path`; when `create` and the file does not exist, makes a new Ed25519 key there.
pub fn load_or_create(path: &Path, create: bool) -> Result<PrivateKey, HostKeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key =
                PrivateKey::from_openssh(text.as_bytes()).map_err(|e| HostKeyError::Parse {
                    path: path.into(),
                    message: e.to_string(),
                })?;
            if key.is_encrypted() {
                return Err(HostKeyError::Encrypted { path: path.into() });
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = PrivateKey::from(Ed25519Keypair::from_seed(
                &tunneld_core::auth::random_bytes::<32>(),
            ));
            write_private(path, &key)?;
            tracing::info!(path = %path.display(), fingerprint = %fingerprint(&key), "made a new SSH host key");
            Ok(key)
        }
        Err(error) => Err(HostKeyError::Read {
            path: path.into(),
            error,
        }),
    }
}

/// `SHA256:...`, as `ssh-keygen -lf` and OpenSSH's first-contact prompt show it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// The public key line (`ssh-ed25519 AAAA...`), for a `known_hosts` entry.
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap_or_default()
}

fn write_private(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Encode(e.to_string()))?;
    let write_err = |error| HostKeyError::Write {
        path: path.into(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(write_err)?;
        f.write_all(text.as_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
    }
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded() {
        let dir = std::env::temp_dir().join(format!("tunneld-hostkey-{}", std::process::id()));
        let path = dir.join(DEFAULT_FILE);
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create(&path, true).expect("made");
        let b = load_or_create(&path, true).expect("loaded");
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        assert!(public_line(&a).starts_with("ssh-ed25519 "));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(
            load_or_create(&path, true),
            Err(HostKeyError::Parse { .. })
        ));
        assert!(matches!(
            load_or_create(&dir.join("none"), false),
            Err(HostKeyError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
