//! The store's tables, and the change counters the state cache watches.

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
PRAGMA user_version = 1;
";

/// The tables [`StateStore::versions`] counts changes of; a trigger per table and change
/// kind bumps its counter in the writer's own transaction, whichever process writes.
pub(super) const VERSIONED: [&str; 3] = ["tokens", "rendezvous", "tunnels"];

pub(super) fn version_triggers() -> String {
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
