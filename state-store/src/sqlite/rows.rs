//! Rows to records and back.

use crate::records::{
    CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelFlavour, TunnelRecord,
};
use crate::StateError;
use rusqlite::{Connection, Row};

pub(super) fn db(e: rusqlite::Error) -> StateError {
    StateError::Db(e.to_string())
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    s: &str,
    what: &str,
) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what}: {e}").into(),
        )
    })
}

pub(super) fn u64_col(row: &Row, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}

pub(super) fn token_row(row: &Row) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        name: row.get(0)?,
        digest: row.get(1)?,
        max_ports: row.get(2)?,
        max_names: row.get(3)?,
        expires_at: u64_col(row, 4)?,
        single_use: row.get(5)?,
        used_at: u64_col(row, 6)?,
        transports: match row.get::<_, Option<String>>(7)? {
            Some(s) => Some(from_json(&s, "tokens.transports")?),
            None => None,
        },
        revoked_at: u64_col(row, 8)?,
        created_at: u64_col(row, 9)?.unwrap_or(0),
    })
}

pub(super) const TOKEN_COLS: &str = "name, digest, max_ports, max_names, expires_at, single_use, used_at, transports, revoked_at, created_at";

pub(super) fn tunnel_row(row: &Row) -> rusqlite::Result<TunnelRecord> {
    Ok(TunnelRecord {
        name: row.get(0)?,
        owner: row.get(1)?,
        protocols: from_json(&row.get::<_, String>(2)?, "tunnels.protocols")?,
        ports: from_json(&row.get::<_, String>(3)?, "tunnels.ports")?,
        created_at: u64_col(row, 4)?.unwrap_or(0),
        expires_at: u64_col(row, 5)?,
        flavour: {
            let s = row.get::<_, Option<String>>(6)?;
            TunnelFlavour::parse(s.as_deref()).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    format!("tunnels.flavour: unknown `{}`", s.unwrap_or_default()).into(),
                )
            })?
        },
        id_digest: row.get(7)?,
    })
}

pub(super) const TUNNEL_COLS: &str =
    "name, owner, protocols, ports, created_at, expires_at, flavour, id_digest";

/// The stored form of a flavour: NULL for native (as rows of schema 1 read).
pub(super) fn flavour_col(f: TunnelFlavour) -> Option<&'static str> {
    (f != TunnelFlavour::Native).then(|| f.as_str())
}

pub(super) fn ssh_key_row(row: &Row) -> rusqlite::Result<SshKeyRecord> {
    Ok(SshKeyRecord {
        fingerprint: row.get(0)?,
        key: row.get(1)?,
        comment: row.get(2)?,
        client: row.get(3)?,
        tunnel: row.get(4)?,
        created_at: u64_col(row, 5)?.unwrap_or(0),
    })
}

pub(super) const SSH_KEY_COLS: &str = "fingerprint, key, comment, client, tunnel, created_at";

/// Every SSH key, or those of one client.
pub(super) fn ssh_keys_of(
    c: &Connection,
    client: Option<&str>,
) -> Result<Vec<SshKeyRecord>, StateError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {SSH_KEY_COLS} FROM ssh_keys WHERE ?1 IS NULL OR client = ?1 ORDER BY client, fingerprint"
        ))
        .map_err(db)?;
    let rows = st.query_map([client], ssh_key_row).map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

pub(super) fn cert_row(row: &Row) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: row.get(0)?,
        tunnel: row.get(1)?,
        owner: row.get(2)?,
        names: from_json(&row.get::<_, String>(3)?, "certificates.names")?,
        not_after: u64_col(row, 4)?.unwrap_or(0),
        pem: row.get(5)?,
        created_at: u64_col(row, 6)?.unwrap_or(0),
    })
}

pub(super) fn rendezvous_row(row: &Row) -> rusqlite::Result<RendezvousRecord> {
    Ok(RendezvousRecord {
        id: row.get(0)?,
        secret: row.get(1)?,
        step: u64_col(row, 2)?.unwrap_or(30),
        client: row.get(3)?,
        created: u64_col(row, 4)?.unwrap_or(0),
    })
}

/// Maps a uniqueness violation to [`StateError::Exists`].
pub(super) fn insert_err(what: String) -> impl FnOnce(rusqlite::Error) -> StateError {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StateError::Exists(what),
        _ => db(e),
    }
}

pub(super) fn opt(v: Option<u64>) -> Option<i64> {
    v.map(|v| v.min(i64::MAX as u64) as i64)
}

/// Every token, by name.
pub(super) fn all_tokens(c: &Connection) -> Result<Vec<TokenRecord>, StateError> {
    let mut st = c
        .prepare_cached(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY name"))
        .map_err(db)?;
    let rows = st.query_map([], token_row).map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// Every tunnel, or those of one owner.
pub(super) fn tunnels_of(
    c: &Connection,
    owner: Option<&str>,
) -> Result<Vec<TunnelRecord>, StateError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {TUNNEL_COLS} FROM tunnels WHERE ?1 IS NULL OR owner = ?1 ORDER BY created_at, name"
        ))
        .map_err(db)?;
    let rows = st.query_map([owner], tunnel_row).map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// Every rendezvous id, by id.
pub(super) fn all_rendezvous(c: &Connection) -> Result<Vec<RendezvousRecord>, StateError> {
    let mut st = c
        .prepare_cached("SELECT id, secret, step, client, created FROM rendezvous ORDER BY id")
        .map_err(db)?;
    let rows = st.query_map([], rendezvous_row).map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}
