//! The reads of many keys at one instant: the state cache's [`RedisStore::changes`], and
//! the whole store for `check` and `backup` (a SQLite file, as `tunneld state backup`
//! writes for the SQLite store).

use super::codec::{count, counter, decode, items, pairs, text, UsedCode};
use super::store::{sort_rendezvous, sort_ssh_keys, sort_tokens, sort_tunnels};
use super::RedisStore;
use crate::records::{CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelRecord};
use crate::sqlite::SqliteStore;
use crate::{Changes, StateError, StateStore, Versions};
use redis::Value;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;

type Pairs = Vec<(String, String)>;

/// A table read again by [`RedisStore::changes`], decoded and in SQLite's order.
fn decode_sorted<T: DeserializeOwned>(
    key: &str,
    read: Option<Pairs>,
    sort: fn(&mut [T]),
) -> Result<Option<Vec<T>>, StateError> {
    let Some(pairs) = read else { return Ok(None) };
    let mut all: Vec<T> = super::codec::decode_all(key, &pairs)?;
    sort(&mut all);
    Ok(Some(all))
}

/// Every key's content, read by one script.
struct Dump {
    tokens: Pairs,
    tunnels: Pairs,
    ssh_keys: Pairs,
    rendezvous: Pairs,
    used_codes: Pairs,
    admin_mappings: Option<String>,
    /// Per tunnel, its certificates (latest added first).
    certificates: Vec<(String, Vec<String>)>,
    versions: Pairs,
    token_digests: Pairs,
    tunnel_ids: Pairs,
}

/// A [`Dump`]'s records, each decoded (or named in `problems`).
#[derive(Default)]
struct Records {
    tokens: Vec<TokenRecord>,
    tunnels: Vec<TunnelRecord>,
    ssh_keys: Vec<SshKeyRecord>,
    rendezvous: Vec<RendezvousRecord>,
    used_codes: Vec<UsedCode>,
    /// Oldest added first.
    certificates: Vec<CertRecord>,
    admin_mappings: Option<String>,
    problems: Vec<String>,
}

/// Decodes each of `pairs`, checking that the record's own name is its field.
fn each<T: DeserializeOwned>(
    key: &str,
    pairs: &[(String, String)],
    name: fn(&T) -> String,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(pairs.len());
    for (field, json) in pairs {
        match decode::<T>(key, field, json) {
            Ok(r) if name(&r) == *field => out.push(r),
            Ok(r) => problems.push(format!(
                "redis key `{key}` field `{field}` holds the record of `{}`",
                name(&r)
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    out
}

/// Checks that `index` (value → record field) and the records' values agree both ways.
fn index_agrees(
    key: &str,
    index: &[(String, String)],
    records: &[(String, Option<String>)],
    problems: &mut Vec<String>,
) {
    let by_value: HashMap<&str, &str> = index
        .iter()
        .map(|(v, f)| (v.as_str(), f.as_str()))
        .collect();
    let mut indexed = 0;
    for (field, value) in records {
        let Some(value) = value else { continue };
        indexed += 1;
        if by_value.get(value.as_str()) != Some(&field.as_str()) {
            problems.push(format!("redis key `{key}` lacks `{value}` → `{field}`"));
        }
    }
    if indexed != index.len() {
        problems.push(format!(
            "redis key `{key}` has {} entries for {indexed} records",
            index.len()
        ));
    }
}

impl RedisStore {
    /// [`StateStore::cached_changes`]: one script reads the counters and the tables whose
    /// counter moved.
    pub(super) fn changes(&self, known: Option<Versions>) -> Result<Changes, StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.changes.prepare_invoke();
        inv.key(&k.versions)
            .key(&k.tokens)
            .key(&k.rendezvous)
            .key(&k.tunnels)
            .key(&k.ssh_keys);
        match known {
            Some(v) => inv
                .arg(v.tokens)
                .arg(v.rendezvous)
                .arg(v.tunnels)
                .arg(v.ssh_keys),
            None => inv.arg("").arg("").arg("").arg(""),
        };
        let what = "cached changes";
        let mut reply = items(self.eval(what, &inv)?, what)?.into_iter();
        let mut counters = items(reply.next().unwrap_or_default(), what)?.into_iter();
        let mut next_count = |name: &str| {
            let v = text(counters.next().unwrap_or_default(), what)?;
            count(&k.versions, name, v.as_deref())
        };
        let versions = Versions {
            tokens: next_count(counter::TOKENS)?,
            rendezvous: next_count(counter::RENDEZVOUS)?,
            tunnels: next_count(counter::TUNNELS)?,
            ssh_keys: next_count(counter::SSH_KEYS)?,
        };
        let moved = |f: fn(&Versions) -> u64| known.map(|k| f(&k)) != Some(f(&versions));
        let mut table = |key: &str, moved: bool| -> Result<Option<Pairs>, StateError> {
            match (reply.next().unwrap_or_default(), moved) {
                (_, false) => Ok(None),
                (Value::Nil, true) => Err(StateError::Db(format!(
                    "redis {what}: `{key}` moved but was not read"
                ))),
                (v, true) => pairs(v, what).map(Some),
            }
        };
        let tokens = table(&k.tokens, moved(|v| v.tokens))?;
        let rendezvous = table(&k.rendezvous, moved(|v| v.rendezvous))?;
        let tunnels = table(&k.tunnels, moved(|v| v.tunnels))?;
        let ssh_keys = table(&k.ssh_keys, moved(|v| v.ssh_keys))?;
        Ok(Changes {
            versions,
            tokens: decode_sorted(&k.tokens, tokens, sort_tokens)?,
            rendezvous: decode_sorted(&k.rendezvous, rendezvous, sort_rendezvous)?,
            tunnels: decode_sorted(&k.tunnels, tunnels, sort_tunnels)?,
            ssh_keys: decode_sorted(&k.ssh_keys, ssh_keys, sort_ssh_keys)?,
        })
    }

    fn dump(&self) -> Result<Dump, StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.dump.prepare_invoke();
        for key in [
            &k.tokens,
            &k.tunnels,
            &k.ssh_keys,
            &k.rendezvous,
            &k.used_codes,
            &k.admin_mappings,
            &k.certificate_serials,
            &k.versions,
            &k.token_digests,
            &k.tunnel_ids,
        ] {
            inv.key(key);
        }
        inv.arg(&k.certificates);
        let what = "snapshot";
        let mut r = items(self.eval(what, &inv)?, what)?.into_iter();
        let mut next = || r.next().unwrap_or_default();
        let tokens = pairs(next(), what)?;
        let tunnels = pairs(next(), what)?;
        let ssh_keys = pairs(next(), what)?;
        let rendezvous = pairs(next(), what)?;
        let used_codes = pairs(next(), what)?;
        let admin_mappings = text(next(), what)?;
        let mut certificates = Vec::new();
        let mut flat = items(next(), what)?.into_iter();
        while let (Some(tunnel), Some(list)) = (flat.next(), flat.next()) {
            let tunnel = text(tunnel, what)?.unwrap_or_default();
            let list = items(list, what)?
                .into_iter()
                .map(|v| Ok(text(v, what)?.unwrap_or_default()))
                .collect::<Result<Vec<_>, StateError>>()?;
            certificates.push((tunnel, list));
        }
        Ok(Dump {
            tokens,
            tunnels,
            ssh_keys,
            rendezvous,
            used_codes,
            admin_mappings,
            certificates,
            versions: pairs(next(), what)?,
            token_digests: pairs(next(), what)?,
            tunnel_ids: pairs(next(), what)?,
        })
    }

    /// Decodes a dump, naming each malformed record or index entry in `problems`.
    fn decode_dump(&self, d: Dump) -> Records {
        let k = &self.keys;
        let mut r = Records {
            admin_mappings: d.admin_mappings,
            ..Records::default()
        };
        let p = &mut r.problems;
        for (field, v) in &d.versions {
            if let Err(e) = count(&k.versions, field, Some(v)) {
                p.push(e.to_string());
            }
        }
        r.tokens = each(&k.tokens, &d.tokens, |t: &TokenRecord| t.name.clone(), p);
        r.tunnels = each(&k.tunnels, &d.tunnels, |t: &TunnelRecord| t.name.clone(), p);
        r.ssh_keys = each(
            &k.ssh_keys,
            &d.ssh_keys,
            |s: &SshKeyRecord| s.fingerprint.clone(),
            p,
        );
        r.rendezvous = each(
            &k.rendezvous,
            &d.rendezvous,
            |r: &RendezvousRecord| r.id.clone(),
            p,
        );
        r.used_codes = each(
            &k.used_codes,
            &d.used_codes,
            |c: &UsedCode| UsedCode::field(&c.id, c.counter),
            p,
        );
        let digests: Vec<_> = r
            .tokens
            .iter()
            .map(|t| (t.name.clone(), Some(t.digest.clone())))
            .collect();
        index_agrees(&k.token_digests, &d.token_digests, &digests, p);
        let ids: Vec<_> = r
            .tunnels
            .iter()
            .map(|t| (t.name.clone(), t.id_digest.clone()))
            .collect();
        index_agrees(&k.tunnel_ids, &d.tunnel_ids, &ids, p);
        for (tunnel, list) in &d.certificates {
            let key = k.certificates_of(tunnel);
            for (i, json) in list.iter().enumerate().rev() {
                match decode::<CertRecord>(&key, &format!("#{i}"), json) {
                    Ok(c) if c.tunnel == *tunnel => r.certificates.push(c),
                    Ok(c) => p.push(format!(
                        "redis key `{key}` holds a certificate of `{}`",
                        c.tunnel
                    )),
                    Err(e) => p.push(e.to_string()),
                }
            }
        }
        r
    }

    /// [`StateStore::check`]: Redis answers, and every counter, record and index entry
    /// reads back.
    pub(super) fn check_all(&self) -> Result<String, StateError> {
        let pong: String = self.run("PING", |c| redis::cmd("PING").query(c))?;
        if pong != "PONG" {
            return Ok(format!("redis {}: PING answered `{pong}`", self.url));
        }
        let r = self.decode_dump(self.dump()?);
        Ok(match r.problems.is_empty() {
            true => "ok".into(),
            false => r.problems.join("\n"),
        })
    }

    /// [`StateStore::backup`]: a SQLite store at `to` holding every record, from one
    /// snapshot. Fails on any malformed record rather than leave it out.
    pub(super) fn backup_to(&self, to: &Path) -> Result<(), StateError> {
        if to.exists() {
            return Err(StateError::Exists(to.display().to_string()));
        }
        let r = self.decode_dump(self.dump()?);
        if !r.problems.is_empty() {
            return Err(StateError::Db(format!(
                "not backed up: {}",
                r.problems.join("; ")
            )));
        }
        let written = write_sqlite(to, r);
        if written.is_err() {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = to.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
        written
    }
}

/// Copies every record into a new SQLite store, in one transaction.
fn write_sqlite(to: &Path, mut r: Records) -> Result<(), StateError> {
    let db = SqliteStore::open(to)?;
    sort_tokens(&mut r.tokens);
    sort_tunnels(&mut r.tunnels);
    sort_ssh_keys(&mut r.ssh_keys);
    sort_rendezvous(&mut r.rendezvous);
    r.used_codes
        .sort_by(|a, b| (a.at, &a.id, a.counter).cmp(&(b.at, &b.id, b.counter)));
    db.in_transaction(|db| {
        r.tokens.iter().try_for_each(|t| db.add_token(t))?;
        r.tunnels.iter().try_for_each(|t| db.add_tunnel(t))?;
        r.ssh_keys.iter().try_for_each(|k| db.add_ssh_key(k))?;
        r.rendezvous.iter().try_for_each(|x| db.add_rendezvous(x))?;
        r.certificates
            .iter()
            .try_for_each(|c| db.add_certificate(c))?;
        for c in &r.used_codes {
            db.add_used_code(&c.id, c.counter, &c.addr, c.at, 0)?;
        }
        match &r.admin_mappings {
            Some(json) => db.set_admin_mappings(json),
            None => Ok(()),
        }
    })
}
