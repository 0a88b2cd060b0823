//! The store's tables, and the change counters the state cache watches.
//!
//! Schema 1 is [`SCHEMA`]; [`upgrade`] brings a store of any older schema to
//! [`SCHEMA_VERSION`] in one transaction (2: `tunnels.flavour`, `tunnels.id_digest` and the
//! `ssh_keys` table).

use rusqlite::Connection;

/// The schema this tunneld writes.
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    max_ports INTEGER,
    max_names INTEGER,
    expires_at INTEGER,
    single_use INTEGER NOT NULL DEFAULT 0,
    used_at INTEGER,
    transports TEXT,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tunnels (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    protocols TEXT NOT NULL,
    ports TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS tunnels_owner ON tunnels(owner);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    tunnel TEXT NOT NULL,
    owner TEXT NOT NULL,
    names TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    pem TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_tunnel ON certificates(tunnel);
CREATE TABLE IF NOT EXISTS rendezvous (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    step INTEGER NOT NULL,
    client TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS used_codes (
    id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    addr TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (id, counter)
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    kind TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
";

/// Schema 2's additions to schema 1 (the columns are added by [`upgrade`]).
const SCHEMA_2: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS tunnels_id_digest ON tunnels(id_digest);
CREATE TABLE IF NOT EXISTS ssh_keys (
    fingerprint TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    comment TEXT,
    client TEXT NOT NULL,
    tunnel TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ssh_keys_client ON ssh_keys(client);
CREATE INDEX IF NOT EXISTS ssh_keys_tunnel ON ssh_keys(tunnel);
";

/// Creates the tables a new store needs and upgrades an older one, in one write
/// transaction (two processes opening an old store at once upgrade it once).
pub(super) fn upgrade(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    match upgrade_steps(c) {
        Ok(()) => c.execute_batch("COMMIT"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn upgrade_steps(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA)?;
    let has = |col: &str| -> rusqlite::Result<bool> {
        let mut st = c.prepare("SELECT 1 FROM pragma_table_info('tunnels') WHERE name = ?1")?;
        st.exists([col])
    };
    if !has("flavour")? {
        c.execute_batch("ALTER TABLE tunnels ADD COLUMN flavour TEXT")?;
    }
    if !has("id_digest")? {
        c.execute_batch("ALTER TABLE tunnels ADD COLUMN id_digest TEXT")?;
    }
    c.execute_batch(SCHEMA_2)?;
    c.execute_batch(&version_triggers())?;
    c.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// The tables [`StateStore::versions`] counts changes of; a trigger per table and change
/// kind bumps its counter in the writer's own transaction, whichever process writes.
pub(super) const VERSIONED: [&str; 4] = ["tokens", "rendezvous", "tunnels", "ssh_keys"];

fn version_triggers() -> String {
    let mut sql = String::new();
    for table in VERSIONED {
        sql.push_str(&format!(
            "INSERT OR IGNORE INTO versions (kind, n) VALUES ('{table}', 0);\n"
        ));
        for op in ["INSERT", "UPDATE", "DELETE"] {
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS {table}_{}_version AFTER {op} ON {table} \
                 BEGIN UPDATE versions SET n = n + 1 WHERE kind = '{table}'; END;\n",
                op.to_ascii_lowercase()
            ));
        }
    }
    sql
}
