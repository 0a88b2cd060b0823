//! Rendezvous ids and their TOTP secrets, kept in tunneld's state store
//! ([`crate::state`]). `tunneld rendezvous add/list/remove` edit it; a running tunneld reads
//! it at each lookup, so new ids work without a restart. An older tunneld's
//! `rendezvous.json` is imported once ([`import_legacy`]).

use crate::state::cache::StateCache;
use crate::state::{RendezvousRecord, StateError, StateStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The legacy file's name inside the state directory.
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
    #[error(transparent)]
    State(#[from] StateError),
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

/// Adds an id (a random UUID when `id` is `None`) with a fresh 160-bit secret.
pub fn add(
    store: &dyn StateStore,
    id: Option<&str>,
    step: u64,
    client: Option<&str>,
) -> Result<(String, IdEntry), StoreError> {
    add_with_secret(store, id, step, client, None)
}

/// Secrets imported with `--secret` must carry at least this many bytes (80 bits).
pub const MIN_IMPORTED_SECRET: usize = 10;

/// Checks a base32 secret brought from elsewhere (an original node-rendezvous server) and
/// returns it in tunneld's canonical form.
pub fn imported_secret(secret: &str) -> Result<String, StoreError> {
    let key = super::totp::decode_secret(secret)
        .map_err(|e| StoreError::Invalid(format!("the secret is not base32: {e}")))?;
    if key.len() < MIN_IMPORTED_SECRET {
        return Err(StoreError::Invalid(format!(
            "the secret carries {} bytes; at least {MIN_IMPORTED_SECRET} (16 base32 characters) are needed",
            key.len()
        )));
    }
    Ok(super::totp::encode_secret(&key))
}

/// [`add`], with `secret` (base32) instead of a fresh one when given: to move an id from
/// another server without re-provisioning its hidden servers.
pub fn add_with_secret(
    store: &dyn StateStore,
    id: Option<&str>,
    step: u64,
    client: Option<&str>,
    secret: Option<&str>,
) -> Result<(String, IdEntry), StoreError> {
    let secret = match secret {
        Some(s) => imported_secret(s)?,
        None => super::totp::encode_secret(&crate::auth::random_bytes::<20>()),
    };
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
    let entry = IdEntry {
        secret,
        step,
        client: client.map(str::to_string),
        created: crate::state::now(),
    };
    store.add_rendezvous(&record(&id, &entry))?;
    Ok((id, entry))
}

fn record(id: &str, e: &IdEntry) -> RendezvousRecord {
    RendezvousRecord {
        id: id.to_string(),
        secret: e.secret.clone(),
        step: e.step,
        client: e.client.clone(),
        created: e.created,
    }
}

fn entry(r: RendezvousRecord) -> IdEntry {
    IdEntry {
        secret: r.secret,
        step: r.step,
        client: r.client,
        created: r.created,
    }
}

/// Every id, in id order.
pub fn list(store: &dyn StateStore) -> Result<Vec<(String, IdEntry)>, StoreError> {
    Ok(store
        .rendezvous_ids()?
        .into_iter()
        .map(|r| (r.id.clone(), entry(r)))
        .collect())
}

/// Gives an id a fresh secret, keeping its step and client: connections parked with the old
/// secret stop serving, and only codes of the new one park. `None` when there is no such id.
pub fn rotate(store: &dyn StateStore, id: &str) -> Result<Option<IdEntry>, StoreError> {
    let Some(old) = store.rendezvous(id)? else {
        return Ok(None);
    };
    let entry = IdEntry {
        secret: super::totp::encode_secret(&crate::auth::random_bytes::<20>()),
        step: old.step,
        client: old.client,
        created: crate::state::now(),
    };
    // One write: no lookup ever sees the id missing, and a crash cannot lose it.
    if !store.update_rendezvous(&record(id, &entry))? {
        return Ok(None);
    }
    Ok(Some(entry))
}

/// Removes an id; false when it did not exist.
pub fn remove(store: &dyn StateStore, id: &str) -> Result<bool, StoreError> {
    Ok(store.remove_rendezvous(id)?)
}

/// Moves the ids of an older tunneld's `rendezvous.json` (in `state_dir`) into the store,
/// keeping ids the store already has, and renames the file to `rendezvous.json.imported`.
/// Returns how many ids were imported.
pub fn import_legacy(state_dir: &Path, store: &dyn StateStore) -> Result<usize, StoreError> {
    let path = state_dir.join(FILE);
    if !path.exists() {
        return Ok(0);
    }
    let file = read(&path)?;
    let mut n = 0;
    for (id, e) in &file.ids {
        match store.add_rendezvous(&record(id, e)) {
            Ok(()) => n += 1,
            Err(StateError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let done = path.with_extension("json.imported");
    std::fs::rename(&path, &done).map_err(io_err(&path))?;
    tracing::info!(ids = n, from = %path.display(), "imported rendezvous ids into the state store");
    Ok(n)
}

/// How long used TOTP codes are remembered (seconds).
const USED_CODES_KEPT: u64 = 15 * 60;

/// The ids as a running tunneld sees them: from the in-memory view of the state store
/// ([`crate::state::cache`]), kept current, so ids added by `tunneld rendezvous add` work
/// at once and removed ones stop at once.
pub struct IdStore {
    store: Arc<dyn StateStore>,
    cache: Arc<StateCache>,
}

impl IdStore {
    pub fn new(store: Arc<dyn StateStore>, cache: Arc<StateCache>) -> Self {
        Self { store, cache }
    }

    /// Records a code's first use (on a blocking thread), so a restart does not make it
    /// usable again from another address. Records older than 15 minutes (longer than any
    /// code is valid: 3 steps of at most 300 s) are forgotten on the way.
    pub async fn remember_code(&self, id: &str, counter: u64, addr: std::net::IpAddr) {
        let (store, id) = (self.store.clone(), id.to_string());
        let now = crate::state::now();
        let work = move || {
            store.add_used_code(
                &id,
                counter,
                &addr.to_string(),
                now,
                now.saturating_sub(USED_CODES_KEPT),
            )
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record a used TOTP code"),
            Err(e) => tracing::warn!(error = %e, "cannot record a used TOTP code"),
        }
    }

    /// Codes used within the last 15 minutes: (id, counter, first address).
    pub fn used_codes(&self) -> Vec<(String, u64, std::net::IpAddr)> {
        let since = crate::state::now().saturating_sub(USED_CODES_KEPT);
        match self.store.used_codes(since) {
            Ok(all) => all
                .into_iter()
                .filter_map(|(id, c, a)| a.parse().ok().map(|a| (id, c, a)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the used TOTP codes");
                Vec::new()
            }
        }
    }

    /// One id's entry, telling a store failure (`Err`) apart from a missing id
    /// (`Ok(None)`).
    pub async fn lookup_strict(&self, id: &str) -> Result<Option<IdEntry>, String> {
        match self.cache.rendezvous(id).await {
            Ok(r) => Ok(r.map(entry)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One id's entry; none when the store cannot be read (logged), so callers refuse.
    pub async fn lookup(&self, id: &str) -> Option<IdEntry> {
        self.lookup_strict(id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read rendezvous ids");
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::SqliteStore;

    #[tokio::test]
    async fn add_list_remove_and_legacy_import() {
        let dir = std::env::temp_dir().join(format!(
            "tunneld-store-{}",
            crate::auth::hex(&crate::auth::random_bytes::<6>())
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join(FILE),
            r#"{"ids":{"old":{"secret":"GEZDGNBVGY3TQOJQ","step":30,"created":5}}}"#,
        )
        .expect("legacy");
        let db: Arc<dyn StateStore> =
            Arc::new(SqliteStore::open(&dir.join(crate::state::FILE)).expect("open"));
        assert_eq!(import_legacy(&dir, &*db).expect("import"), 1);
        assert!(!dir.join(FILE).exists() && dir.join("rendezvous.json.imported").exists());
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let cache = Arc::new(StateCache::start(db.clone(), metrics).expect("cache"));
        let store = IdStore::new(db.clone(), cache);
        assert_eq!(store.lookup("old").await.map(|e| e.step), Some(30));
        assert!(store.lookup("a").await.is_none());
        let (id, e) = add(&*db, Some("a"), 30, Some("demo")).expect("add");
        assert_eq!(id, "a");
        assert_eq!(
            super::super::totp::decode_secret(&e.secret)
                .expect("b32")
                .len(),
            20
        );
        assert_eq!(store.lookup("a").await, Some(e.clone()));
        assert!(add(&*db, Some("a"), 30, None).is_err(), "duplicate");
        assert!(add(&*db, Some("bad id"), 30, None).is_err());
        assert!(add(&*db, None, 1, None).is_err(), "step");
        let (uuid, _) = add(&*db, None, 30, None).expect("uuid");
        assert_eq!(uuid.len(), 36);
        assert_eq!(list(&*db).expect("list").len(), 3);
        assert!(otpauth_uri(&id, &e).starts_with("otpauth://totp/tunneld:a?secret="));
        assert!(remove(&*db, "a").expect("remove"));
        assert!(!remove(&*db, "a").expect("again"));
        assert!(store.lookup("a").await.is_none());
        assert!(store.lookup(&uuid).await.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
