//! [`StateStore`] for [`RedisStore`]: each method as [`crate::sqlite::SqliteStore`] does it
//! (the same errors, the same order of listed records, the same counters moved).

use super::codec::{counter, decode, encode, items, text, UsedCode};
use super::write::Modified;
use super::RedisStore;
use crate::records::{CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelRecord};
use crate::{Changes, StateError, StateStore, Versions};
use std::path::Path;

/// Lists in SQLite's order: tokens by name, tunnels by creation then name, SSH keys by
/// client then fingerprint, rendezvous ids by id.
pub(super) fn sort_tokens(v: &mut [TokenRecord]) {
    v.sort_by(|a, b| a.name.cmp(&b.name));
}

pub(super) fn sort_tunnels(v: &mut [TunnelRecord]) {
    v.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
}

pub(super) fn sort_ssh_keys(v: &mut [SshKeyRecord]) {
    v.sort_by(|a, b| (&a.client, &a.fingerprint).cmp(&(&b.client, &b.fingerprint)));
}

pub(super) fn sort_rendezvous(v: &mut [RendezvousRecord]) {
    v.sort_by(|a, b| a.id.cmp(&b.id));
}

impl StateStore for RedisStore {
    fn add_token(&self, t: &TokenRecord) -> Result<(), StateError> {
        let k = &self.keys;
        let added = self.insert(
            "add token",
            &k.tokens,
            counter::TOKENS,
            &t.name,
            &encode(t)?,
            Some((&k.token_digests, &t.digest)),
        )?;
        match added {
            true => Ok(()),
            false => Err(StateError::Exists(format!("token `{}`", t.name))),
        }
    }

    fn token_by_digest(&self, digest: &str) -> Result<Option<TokenRecord>, StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.by_index.prepare_invoke();
        inv.key(&k.token_digests).key(&k.tokens).arg(digest);
        let found = items(self.eval("token by digest", &inv)?, "token by digest")?;
        let mut found = found.into_iter();
        let (Some(name), Some(json)) = (found.next(), found.next()) else {
            return Ok(None);
        };
        let Some(name) = text(name, "token by digest")? else {
            return Ok(None);
        };
        let Some(json) = text(json, "token by digest")? else {
            return Ok(None);
        };
        let t: TokenRecord = decode(&k.tokens, &name, &json)?;
        if t.digest != digest {
            // Fail closed: the index and the record disagree.
            return Err(StateError::Db(format!(
                "redis key `{}` field `{digest}` names token `{name}`, whose digest differs",
                k.token_digests
            )));
        }
        Ok(Some(t))
    }

    fn token(&self, name: &str) -> Result<Option<TokenRecord>, StateError> {
        self.record(&self.keys.tokens, name)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        let mut all = self.records(&self.keys.tokens)?;
        sort_tokens(&mut all);
        Ok(all)
    }

    fn revoke_token(&self, name: &str, at: u64) -> Result<bool, StateError> {
        // As SQLite's `COALESCE(revoked_at, ?)`: the first revocation's time stays, and
        // revoking again still counts as a write.
        let m = self.modify(
            "revoke token",
            &self.keys.tokens,
            counter::TOKENS,
            name,
            |t: &mut TokenRecord| {
                t.revoked_at.get_or_insert(at);
                true
            },
        )?;
        Ok(m == Modified::Written)
    }

    fn use_token(&self, name: &str, at: u64) -> Result<bool, StateError> {
        let m = self.modify(
            "use token",
            &self.keys.tokens,
            counter::TOKENS,
            name,
            |t: &mut TokenRecord| match t.used_at {
                Some(_) => false,
                None => {
                    t.used_at = Some(at);
                    true
                }
            },
        )?;
        Ok(m == Modified::Written)
    }

    fn add_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError> {
        let k = &self.keys;
        let added = self.insert(
            "add tunnel",
            &k.tunnels,
            counter::TUNNELS,
            &t.name,
            &encode(t)?,
            t.id_digest.as_deref().map(|d| (k.tunnel_ids.as_str(), d)),
        )?;
        match added {
            true => Ok(()),
            false => Err(StateError::Exists(format!("tunnel `{}`", t.name))),
        }
    }

    fn update_tunnel(&self, t: &TunnelRecord) -> Result<(), StateError> {
        // What SQLite's UPDATE sets: the creation time, flavour and secret id stay.
        let m = self.modify(
            "update tunnel",
            &self.keys.tunnels,
            counter::TUNNELS,
            &t.name,
            |stored: &mut TunnelRecord| {
                stored.owner.clone_from(&t.owner);
                stored.protocols.clone_from(&t.protocols);
                stored.ports.clone_from(&t.ports);
                stored.expires_at = t.expires_at;
                true
            },
        )?;
        match m {
            Modified::Missing => Err(StateError::Invalid(format!("no tunnel `{}`", t.name))),
            _ => Ok(()),
        }
    }

    fn tunnel(&self, name: &str) -> Result<Option<TunnelRecord>, StateError> {
        self.record(&self.keys.tunnels, name)
    }

    fn tunnels(&self, owner: Option<&str>) -> Result<Vec<TunnelRecord>, StateError> {
        let mut all: Vec<TunnelRecord> = self.records(&self.keys.tunnels)?;
        all.retain(|t| owner.is_none_or(|o| t.owner == o));
        sort_tunnels(&mut all);
        Ok(all)
    }

    fn delete_tunnel(&self, name: &str) -> Result<bool, StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.delete_tunnel.prepare_invoke();
        inv.key(&k.tunnels)
            .key(&k.tunnel_ids)
            .key(&k.ssh_keys)
            .key(&k.versions)
            .arg(name);
        Ok(self.eval::<i64>("delete tunnel", &inv)? == 1)
    }

    fn add_ssh_key(&self, key: &SshKeyRecord) -> Result<(), StateError> {
        let added = self.insert(
            "add SSH key",
            &self.keys.ssh_keys,
            counter::SSH_KEYS,
            &key.fingerprint,
            &encode(key)?,
            None,
        )?;
        match added {
            true => Ok(()),
            false => Err(StateError::Exists(format!("SSH key {}", key.fingerprint))),
        }
    }

    fn ssh_key(&self, fingerprint: &str) -> Result<Option<SshKeyRecord>, StateError> {
        self.record(&self.keys.ssh_keys, fingerprint)
    }

    fn ssh_keys(&self, client: Option<&str>) -> Result<Vec<SshKeyRecord>, StateError> {
        let mut all: Vec<SshKeyRecord> = self.records(&self.keys.ssh_keys)?;
        all.retain(|k| client.is_none_or(|c| k.client == c));
        sort_ssh_keys(&mut all);
        Ok(all)
    }

    fn remove_ssh_key(&self, fingerprint: &str) -> Result<bool, StateError> {
        let k = &self.keys;
        self.remove(
            "remove SSH key",
            &k.ssh_keys,
            counter::SSH_KEYS,
            fingerprint,
        )
    }

    fn add_certificate(&self, c: &CertRecord) -> Result<(), StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.add_certificate.prepare_invoke();
        inv.key(&k.certificate_serials)
            .key(k.certificates_of(&c.tunnel))
            .arg(&c.serial)
            .arg(&c.tunnel)
            .arg(encode(c)?);
        match self.eval::<i64>("add certificate", &inv)? {
            1 => Ok(()),
            _ => Err(StateError::Exists(format!("certificate {}", c.serial))),
        }
    }

    fn certificates(&self, tunnel: &str) -> Result<Vec<CertRecord>, StateError> {
        let key = self.keys.certificates_of(tunnel);
        let list: Vec<String> = self.run("certificates", |c| {
            redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(c)
        })?;
        // The list is latest added first; a stable sort keeps that among equal times, as
        // SQLite's `ORDER BY created_at DESC, rowid DESC`.
        let mut all = list
            .iter()
            .enumerate()
            .map(|(i, json)| decode::<CertRecord>(&key, &format!("#{i}"), json))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(all)
    }

    fn add_rendezvous(&self, r: &RendezvousRecord) -> Result<(), StateError> {
        let k = &self.keys;
        let added = self.insert(
            "add rendezvous id",
            &k.rendezvous,
            counter::RENDEZVOUS,
            &r.id,
            &encode(r)?,
            None,
        )?;
        match added {
            true => Ok(()),
            false => Err(StateError::Exists(format!("id `{}`", r.id))),
        }
    }

    fn rendezvous(&self, id: &str) -> Result<Option<RendezvousRecord>, StateError> {
        self.record(&self.keys.rendezvous, id)
    }

    fn rendezvous_ids(&self) -> Result<Vec<RendezvousRecord>, StateError> {
        let mut all = self.records(&self.keys.rendezvous)?;
        sort_rendezvous(&mut all);
        Ok(all)
    }

    fn remove_rendezvous(&self, id: &str) -> Result<bool, StateError> {
        let k = &self.keys;
        self.remove(
            "remove rendezvous id",
            &k.rendezvous,
            counter::RENDEZVOUS,
            id,
        )
    }

    fn update_rendezvous(&self, r: &RendezvousRecord) -> Result<bool, StateError> {
        let k = &self.keys;
        let json = encode(r)?;
        self.replace(
            "update rendezvous id",
            &k.rendezvous,
            counter::RENDEZVOUS,
            &r.id,
            &json,
        )
    }

    fn add_used_code(
        &self,
        id: &str,
        counter: u64,
        addr: &str,
        at: u64,
        forget_before: u64,
    ) -> Result<(), StateError> {
        let k = &self.keys;
        let code = UsedCode {
            id: id.to_string(),
            counter,
            addr: addr.to_string(),
            at,
        };
        let mut inv = self.scripts.add_used_code.prepare_invoke();
        inv.key(&k.used_codes)
            .key(&k.used_codes_at)
            .arg(UsedCode::field(id, counter))
            .arg(encode(&code)?)
            .arg(at)
            .arg(forget_before);
        self.eval::<i64>("add used code", &inv).map(drop)
    }

    fn used_codes(&self, since: u64) -> Result<Vec<(String, u64, String)>, StateError> {
        let k = &self.keys;
        let mut inv = self.scripts.used_codes.prepare_invoke();
        inv.key(&k.used_codes).key(&k.used_codes_at).arg(since);
        let reply = self.eval("used codes", &inv)?;
        let mut out = Vec::new();
        for (field, json) in super::codec::pairs(reply, "used codes")? {
            let code: UsedCode = decode(&k.used_codes, &field, &json)?;
            // The scores are doubles: compare exactly here.
            if code.at >= since {
                out.push((code.id, code.counter, code.addr));
            }
        }
        Ok(out)
    }

    fn admin_mappings(&self) -> Result<Option<String>, StateError> {
        let key = &self.keys.admin_mappings;
        self.run("admin mappings", |c| redis::cmd("GET").arg(key).query(c))
    }

    fn set_admin_mappings(&self, json: &str) -> Result<(), StateError> {
        let key = &self.keys.admin_mappings;
        self.run("set admin mappings", |c| {
            redis::cmd("SET").arg(key).arg(json).query::<()>(c)
        })
    }

    fn cached_changes(&self, known: Option<Versions>) -> Result<Changes, StateError> {
        self.changes(known)
    }

    fn check(&self) -> Result<String, StateError> {
        self.check_all()
    }

    fn backup(&self, to: &Path) -> Result<(), StateError> {
        self.backup_to(to)
    }
}
