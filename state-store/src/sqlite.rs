//! [`StateStore`] on SQLite (rusqlite with the bundled library): one file, WAL journal,
//! `synchronous=FULL`, a busy timeout so the CLI and a running tunneld share it.

use crate::records::{CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelRecord};
use crate::{Changes, StateError, StateStore, Versions};
use rows::*;
use rusqlite::{params, Connection, OptionalExtension};
use schema::SCHEMA_VERSION;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

mod cache_read;
mod rows;
mod schema;
mod ssh_keys;

/// The SQLite state store.
pub struct SqliteStore {
    /// Declared first so it closes first: the last connection to close checkpoints the
    /// WAL and removes it, and only `conn` can write.
    probe: Mutex<Connection>,
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |reason: String| StateError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_err(format!("cannot enable WAL: {e}")))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_err(e.to_string()))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| open_err(format!("not a tunneld state store: {e}")))?;
        if version > SCHEMA_VERSION {
            return Err(open_err(format!(
                "written by a newer tunneld (schema {version}; this one knows {SCHEMA_VERSION})"
            )));
        }
        schema::upgrade(&conn).map_err(|e| open_err(format!("not a tunneld state store: {e}")))?;
        // A second connection, read-only, for the state cache's checks and reloads: they
        // never queue behind a write on the first (WAL readers do not wait for writers).
        let probe = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.busy_timeout(Duration::from_secs(2)).map(|()| c))
        .map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            probe: Mutex::new(probe),
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        tunneld_core::sync::lock(&self.conn)
    }

    /// Runs `f` in one write transaction, committed when it returns `Ok` (a bulk copy: one
    /// sync to disk instead of one per write). `f` must not call [`StateStore::delete_tunnel`]
    /// (a transaction of its own).
    pub(crate) fn in_transaction<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.conn().execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        match f(self) {
            Ok(v) => {
                self.conn().execute_batch("COMMIT").map_err(db)?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn().execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl StateStore for SqliteStore {
    fn add_token(&self, t: &TokenRecord) -> Result<(), StateError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
                ),
                params![
                    t.name,
                    t.digest,
                    t.max_ports,
                    t.max_names,
                    opt(t.expires_at),
                    t.single_use,
                    opt(t.used_at),
                    t.transports.as_ref().map(json),
                    opt(t.revoked_at),
                    opt(Some(t.created_at)),
                ],
            )
            .map(|_| ())
            .map_err(insert_err(format!("token `{}`", t.name)))
    }

    fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StateError> {
        self.conn()
            .query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE digest = ?1"),
                [digest],
                token_row,
            )
            .optional()
            .map_err(db)
    }

    fn token(&self, name: &str) -> Result<Option<TokenRecord>, StateError> {
        self.conn()
            .query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE name = ?1"),
                [name],
                token_row,
            )
            .optional()
            .map_err(db)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        all_tokens(&self.conn())
    }

    fn revoke_token(&self, name: &str, at: u64) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE name = ?1",
                params![name, opt(Some(at))],
            )
            .map(|n| n > 0)
            .map_err(db)
    }

    fn use_token(&self, name: &str, at: u64) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE tokens SET used_at = ?2 WHERE name = ?1 AND used_at IS NULL",
                params![name, opt(Some(at))],
            )
            .map(|n| n > 0)
            .map_err(db)
    }

    fn add_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError> {
        self.conn()
            .execute(
                &format!("INSERT INTO tunnels ({TUNNEL_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
                params![
                    t.name,
                    t.owner,
                    json(&t.protocols),
                    json(&t.ports),
                    opt(Some(t.created_at)),
                    opt(t.expires_at),
                    flavour_col(t.flavour),
                    t.id_digest,
                ],
            )
            .map(|_| ())
            .map_err(insert_err(format!("tunnel `{}`", t.name)))
    }

    fn update_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError> {
        let n = self
            .conn()
            .execute(
                "UPDATE tunnels SET owner = ?2, protocols = ?3, ports = ?4, expires_at = ?5 WHERE name = ?1",
                params![t.name, t.owner, json(&t.protocols), json(&t.ports), opt(t.expires_at)],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StateError::Invalid(format!("no tunnel `{}`", t.name)));
        }
        Ok(())
    }

    fn tunnel(&self, name: &str) -> Result<Option<TunnelRecord>, StateError> {
        self.conn()
            .query_row(
                &format!("SELECT {TUNNEL_COLS} FROM tunnels WHERE name = ?1"),
                [name],
                tunnel_row,
            )
            .optional()
            .map_err(db)
    }

    fn tunnels(&self, owner: Option<&str>) -> Result<Vec<TunnelRecord>, StateError> {
        tunnels_of(&self.conn(), owner)
    }

    fn delete_tunnel(&self, name: &str) -> Result<bool, StateError> {
        ssh_keys::delete_tunnel(&self.conn(), name)
    }

    fn add_ssh_key(&self, k: &SshKeyRecord) -> Result<(), StateError> {
        ssh_keys::add(&self.conn(), k)
    }

    fn ssh_key(&self, fingerprint: &str) -> Result<Option<SshKeyRecord>, StateError> {
        ssh_keys::one(&self.conn(), fingerprint)
    }

    fn ssh_keys(&self, client: Option<&str>) -> Result<Vec<SshKeyRecord>, StateError> {
        ssh_keys::of_client(&self.conn(), client)
    }

    fn remove_ssh_key(&self, fingerprint: &str) -> Result<bool, StateError> {
        ssh_keys::remove(&self.conn(), fingerprint)
    }

    fn add_certificate(&self, c: &CertRecord) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO certificates (serial, tunnel, owner, names, not_after, pem, created_at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![
                    c.serial,
                    c.tunnel,
                    c.owner,
                    json(&c.names),
                    opt(Some(c.not_after)),
                    c.pem,
                    opt(Some(c.created_at)),
                ],
            )
            .map(|_| ())
            .map_err(insert_err(format!("certificate {}", c.serial)))
    }

    fn certificates(&self, tunnel: &str) -> Result<Vec<CertRecord>, StateError> {
        let c = self.conn();
        let mut st = c
            .prepare(
                "SELECT serial, tunnel, owner, names, not_after, pem, created_at FROM certificates WHERE tunnel = ?1 ORDER BY created_at DESC, rowid DESC",
            )
            .map_err(db)?;
        let rows = st.query_map([tunnel], cert_row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn add_rendezvous(&self, r: &RendezvousRecord) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO rendezvous (id, secret, step, client, created) VALUES (?1,?2,?3,?4,?5)",
                params![r.id, r.secret, opt(Some(r.step)), r.client, opt(Some(r.created))],
            )
            .map(|_| ())
            .map_err(insert_err(format!("id `{}`", r.id)))
    }

    fn rendezvous(&self, id: &str) -> Result<Option<RendezvousRecord>, StateError> {
        self.conn()
            .query_row(
                "SELECT id, secret, step, client, created FROM rendezvous WHERE id = ?1",
                [id],
                rendezvous_row,
            )
            .optional()
            .map_err(db)
    }

    fn rendezvous_ids(&self) -> Result<Vec<RendezvousRecord>, StateError> {
        all_rendezvous(&self.conn())
    }

    fn update_rendezvous(&self, r: &RendezvousRecord) -> Result<bool, StateError> {
        self.conn()
            .execute(
                "UPDATE rendezvous SET secret = ?2, step = ?3, client = ?4, created = ?5 WHERE id = ?1",
                params![r.id, r.secret, opt(Some(r.step)), r.client, opt(Some(r.created))],
            )
            .map(|n| n > 0)
            .map_err(db)
    }

    fn remove_rendezvous(&self, id: &str) -> Result<bool, StateError> {
        self.conn()
            .execute("DELETE FROM rendezvous WHERE id = ?1", [id])
            .map(|n| n > 0)
            .map_err(db)
    }

    fn add_used_code(
        &self,
        id: &str,
        counter: u64,
        addr: &str,
        at: u64,
        forget_before: u64,
    ) -> Result<(), StateError> {
        let c = self.conn();
        c.execute(
            "DELETE FROM used_codes WHERE at < ?1",
            params![forget_before as i64],
        )
        .map_err(db)?;
        c.execute(
            "INSERT OR IGNORE INTO used_codes (id, counter, addr, at) VALUES (?1, ?2, ?3, ?4)",
            params![id, counter as i64, addr, at as i64],
        )
        .map(drop)
        .map_err(db)
    }

    fn used_codes(&self, since: u64) -> Result<Vec<(String, u64, String)>, StateError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id, counter, addr FROM used_codes WHERE at >= ?1")
            .map_err(db)?;
        let rows = st
            .query_map(params![since as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn admin_mappings(&self) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT value FROM settings WHERE key = 'admin_mappings'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    fn set_admin_mappings(&self, json: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT INTO settings (key, value) VALUES ('admin_mappings', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![json],
            )
            .map(drop)
            .map_err(db)
    }

    fn cached_changes(&self, known: Option<Versions>) -> Result<Changes, StateError> {
        let c = tunneld_core::sync::lock(&self.probe);
        cache_read::changes(&c, known)
    }

    fn check(&self) -> Result<String, StateError> {
        let c = self.conn();
        let mut st = c.prepare("PRAGMA integrity_check").map_err(db)?;
        let lines: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        Ok(lines.join("\n"))
    }

    fn backup(&self, to: &Path) -> Result<(), StateError> {
        if to.exists() {
            return Err(StateError::Exists(to.display().to_string()));
        }
        let target = to
            .to_str()
            .ok_or_else(|| StateError::Invalid(format!("{}: not a UTF-8 path", to.display())))?;
        self.conn()
            .execute("VACUUM INTO ?1", [target])
            .map(|_| ())
            .map_err(db)
    }
}

#[cfg(test)]
mod tests;
