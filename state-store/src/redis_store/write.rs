//! The shapes of write (and single-table read) the store's methods are made of.

use super::codec::{decode, decode_all, encode};
use super::RedisStore;
use crate::StateError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How often a compare-and-set is tried before giving up (each failure means another writer
/// changed the same record in between).
const CAS_TRIES: usize = 32;

/// What [`RedisStore::modify`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Modified {
    /// There is no such record.
    Missing,
    /// The change left it as it was: nothing written.
    Unchanged,
    Written,
}

impl RedisStore {
    /// Adds `record` as `field` of `table` (and `index.1` → `field` in hash `index.0`),
    /// moving `counter`; false when the field or the index entry is taken.
    pub(super) fn insert(
        &self,
        what: &str,
        table: &str,
        counter: &str,
        field: &str,
        record: &str,
        index: Option<(&str, &str)>,
    ) -> Result<bool, StateError> {
        let (index_key, index_field) = index.unwrap_or((table, ""));
        let mut inv = self.scripts.insert.prepare_invoke();
        inv.key(table)
            .key(&self.keys.versions)
            .key(index_key)
            .arg(field)
            .arg(record)
            .arg(counter)
            .arg(index_field);
        Ok(self.eval::<i64>(what, &inv)? == 1)
    }

    /// Applies `change` to the record `field` of `table` and writes it back (moving
    /// `counter`) unless it changed in between, in which case `change` is applied again to
    /// what is stored now. `change` returns false to write nothing.
    pub(super) fn modify<T: Serialize + DeserializeOwned>(
        &self,
        what: &str,
        table: &str,
        counter: &str,
        field: &str,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Modified, StateError> {
        for _ in 0..CAS_TRIES {
            let Some(cur) = self.hget(table, field)? else {
                return Ok(Modified::Missing);
            };
            let mut rec: T = decode(table, field, &cur)?;
            if !change(&mut rec) {
                return Ok(Modified::Unchanged);
            }
            let new = encode(&rec)?;
            let mut inv = self.scripts.replace.prepare_invoke();
            inv.key(table)
                .key(&self.keys.versions)
                .arg(field)
                .arg(&cur)
                .arg(&new)
                .arg(counter);
            match self.eval::<i64>(what, &inv)? {
                0 => return Ok(Modified::Missing),
                1 => return Ok(Modified::Written),
                _ => continue,
            }
        }
        Err(StateError::Db(format!(
            "redis {}: {what}: `{field}` kept changing under {CAS_TRIES} tries",
            self.url
        )))
    }

    /// Replaces the record `field` of `table` whatever it is, moving `counter`; false when
    /// there is none.
    pub(super) fn replace(
        &self,
        what: &str,
        table: &str,
        counter: &str,
        field: &str,
        record: &str,
    ) -> Result<bool, StateError> {
        let mut inv = self.scripts.replace.prepare_invoke();
        inv.key(table)
            .key(&self.keys.versions)
            .arg(field)
            .arg("")
            .arg(record)
            .arg(counter);
        Ok(self.eval::<i64>(what, &inv)? == 1)
    }

    /// Removes the record `field` of `table`, moving `counter`; false when there was none.
    pub(super) fn remove(
        &self,
        what: &str,
        table: &str,
        counter: &str,
        field: &str,
    ) -> Result<bool, StateError> {
        let mut inv = self.scripts.remove.prepare_invoke();
        inv.key(table)
            .key(&self.keys.versions)
            .arg(field)
            .arg(counter);
        Ok(self.eval::<i64>(what, &inv)? == 1)
    }

    /// The record `field` of `table`.
    pub(super) fn record<T: DeserializeOwned>(
        &self,
        table: &str,
        field: &str,
    ) -> Result<Option<T>, StateError> {
        self.hget(table, field)?
            .map(|json| decode(table, field, &json))
            .transpose()
    }

    /// Every record of `table`.
    pub(super) fn records<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StateError> {
        decode_all(table, &self.hgetall(table)?)
    }
}
