//! tunneld's persistent state: tokens, provisioned tunnels (their name and port leases),
//! issued certificates and rendezvous ids, behind the [`StateStore`] trait.
//!
//! Two implementations:
//!
//! - [`sqlite::SqliteStore`], a single file (`state.db`) in the state directory. Every write
//!   is one SQLite transaction in WAL mode with `synchronous=FULL`, so a write that returned
//!   survives a crash or `kill -9`, and a torn write is rolled back on the next open.
//!   Several processes may open it at once (`tunneld token add` while tunneld runs).
//! - [`redis_store::RedisStore`], for cluster mode: several tunneld nodes (and their CLI)
//!   share one Redis. Every key is under `<prefix>:state:`: a hash per table of JSON records
//!   (`tokens`, `tunnels`, `ssh_keys`, `rendezvous`, `used_codes`), unique indexes
//!   (`token_digests`, `tunnel_ids`, `certificate_serials`), a list per tunnel
//!   (`certificates:<tunnel>`), `used_codes_at` (a sorted set), `admin_mappings` (a string)
//!   and the `versions` hash of change counters. Each write is one Lua script that checks,
//!   writes the record with its index entries and HINCRBYs its table's counter atomically
//!   (the admin mappings: one SET); [`StateStore::cached_changes`] is one script too.
//!   `backup` writes a SQLite file.
//!
//! Both pass the same tests (`conformance`, run against each). SQLite's behaviour is the
//! definition: the Redis store matches it method by method.
//!
//! Layout: [`records`] (what is stored), [`sqlite`] and [`redis_store`] (the stores),
//! [`cache`] (the in-memory view the data path reads; it is core's
//! [`tunneld_core::auth::TokenStore`], see [`tokens`]), [`names`] (readable tunnel names),
//! [`ca_sign`] (the CA signing tunnels' certificate requests).

#![forbid(unsafe_code)]

pub mod ca_sign;
pub mod cache;
#[cfg(test)]
mod conformance;
pub mod metrics;
pub mod names;
pub mod records;
pub mod redis_store;
pub mod sqlite;
pub mod ssh_keys;
pub mod tokens;

pub use records::{
    CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelFlavour, TunnelRecord,
};

use std::path::Path;

/// The store's file name inside the state directory.
pub const FILE: &str = "state.db";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("state store: {0}")]
    Db(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
}

/// Everything tunneld keeps across restarts. Methods are short synchronous transactions.
pub trait StateStore: Send + Sync + 'static {
    /// Adds a token; fails with [`StateError::Exists`] when its name is taken.
    fn add_token(&self, t: &TokenRecord) -> Result<(), StateError>;
    /// The token whose SHA-256 digest (hex) is `digest`.
    fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StateError>;
    fn token(&self, name: &str) -> Result<Option<TokenRecord>, StateError>;
    fn tokens(&self) -> Result<Vec<TokenRecord>, StateError>;
    /// Marks a token revoked at `at`; false when there is no such token.
    fn revoke_token(&self, name: &str, at: u64) -> Result<bool, StateError>;
    /// Records the one use of a single-use token; false when it was already used.
    fn use_token(&self, name: &str, at: u64) -> Result<bool, StateError>;

    /// Adds a provisioned tunnel; fails with [`StateError::Exists`] when its name is taken.
    fn add_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError>;
    /// Replaces a tunnel's record (ports allocated, renewal).
    fn update_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError>;
    fn tunnel(&self, name: &str) -> Result<Option<TunnelRecord>, StateError>;
    /// Every tunnel, or those of one owner.
    fn tunnels(&self, owner: Option<&str>) -> Result<Vec<TunnelRecord>, StateError>;
    /// Deletes a tunnel and the SSH keys bound to it; false when there was none.
    fn delete_tunnel(&self, name: &str) -> Result<bool, StateError>;

    /// Adds an SSH key; fails with [`StateError::Exists`] when its fingerprint is stored.
    fn add_ssh_key(&self, k: &SshKeyRecord) -> Result<(), StateError>;
    fn ssh_key(&self, fingerprint: &str) -> Result<Option<SshKeyRecord>, StateError>;
    /// Every SSH key, or those of one client, by client then fingerprint.
    fn ssh_keys(&self, client: Option<&str>) -> Result<Vec<SshKeyRecord>, StateError>;
    /// Deletes an SSH key; false when there was none.
    fn remove_ssh_key(&self, fingerprint: &str) -> Result<bool, StateError>;

    fn add_certificate(&self, c: &CertRecord) -> Result<(), StateError>;
    /// Certificates issued for one tunnel, newest first.
    fn certificates(&self, tunnel: &str) -> Result<Vec<CertRecord>, StateError>;

    /// Adds a rendezvous id; fails with [`StateError::Exists`] when it is taken.
    fn add_rendezvous(&self, r: &RendezvousRecord) -> Result<(), StateError>;
    fn rendezvous(&self, id: &str) -> Result<Option<RendezvousRecord>, StateError>;
    fn rendezvous_ids(&self) -> Result<Vec<RendezvousRecord>, StateError>;
    fn remove_rendezvous(&self, id: &str) -> Result<bool, StateError>;
    /// Replaces an id's secret, step, client and creation time in one write; false when
    /// there is no such id.
    fn update_rendezvous(&self, r: &RendezvousRecord) -> Result<bool, StateError>;

    /// Records that rendezvous id `id` accepted TOTP step `counter` first from `addr` at
    /// `at` (unix seconds); forgets records older than `forget_before`.
    fn add_used_code(
        &self,
        id: &str,
        counter: u64,
        addr: &str,
        at: u64,
        forget_before: u64,
    ) -> Result<(), StateError>;
    /// Used codes recorded at or after `since` (unix seconds): (id, counter, first address).
    fn used_codes(&self, since: u64) -> Result<Vec<(String, u64, String)>, StateError>;

    /// The admin API's mappings as last applied (JSON), if any were.
    fn admin_mappings(&self) -> Result<Option<String>, StateError>;
    /// Replaces the stored admin mappings (JSON).
    fn set_admin_mappings(&self, json: &str) -> Result<(), StateError>;

    /// The change counters of the tables the [`cache::StateCache`] holds (moved by every
    /// write, from any process), with each table whose counter differs from `known` read
    /// again: all in one consistent read that never waits for a writer.
    fn cached_changes(&self, known: Option<Versions>) -> Result<Changes, StateError>;

    /// Checks the store's integrity: `ok`, or what is wrong.
    fn check(&self) -> Result<String, StateError>;
    /// Writes a consistent copy of the store to `to` while it is in use.
    fn backup(&self, to: &Path) -> Result<(), StateError>;
}

/// Change counts of the tables the [`cache::StateCache`] keeps in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    pub tokens: u64,
    pub rendezvous: u64,
    pub tunnels: u64,
    pub ssh_keys: u64,
}

/// What [`StateStore::cached_changes`] found: the counters, and the tables that moved.
#[derive(Debug, Default)]
pub struct Changes {
    pub versions: Versions,
    pub tokens: Option<Vec<TokenRecord>>,
    pub rendezvous: Option<Vec<RendezvousRecord>>,
    pub tunnels: Option<Vec<TunnelRecord>>,
    pub ssh_keys: Option<Vec<SshKeyRecord>>,
}

pub use tunneld_core::clock::{now, rfc3339};
