//! Rendezvous ids and their TOTP secrets, kept in one JSON file in tunneld's state directory
//! (`rendezvous.json`). `tunneld rendezvous add/list/remove` edit it; a running tunneld
//! re-reads it when it changes, so new ids work without a restart.
//!
//! Writes go to a temporary file that is synced and renamed over the old one, so a crash
//! leaves either the old or the new file, never a torn one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The file's name inside the state directory.
pub const FILE: &str = "rendezvous.json";

/// One rendezvous id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdEntry {
    /// Base32 TOTP secret.
    pub secret: String,
    /// TOTP step in seconds.
    pub step: u64,
    /// The tunnel client (token or certificate id) allowed to park for this id without a
    /// code. Without it only TOTP codes park.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdFile {
    #[serde(default)]
    pub ids: BTreeMap<String, IdEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a rendezvous id file: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// Whether `id` is usable as a rendezvous id: 1-128 letters, digits, `-`, `_`, `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A random UUID (version 4), the id form node-rendezvous used.
pub fn random_uuid() -> String {
    let mut b = crate::auth::random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::auth::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The `otpauth://` URI authenticator apps and TOTP libraries read.
pub fn otpauth_uri(id: &str, e: &IdEntry) -> String {
    format!(
        "otpauth://totp/tunneld:{id}?secret={}&issuer=tunneld&algorithm=SHA1&digits={}&period={}",
        e.secret,
        super::totp::DIGITS,
        e.step
    )
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the file; a missing file is an empty set.
pub fn read(path: &Path) -> Result<IdFile, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IdFile::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes the file atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write(path: &Path, file: &IdFile) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(file).map_err(|e| StoreError::Invalid(e.to_string()))?;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        set_private(&f);
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_private(f: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
}
#[cfg(not(unix))]
fn set_private(_: &std::fs::File) {}

/// Adds an id (a random UUID when `id` is `None`) with a fresh 160-bit secret.
pub fn add(
    path: &Path,
    id: Option<&str>,
    step: u64,
    client: Option<&str>,
) -> Result<(String, IdEntry), StoreError> {
    let id = id.map(str::to_string).unwrap_or_else(random_uuid);
    if !valid_id(&id) {
        return Err(StoreError::Invalid(format!(
            "id `{id}` is invalid: use 1-128 letters, digits, `-`, `_` or `.`"
        )));
    }
    if !(5..=300).contains(&step) {
        return Err(StoreError::Invalid(format!(
            "step {step} is outside 5..=300 seconds"
        )));
    }
    let mut file = read(path)?;
    if file.ids.contains_key(&id) {
        return Err(StoreError::Invalid(format!("id `{id}` already exists")));
    }
    let entry = IdEntry {
        secret: super::totp::encode_secret(&crate::auth::random_bytes::<20>()),
        step,
        client: client.map(str::to_string),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    file.ids.insert(id.clone(), entry.clone());
    write(path, &file)?;
    Ok((id, entry))
}

/// Removes an id; false when it did not exist.
pub fn remove(path: &Path, id: &str) -> Result<bool, StoreError> {
    let mut file = read(path)?;
    if file.ids.remove(id).is_none() {
        return Ok(false);
    }
    write(path, &file)?;
    Ok(true)
}

/// The file as a running tunneld sees it: re-read when its modification time or size
/// changes; a file that fails to parse keeps the last good contents (and is logged).
pub struct IdStore {
    path: PathBuf,
    cache: Mutex<Cached>,
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    ids: Arc<IdFile>,
}

impl IdStore {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(Cached {
                stamp: None,
                ids: Arc::default(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current ids.
    pub fn current(&self) -> Arc<IdFile> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.stamp != stamp {
            match read(&self.path) {
                Ok(f) => c.ids = Arc::new(f),
                Err(e) => tracing::warn!(error = %e, "keeping the last good rendezvous ids"),
            }
            c.stamp = stamp;
        }
        c.ids.clone()
    }

    /// One id's entry.
    pub fn get(&self, id: &str) -> Option<IdEntry> {
        self.current().ids.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove_round_trip_and_reload() {
        let dir = std::env::temp_dir().join(format!(
            "tunneld-store-{}",
            crate::auth::hex(&crate::auth::random_bytes::<6>())
        ));
        let path = dir.join(FILE);
        let store = IdStore::new(path.clone());
        assert!(store.get("a").is_none());
        let (id, e) = add(&path, Some("a"), 30, Some("demo")).expect("add");
        assert_eq!(id, "a");
        assert_eq!(
            super::super::totp::decode_secret(&e.secret)
                .expect("b32")
                .len(),
            20
        );
        assert_eq!(store.get("a"), Some(e.clone()));
        assert!(add(&path, Some("a"), 30, None).is_err(), "duplicate");
        assert!(add(&path, Some("bad id"), 30, None).is_err());
        assert!(add(&path, None, 1, None).is_err(), "step");
        let (uuid, _) = add(&path, None, 30, None).expect("uuid");
        assert_eq!(uuid.len(), 36);
        assert!(otpauth_uri(&id, &e).starts_with("otpauth://totp/tunneld:a?secret="));
        assert!(remove(&path, "a").expect("remove"));
        assert!(!remove(&path, "a").expect("again"));
        assert!(store.get("a").is_none());
        assert!(store.get(&uuid).is_some());
        std::fs::write(&path, b"{ torn").expect("write");
        assert!(
            store.get(&uuid).is_some(),
            "a broken file keeps the last good ids"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
