//! ACME files under `<state_dir>/acme/<frontend>/`: `account.json` (the account's key and
//! URL) and `certs/<name>.pem` + `certs/<name>.key` (chain and key), all mode 0600, written
//! whole (a temporary file renamed), read back at start so a restart orders nothing new.

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate tunneld holds for one name.
pub(super) struct Held {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) not_after: SystemTime,
    /// Hex serial, for logs.
    pub(super) serial: String,
    pub(super) renew_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("unusable certificate: {0}")]
    Certificate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The stored account for `directory`, if there is one for that directory.
pub(super) fn load_account(
    dir: &Path,
    directory: &str,
) -> Option<instant_acme::AccountCredentials> {
    let text = std::fs::read(dir.join("account.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if v.get("directory").and_then(|d| d.as_str()) != Some(directory) {
        return None;
    }
    serde_json::from_value(v).ok()
}

pub(super) fn save_account(
    dir: &Path,
    creds: &instant_acme::AccountCredentials,
) -> Result<(), StoreError> {
    let text =
        serde_json::to_vec_pretty(creds).map_err(|e| StoreError::Certificate(e.to_string()))?;
    write_private(&dir.join("account.json"), &text)
}

/// When to renew a certificate got at `now` that expires at `not_after`: `renew_before`
/// ahead, but not before half its remaining life.
pub(super) fn renew_at(
    now: SystemTime,
    not_after: SystemTime,
    renew_before: Duration,
) -> SystemTime {
    let left = not_after.duration_since(now).unwrap_or_default();
    let early = not_after.checked_sub(renew_before).unwrap_or(UNIX_EPOCH);
    early.max(now + left / 2)
}

/// Parses a PEM chain and key into what the resolver serves.
pub(super) fn held(
    chain_pem: &[u8],
    key_pem: &[u8],
    renew_before: Duration,
) -> Result<Held, StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::Certificate(e.to_string());
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| StoreError::Certificate("empty chain".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(&e))?;
    let not_after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0));
    let serial = x509.tbs_certificate.raw_serial_as_string();
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(&e))?;
    let signing = tunneld_core::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&e))?;
    Ok(Held {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        not_after,
        serial,
        renew_at: renew_at(SystemTime::now(), not_after, renew_before),
    })
}

fn cert_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let certs = dir.join("certs");
    (
        certs.join(format!("{name}.pem")),
        certs.join(format!("{name}.key")),
    )
}

pub(super) fn save_cert(
    dir: &Path,
    name: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), StoreError> {
    let (pem, key) = cert_paths(dir, name);
    write_private(&key, key_pem.as_bytes())?;
    write_private(&pem, chain_pem.as_bytes())
}

/// Every stored certificate that still parses and has not expired, by name.
pub(super) fn load_certs(dir: &Path, renew_before: Duration) -> Vec<(String, Held)> {
    let Ok(entries) = std::fs::read_dir(dir.join("certs")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".pem") else {
            continue;
        };
        let (pem, key) = cert_paths(dir, name);
        let loaded = std::fs::read(&pem)
            .and_then(|p| std::fs::read(&key).map(|k| (p, k)))
            .map_err(io(&pem))
            .and_then(|(p, k)| held(&p, &k, renew_before));
        match loaded {
            Ok(h) if h.not_after > SystemTime::now() => out.push((name.to_string(), h)),
            Ok(_) => tracing::info!(%name, "stored ACME certificate has expired; ordering anew"),
            Err(e) => tracing::warn!(%name, error = %e, "cannot use a stored ACME certificate"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_before_expiry_but_not_before_half_the_remaining_life() {
        let day = Duration::from_secs(24 * 3600);
        let now = UNIX_EPOCH + 1000 * day;
        // 90 days left, renew 30 days ahead: at day 60.
        assert_eq!(renew_at(now, now + 90 * day, 30 * day), now + 60 * day);
        // 20 s left, renew 30 days ahead: at half, 10 s from now (never a loop of orders).
        let s20 = Duration::from_secs(20);
        assert_eq!(renew_at(now, now + s20, 30 * day), now + s20 / 2);
        // Expired: now.
        assert_eq!(renew_at(now, now - day, 30 * day), now);
    }

    #[test]
    fn files_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tunneld-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.example.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        save_cert(&dir, "a.example.test", &cert.pem(), &key.serialize_pem()).expect("save");
        let key_file = dir.join("certs/a.example.test.key");
        let mode = std::fs::metadata(&key_file)
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_certs(&dir, Duration::from_secs(3600));
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, "a.example.test");
        assert!(loaded[0].1.not_after > SystemTime::now());
        // A broken file is skipped, not fatal.
        std::fs::write(dir.join("certs/b.example.test.pem"), "junk").expect("write");
        assert_eq!(load_certs(&dir, Duration::from_secs(3600)).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
