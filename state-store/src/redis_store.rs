//! [`StateStore`](crate::StateStore) on Redis, for cluster mode: several tunneld nodes (and the `tunneld`
//! CLI) share one store. Synchronous, like the trait: one connection behind a mutex, dialled
//! again when a call finds it broken, every call bounded by [`TIMEOUT`].
//!
//! Every key is under `<prefix>:state:` (`prefix` as in `cluster.prefix`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `tokens` | hash | token name → [`TokenRecord`](crate::TokenRecord) (JSON) |
//! | `token_digests` | hash | token digest → token name (the unique index) |
//! | `tunnels` | hash | tunnel name → [`TunnelRecord`](crate::TunnelRecord) (JSON) |
//! | `tunnel_ids` | hash | a tunnel's `id_digest` → tunnel name (the unique index) |
//! | `ssh_keys` | hash | fingerprint → [`SshKeyRecord`](crate::SshKeyRecord) (JSON) |
//! | `rendezvous` | hash | id → [`RendezvousRecord`](crate::RendezvousRecord) (JSON) |
//! | `certificate_serials` | hash | serial → tunnel name (serials are unique store-wide) |
//! | `certificates:<tunnel>` | list | the tunnel's [`CertRecord`](crate::CertRecord)s (JSON), latest added first |
//! | `used_codes` | hash | `<counter>:<id>` → `{id, counter, addr, at}` (JSON) |
//! | `used_codes_at` | sorted set | `<counter>:<id>` scored by `at` (forgetting, `since`) |
//! | `admin_mappings` | string | the admin API's mappings (JSON) |
//! | `versions` | hash | `tokens`, `rendezvous`, `tunnels`, `ssh_keys` → change counter |
//!
//! Each write is one Lua script (the admin mappings: one SET): the uniqueness check, the
//! record, its index entries and the HINCRBY of its table's counter happen together or not
//! at all, whichever node writes. Changes to some fields of a record (revoke, use, tunnel
//! update) are computed here and written by a compare-and-set script, tried again when the
//! record changed in between; Lua never re-encodes a record. Reads that span keys (the
//! cache's [`cached_changes`](crate::StateStore::cached_changes), a backup's snapshot, a
//! token by digest) are one script each, so they see one consistent state.
//!
//! A call that fails because the connection broke (Redis restarted, the socket was closed)
//! is retried once on a new connection. A call that timed out is not retried (it may have
//! run): the connection is dropped and the error returned; the next call dials again. (A
//! write whose reply alone was lost to a broken connection runs twice: the second run
//! answers as if another writer had been first, e.g. `use_token` false.)

use crate::StateError;
use codec::Keys;
use redis::{Connection, ConnectionLike, FromRedisValue, RedisError, ScriptInvocation};
use std::sync::Mutex;
use std::time::Duration;

mod codec;
mod scripts;
mod snapshot;
mod store;
mod write;

/// The deadline of every call: dialling (with the handshake), each write and each read.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis state store. See the module documentation for the key layout.
pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<Connection>>,
    /// The URL without its password, for messages.
    url: String,
    prefix: String,
    keys: Keys,
    scripts: scripts::Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path/to.sock`) and checks that it answers; the store's keys are under
    /// `<prefix>:state:`. Fails with [`StateError::Open`] (the URL without its password)
    /// when the URL is malformed or Redis cannot be reached.
    pub fn open(url: &str, prefix: &str) -> Result<Self, StateError> {
        let shown = redact(url);
        let open_err = |reason: String| StateError::Open {
            path: shown.clone(),
            reason,
        };
        let client = redis::Client::open(url).map_err(|e| open_err(e.to_string()))?;
        let store = Self {
            client,
            conn: Mutex::new(None),
            url: shown.clone(),
            prefix: prefix.to_string(),
            keys: Keys::new(prefix),
            scripts: scripts::Scripts::new(),
        };
        let mut con = store
            .dial()
            .map_err(|e| open_err(format!("cannot connect: {e}")))?;
        redis::cmd("PING")
            .query::<String>(&mut con)
            .map_err(|e| open_err(format!("no answer to PING: {e}")))?;
        *tunneld_core::sync::lock(&store.conn) = Some(con);
        Ok(store)
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn dial(&self) -> redis::RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(TIMEOUT)?;
        con.set_read_timeout(Some(TIMEOUT))?;
        con.set_write_timeout(Some(TIMEOUT))?;
        Ok(con)
    }

    /// Runs `op` on the connection, dialling when there is none. When the connection turns
    /// out broken, `op` runs once more on a new one (not after a time-out: the command may
    /// have run, and a second wait would double the deadline).
    fn run<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let mut slot = tunneld_core::sync::lock(&self.conn);
        let mut retried = false;
        loop {
            let con = match slot.as_mut() {
                Some(con) => con,
                None => slot.insert(self.dial().map_err(|e| self.err(what, &e))?),
            };
            let e = match op(con) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let broken = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || !con.is_open();
            if broken {
                *slot = None;
            }
            if broken && !retried && !e.is_timeout() {
                tracing::debug!(redis = %self.url, error = %e, "state store: dialling Redis again");
                retried = true;
                continue;
            }
            return Err(self.err(what, &e));
        }
    }

    /// Invokes a script (loading it again after a Redis restart flushed it).
    fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, StateError> {
        self.run(what, |c| inv.invoke(c))
    }

    fn err(&self, what: &str, e: &RedisError) -> StateError {
        StateError::Db(format!("redis {}: {what}: {e}", self.url))
    }

    /// One field of a hash.
    fn hget(&self, key: &str, field: &str) -> Result<Option<String>, StateError> {
        let what = format!("HGET {key} {field}");
        self.run(&what, |c| redis::cmd("HGET").arg(key).arg(field).query(c))
    }

    /// Every field of a hash, as (field, value).
    fn hgetall(&self, key: &str) -> Result<Vec<(String, String)>, StateError> {
        let what = format!("HGETALL {key}");
        self.run(&what, |c| redis::cmd("HGETALL").arg(key).query(c))
    }
}

/// `url` with the password (user info, or a `pass=`/`password=` query parameter) replaced
/// by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(s) = out.find("://") {
        let start = s + 3;
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            out.replace_range(start..start + at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.replace_range(q + 1.., &query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests;
