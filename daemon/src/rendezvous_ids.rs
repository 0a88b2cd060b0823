//! Rendezvous ids and their TOTP secrets, kept in tunneld's state store
//! ([`tunneld_state`]). `tunneld rendezvous add/list/remove` edit it; a running tunneld
//! reads it at each lookup ([`IdStore`], the rendezvous frontend's
//! [`IdSource`]), so new ids work without a
//! restart. An older tunneld's `rendezvous.json` is imported once ([`import_legacy`]).

use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use tunneld_core::totp;
pub use tunneld_frontend_rendezvous::ids::{
    imported_secret, otpauth_uri, IdEntry, IdSource, LookupError, FILE,
};
use tunneld_frontend_rendezvous::ids::{io_err, random_uuid, read, valid_id};
use tunneld_state::cache::StateCache;
use tunneld_state::{RendezvousRecord, StateError, StateStore};

/// Why an id could not be added, imported or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ids(#[from] tunneld_frontend_rendezvous::ids::StoreError),
    #[error(transparent)]
    State(#[from] StateError),
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
        None => totp::encode_secret(&tunneld_core::auth::random_bytes::<20>()),
    };
    let id = id.map(str::to_string).unwrap_or_else(random_uuid);
    if !valid_id(&id) {
        return Err(
            tunneld_frontend_rendezvous::ids::StoreError::Invalid(format!(
                "id `{id}` is invalid: use 1-128 letters, digits, `-`, `_` or `.`"
            ))
            .into(),
        );
    }
    if !(5..=300).contains(&step) {
        return Err(
            tunneld_frontend_rendezvous::ids::StoreError::Invalid(format!(
                "step {step} is outside 5..=300 seconds"
            ))
            .into(),
        );
    }
    let entry = IdEntry {
        secret,
        step,
        client: client.map(str::to_string),
        created: tunneld_state::now(),
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
        secret: totp::encode_secret(&tunneld_core::auth::random_bytes::<20>()),
        step: old.step,
        client: old.client,
        created: tunneld_state::now(),
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
/// ([`tunneld_state::cache`]), kept current, so ids added by `tunneld rendezvous add` work
/// at once and removed ones stop at once.
pub struct IdStore {
    store: Arc<dyn StateStore>,
    cache: Arc<StateCache>,
}

impl IdStore {
    pub fn new(store: Arc<dyn StateStore>, cache: Arc<StateCache>) -> Self {
        Self { store, cache }
    }

    /// One id's entry; none when the store cannot be read (logged), so callers refuse.
    pub async fn lookup(&self, id: &str) -> Option<IdEntry> {
        self.lookup_strict(id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read rendezvous ids");
            None
        })
    }
}

#[async_trait]
impl IdSource for IdStore {
    /// Records a code's first use (on a blocking thread), so a restart does not make it
    /// usable again from another address. Records older than 15 minutes (longer than any
    /// code is valid: 3 steps of at most 300 s) are forgotten on the way.
    async fn remember_code(&self, id: &str, counter: u64, addr: std::net::IpAddr) {
        let (store, id) = (self.store.clone(), id.to_string());
        let now = tunneld_state::now();
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
    fn used_codes(&self) -> Vec<(String, u64, std::net::IpAddr)> {
        let since = tunneld_state::now().saturating_sub(USED_CODES_KEPT);
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
    async fn lookup_strict(&self, id: &str) -> Result<Option<IdEntry>, LookupError> {
        match self.cache.rendezvous(id).await {
            Ok(r) => Ok(r.map(entry)),
            Err(e) => Err(LookupError(Box::new(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunneld_state::sqlite::SqliteStore;

    #[tokio::test]
    async fn add_list_remove_and_legacy_import() {
        let dir = std::env::temp_dir().join(format!(
            "tunneld-store-{}",
            tunneld_core::auth::hex(&tunneld_core::auth::random_bytes::<6>())
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join(FILE),
            r#"{"ids":{"old":{"secret":"GEZDGNBVGY3TQOJQ","step":30,"created":5}}}"#,
        )
        .expect("legacy");
        let db: Arc<dyn StateStore> =
            Arc::new(SqliteStore::open(&dir.join(tunneld_state::FILE)).expect("open"));
        assert_eq!(import_legacy(&dir, &*db).expect("import"), 1);
        assert!(!dir.join(FILE).exists() && dir.join("rendezvous.json.imported").exists());
        let metrics = Arc::new(tunneld_core::metrics::Metrics::new().expect("metrics"));
        let cache = Arc::new(StateCache::start(db.clone(), metrics).expect("cache"));
        let store = IdStore::new(db.clone(), cache);
        assert_eq!(store.lookup("old").await.map(|e| e.step), Some(30));
        assert!(store.lookup("a").await.is_none());
        let (id, e) = add(&*db, Some("a"), 30, Some("demo")).expect("add");
        assert_eq!(id, "a");
        assert_eq!(
            super::totp::decode_secret(&e.secret).expect("b32").len(),
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
