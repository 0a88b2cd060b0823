//! What the state cache asks for: the change counters, and the tables whose counter moved,
//! read in one transaction on the read-only connection.

use super::rows::{all_rendezvous, all_tokens, db, ssh_keys_of, tunnels_of};
use crate::{Changes, StateError, Versions};
use rusqlite::Connection;

pub(super) fn changes(c: &Connection, known: Option<Versions>) -> Result<Changes, StateError> {
    // One read transaction: the counters and the tables are one consistent snapshot.
    let tx = c.unchecked_transaction().map_err(db)?;
    let versions = counters(&tx)?;
    let moved = |f: fn(&Versions) -> u64| known.map(|k| f(&k)) != Some(f(&versions));
    let out = Changes {
        versions,
        tokens: match moved(|v| v.tokens) {
            true => Some(all_tokens(&tx)?),
            false => None,
        },
        rendezvous: match moved(|v| v.rendezvous) {
            true => Some(all_rendezvous(&tx)?),
            false => None,
        },
        tunnels: match moved(|v| v.tunnels) {
            true => Some(tunnels_of(&tx, None)?),
            false => None,
        },
        ssh_keys: match moved(|v| v.ssh_keys) {
            true => Some(ssh_keys_of(&tx, None)?),
            false => None,
        },
    };
    drop(tx);
    Ok(out)
}

fn counters(c: &Connection) -> Result<Versions, StateError> {
    let mut st = c
        .prepare_cached("SELECT kind, n FROM versions")
        .map_err(db)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(db)?;
    let mut v = Versions::default();
    for row in rows {
        let (kind, n) = row.map_err(db)?;
        let n = n.max(0) as u64;
        match kind.as_str() {
            "tokens" => v.tokens = n,
            "rendezvous" => v.rendezvous = n,
            "tunnels" => v.tunnels = n,
            "ssh_keys" => v.ssh_keys = n,
            _ => {}
        }
    }
    Ok(v)
}
