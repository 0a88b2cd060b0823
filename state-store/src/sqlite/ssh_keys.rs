//! The `ssh_keys` table, and deleting a tunnel with the keys bound to it.

use super::rows::{db, insert_err, opt, ssh_key_row, ssh_keys_of, SSH_KEY_COLS};
use crate::records::SshKeyRecord;
use crate::StateError;
use rusqlite::{params, Connection, OptionalExtension};

pub(super) fn add(c: &Connection, k: &SshKeyRecord) -> Result<(), StateError> {
    c.execute(
        &format!("INSERT INTO ssh_keys ({SSH_KEY_COLS}) VALUES (?1,?2,?3,?4,?5,?6)"),
        params![
            k.fingerprint,
            k.key,
            k.comment,
            k.client,
            k.tunnel,
            opt(Some(k.created_at)),
        ],
    )
    .map(drop)
    .map_err(insert_err(format!("SSH key {}", k.fingerprint)))
}

pub(super) fn one(c: &Connection, fingerprint: &str) -> Result<Option<SshKeyRecord>, StateError> {
    c.query_row(
        &format!("SELECT {SSH_KEY_COLS} FROM ssh_keys WHERE fingerprint = ?1"),
        [fingerprint],
        ssh_key_row,
    )
    .optional()
    .map_err(db)
}

pub(super) fn of_client(
    c: &Connection,
    client: Option<&str>,
) -> Result<Vec<SshKeyRecord>, StateError> {
    ssh_keys_of(c, client)
}

pub(super) fn remove(c: &Connection, fingerprint: &str) -> Result<bool, StateError> {
    c.execute("DELETE FROM ssh_keys WHERE fingerprint = ?1", [fingerprint])
        .map(|n| n > 0)
        .map_err(db)
}

/// Deletes a tunnel and the keys bound to it, in one transaction.
pub(super) fn delete_tunnel(c: &Connection, name: &str) -> Result<bool, StateError> {
    let tx = c.unchecked_transaction().map_err(db)?;
    let n = tx
        .execute("DELETE FROM tunnels WHERE name = ?1", [name])
        .map_err(db)?;
    tx.execute("DELETE FROM ssh_keys WHERE tunnel = ?1", [name])
        .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(n > 0)
}
