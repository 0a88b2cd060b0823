//! The state the data path reads (tokens by digest, rendezvous ids, provisioned tunnels by
//! name) held in memory and kept current, so no runtime thread ever waits on SQLite and a
//! flood of unknown tokens or ids costs no query each.
//!
//! Current means: a lookup answers from a snapshot that was checked against the store
//! *after the lookup began*, so a token revoked or an id added a moment earlier by
//! `tunneld token revoke` / `tunneld rendezvous add` (another process) is seen at once.
//! One thread ("tunneld-state") does the checking: each check reads the store's change
//! counters and any table whose count moved, in one consistent read
//! ([`StateStore::cached_changes`]: SQLite's is a read transaction on a connection of its
//! own, Redis's one script). Lookups that arrive while a check runs share the next one, so
//! however many lookups come at once, the store sees one small read at a time.
//!
//! A check that fails (the store cannot be read) or does not finish within [`CHECK_WAIT`]
//! fails the lookups that waited on it: callers refuse (fail closed) rather than answer from
//! an old snapshot.

use crate::metrics::StateMetrics;
use crate::records::{RendezvousRecord, SshKeyRecord, TokenRecord, TunnelRecord};
use crate::{StateError, StateStore, Versions};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tunneld_core::metrics::Metrics;

/// How long a lookup waits for the check it needs before failing.
pub const CHECK_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Snapshot {
    versions: Option<Versions>,
    /// By hex digest.
    tokens: HashMap<String, TokenRecord>,
    rendezvous: HashMap<String, RendezvousRecord>,
    tunnels: HashMap<String, TunnelRecord>,
    /// Token digests by name.
    token_names: HashMap<String, String>,
    /// Tunnel names by the digest of their secret id (pipe2me-shape tunnels).
    tunnel_ids: HashMap<String, String>,
    /// By fingerprint.
    ssh_keys: HashMap<String, SshKeyRecord>,
}

/// An SSH key with what decides whether it is usable, from one snapshot.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub key: SshKeyRecord,
    /// The stored token named by the key's client, if there is one.
    pub token: Option<TokenRecord>,
    /// The tunnel the key is bound to, if it is bound and the tunnel exists.
    pub tunnel: Option<TunnelRecord>,
}

#[derive(Default)]
struct Tickets {
    /// The last ticket handed out.
    issued: u64,
    /// The last ticket a finished check covered.
    served: u64,
    closed: bool,
}

struct Shared {
    store: Arc<dyn StateStore>,
    data: RwLock<Snapshot>,
    tickets: Mutex<Tickets>,
    wake: Condvar,
    metrics: Arc<StateMetrics>,
}

/// What a finished check covered: tickets up to `upto`, and whether it failed.
#[derive(Clone, Default)]
struct Checked {
    upto: u64,
    error: Option<String>,
}

/// The in-memory view; see the module documentation. Dropping it stops its thread.
pub struct StateCache {
    shared: Arc<Shared>,
    done: watch::Receiver<Checked>,
}

impl StateCache {
    /// Loads every cached table (blocking: call it at startup) and starts the checking
    /// thread.
    pub fn start(store: Arc<dyn StateStore>, metrics: Arc<Metrics>) -> Result<Self, StateError> {
        let metrics = metrics
            .plugin::<StateMetrics>()
            .map_err(|e| StateError::Invalid(format!("metrics registry: {e}")))?;
        let shared = Arc::new(Shared {
            store,
            data: RwLock::new(Snapshot::default()),
            tickets: Mutex::new(Tickets::default()),
            wake: Condvar::new(),
            metrics,
        });
        shared.check()?;
        let (tx, done) = watch::channel(Checked::default());
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("tunneld-state".into())
            .spawn(move || worker.run(&tx))
            .map_err(|e| StateError::Db(format!("cannot start the state thread: {e}")))?;
        Ok(Self { shared, done })
    }

    /// The token whose SHA-256 (hex) is `digest`, as the store has it now.
    pub async fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StateError> {
        self.current("tokens").await?;
        Ok(self.read().tokens.get(digest).cloned())
    }

    /// A rendezvous id, as the store has it now.
    pub async fn rendezvous(&self, id: &str) -> Result<Option<RendezvousRecord>, StateError> {
        self.current("rendezvous").await?;
        Ok(self.read().rendezvous.get(id).cloned())
    }

    /// A provisioned tunnel by name, as the store has it now.
    pub async fn tunnel(&self, name: &str) -> Result<Option<TunnelRecord>, StateError> {
        self.current("tunnels").await?;
        Ok(self.read().tunnels.get(name).cloned())
    }

    /// A provisioned tunnel by the hex SHA-256 of its secret id, as the store has it now.
    pub async fn tunnel_by_id_digest(
        &self,
        digest: &str,
    ) -> Result<Option<TunnelRecord>, StateError> {
        self.current("tunnels").await?;
        let data = self.read();
        Ok(data
            .tunnel_ids
            .get(digest)
            .and_then(|n| data.tunnels.get(n))
            .cloned())
    }

    /// An SSH key by fingerprint with its client's token and its tunnel, as the store has
    /// them now.
    pub async fn ssh_key(&self, fingerprint: &str) -> Result<Option<KeyView>, StateError> {
        self.current("ssh_keys").await?;
        let data = self.read();
        let Some(key) = data.ssh_keys.get(fingerprint).cloned() else {
            return Ok(None);
        };
        let token = data
            .token_names
            .get(&key.client)
            .and_then(|d| data.tokens.get(d))
            .cloned();
        let tunnel = key
            .tunnel
            .as_ref()
            .and_then(|t| data.tunnels.get(t))
            .cloned();
        Ok(Some(KeyView { key, token, tunnel }))
    }

    /// Every stored token, as the store has them now.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        self.current("tokens").await?;
        Ok(self.read().tokens.values().cloned().collect())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        tunneld_core::sync::read(&self.shared.data)
    }

    /// Waits for a check that began after this call.
    async fn current(&self, table: &str) -> Result<(), StateError> {
        self.shared
            .metrics
            .state_lookups_total
            .with_label_values(&[table])
            .inc();
        let ticket = {
            let mut t = self.shared.lock();
            if t.closed {
                return Err(StateError::Db("the state cache is stopped".into()));
            }
            t.issued += 1;
            self.shared.wake.notify_one();
            t.issued
        };
        let mut done = self.done.clone();
        let waited = tokio::time::timeout(CHECK_WAIT, done.wait_for(|c| c.upto >= ticket)).await;
        match waited {
            Ok(Ok(c)) => match &c.error {
                None => Ok(()),
                Some(e) => Err(StateError::Db(e.clone())),
            },
            Ok(Err(_)) => Err(StateError::Db("the state thread stopped".into())),
            Err(_) => Err(StateError::Db(format!(
                "the state store did not answer within {} s",
                CHECK_WAIT.as_secs()
            ))),
        }
    }
}

impl Drop for StateCache {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        tunneld_core::sync::lock(&self.tickets)
    }

    /// The checking thread: one check per batch of waiting tickets.
    fn run(&self, done: &watch::Sender<Checked>) {
        loop {
            let upto = {
                let mut t = self.lock();
                while t.issued == t.served && !t.closed {
                    t = self.wake.wait(t).unwrap_or_else(|p| p.into_inner());
                }
                if t.closed {
                    return;
                }
                // Every ticket up to here was handed out before this check starts.
                t.issued
            };
            let error = self.check().err().map(|e| e.to_string());
            self.lock().served = upto;
            done.send_replace(Checked { upto, error });
        }
    }

    /// Reads the change counters and reloads the tables whose count moved.
    fn check(&self) -> Result<(), StateError> {
        let outcome = |o: &str| {
            self.metrics
                .state_checks_total
                .with_label_values(&[o])
                .inc()
        };
        let known = tunneld_core::sync::read(&self.data).versions;
        let changes = match self.store.cached_changes(known) {
            Ok(c) => c,
            Err(e) => {
                outcome("failed");
                return Err(e);
            }
        };
        if known == Some(changes.versions) {
            outcome("current");
            return Ok(());
        }
        let mut data = tunneld_core::sync::write(&self.data);
        if let Some(all) = changes.tokens {
            data.token_names = all
                .iter()
                .map(|t| (t.name.clone(), t.digest.clone()))
                .collect();
            data.tokens = all.into_iter().map(|t| (t.digest.clone(), t)).collect();
        }
        if let Some(all) = changes.rendezvous {
            data.rendezvous = all.into_iter().map(|r| (r.id.clone(), r)).collect();
        }
        if let Some(all) = changes.tunnels {
            data.tunnel_ids = all
                .iter()
                .filter_map(|t| Some((t.id_digest.clone()?, t.name.clone())))
                .collect();
            data.tunnels = all.into_iter().map(|t| (t.name.clone(), t)).collect();
        }
        if let Some(all) = changes.ssh_keys {
            data.ssh_keys = all
                .into_iter()
                .map(|k| (k.fingerprint.clone(), k))
                .collect();
        }
        data.versions = Some(changes.versions);
        outcome("reloaded");
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
