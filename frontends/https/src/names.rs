//! Public names of an https-subdomain frontend. A name is bound to its owner: another client
//! asking for it is refused, and after the owner's session ends the name stays reserved for
//! it during the grace period (so a random name comes back to the same tunnel after a
//! reconnect). Pool names are shared by the clients the config lists.

use crate::config::valid_label;
use prometheus::IntGauge;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunneld_core::auth::random_bytes;
use tunneld_core::claim_table::{check_quota, ClaimTable, Refusal, ReleaseGuard, Releases, Status};
use tunneld_core::frontend::{Claim, ClaimError, ClaimRequest, RouteInfo};
use tunneld_core::proto::TunnelKind;

/// One client serving a name.
pub(crate) use tunneld_core::frontend::NameMember as Member;
/// What a name resolves to.
pub(crate) use tunneld_core::frontend::NameRoute as Lookup;

/// What a name keeps while it is reserved.
struct NameData {
    kind: TunnelKind,
    /// The round-robin position among the members.
    next: usize,
}

#[derive(Default)]
struct Table {
    /// Each name's owner (the client, or `pool:<name>` for pools) and members.
    claims: ClaimTable<String, NameData, Member>,
    /// The name each (owner, tunnel) last had, so a random name survives a reconnect.
    remembered: HashMap<(String, String), String>,
}

pub(crate) struct Names {
    table: Mutex<Table>,
    grace: Duration,
    pools: BTreeMap<String, Vec<String>>,
    /// Names with at least one connected member.
    active: IntGauge,
}

impl Releases<String> for Names {
    fn release(&self, name: &String, gen: u64, reserve: bool) {
        let mut t = self.lock();
        let pool = t
            .claims
            .get(name)
            .is_some_and(|e| e.owner.starts_with("pool:"));
        let grace = (reserve && !pool).then_some(self.grace);
        t.claims.release(name, gen, grace, Instant::now());
        self.update_gauge(&t);
    }
}

/// A random name: 16 characters of `a-z0-9` (about 82 bits), DNS-safe and unguessable.
pub(crate) fn random_name() -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = random_bytes::<16>();
    let mut s: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % 36] as char)
        .collect();
    // A letter first, so the name never looks like a number.
    s.replace_range(0..1, &((b'a' + bytes[0] % 26) as char).to_string());
    s
}

impl Names {
    pub(crate) fn new(
        grace: Duration,
        pools: BTreeMap<String, Vec<String>>,
        active: IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            grace,
            pools,
            active,
        })
    }

    fn update_gauge(&self, t: &Table) {
        let active = t.claims.iter().filter(|(_, e)| e.is_active()).count();
        self.active.set(active as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        tunneld_core::sync::lock(&self.table)
    }

    /// Claims a name for a tunnel; `endpoint` renders the public URL of a name.
    pub(crate) fn claim(
        self: &Arc<Self>,
        req: &ClaimRequest,
        endpoint: impl Fn(&str) -> String,
    ) -> Result<Claim, ClaimError> {
        if req.ask.port().is_some() {
            return Err(ClaimError::Invalid(
                "an https-subdomain frontend routes by name: remove remote_port".into(),
            ));
        }
        let now = Instant::now();
        let mut t = self.lock();
        let key = (req.owner.clone(), req.tunnel.clone());
        let name = self.pick_name(&t, req, &key)?;
        let pool = self.pools.get(&name);
        let owner = pool_owner(pool, &name, req)?;
        check_holder(&t, &name, &owner, req, now)?;
        if pool.is_none() {
            // The client's `max_names`: the live names it owns besides `name`.
            let held = t.claims.owned(&req.owner, now).filter(|(n, _)| **n != name);
            check_quota(held.count(), req.quota.names, "max_names", "names")?;
        }
        let gen = join(&mut t, &name, &owner, req);
        t.remembered.insert(key, name.clone());
        if t.remembered.len() > 100_000 {
            t.remembered.clear();
        }
        self.update_gauge(&t);
        Ok(ReleaseGuard::name_claim(
            Arc::downgrade(self),
            endpoint(&name),
            name,
            gen,
            req.reserve_on_release,
        ))
    }

    /// The name a claim asks for: its subdomain (checked, lower-cased), else the name the
    /// tunnel had while its owner still holds it, else a fresh random name.
    fn pick_name(
        &self,
        t: &Table,
        req: &ClaimRequest,
        key: &(String, String),
    ) -> Result<String, ClaimError> {
        Ok(match req.ask.name() {
            Some(s) => {
                let s = s.to_ascii_lowercase();
                if !valid_label(s.strip_prefix("*.").unwrap_or(&s)) {
                    return Err(ClaimError::Invalid(format!(
                        "subdomain `{s}` is invalid: use 1-63 of a-z, 0-9 and `-`, not at either end (or `*.` and such a label for a tls tunnel)"
                    )));
                }
                s
            }
            None => match t.remembered.get(key) {
                Some(n) if t.claims.get(n).is_some_and(|e| e.owner == req.owner) => n.clone(),
                _ => loop {
                    let n = random_name();
                    if t.claims.get(&n).is_none() && !self.pools.contains_key(&n) {
                        break n;
                    }
                },
            },
        })
    }

    fn lookup_inner(&self, name: &str, advance: bool) -> Lookup {
        let now = Instant::now();
        let mut t = self.lock();
        let Some(e) = t.claims.get_mut(name) else {
            return Lookup::Unknown;
        };
        match e.status(now) {
            Status::Active => {}
            Status::Reserved => return Lookup::Reserved,
            Status::Expired => return Lookup::Unknown,
        }
        let mut members: Vec<Member> = e.holders().cloned().collect();
        let start = e.data.next % members.len();
        if advance {
            e.data.next = e.data.next.wrapping_add(1);
        }
        members.rotate_left(start);
        Lookup::Active {
            kind: e.data.kind,
            members,
        }
    }

    /// The entry for a server name below the domain (`rest` is what precedes `.<domain>`):
    /// the exact name first, then the wildcard `*.<parent>` one level up.
    /// `advance` moves a pool's round-robin on (false for a look that routes nothing).
    pub(crate) fn lookup_host(&self, rest: &str, advance: bool) -> (String, Lookup) {
        if valid_label(rest) {
            let exact = self.lookup_inner(rest, advance);
            if !matches!(exact, Lookup::Unknown) {
                return (rest.to_string(), exact);
            }
        }
        if let Some((_, parent)) = rest.split_once('.') {
            if valid_label(parent) {
                let wild = format!("*.{parent}");
                let found = self.lookup_inner(&wild, advance);
                return (wild, found);
            }
        }
        (rest.to_string(), Lookup::Unknown)
    }

    pub(crate) fn routes(
        &self,
        frontend: &str,
        endpoint: impl Fn(&str) -> String,
    ) -> Vec<RouteInfo> {
        let t = self.lock();
        let now = Instant::now();
        t.claims
            .name_routes(frontend, now, endpoint, |m| Some(m.owner.as_str()))
    }
}

/// The owner a claim of `name` takes: `pool:<name>` for a pool the client is a member of
/// (a pool it is not a member of is refused), else the client.
fn pool_owner(
    pool: Option<&Vec<String>>,
    name: &str,
    req: &ClaimRequest,
) -> Result<String, ClaimError> {
    match pool {
        Some(members) if members.iter().any(|m| m == &req.owner) => Ok(format!("pool:{name}")),
        Some(_) => Err(ClaimError::Invalid(format!(
            "name `{name}` is a pool and this client is not one of its members"
        ))),
        None => Ok(req.owner.clone()),
    }
}

/// Refuses a claim of a name that is live (served or reserved) for another owner or another
/// kind of tunnel, or that the client already serves.
fn check_holder(
    t: &Table,
    name: &str,
    owner: &str,
    req: &ClaimRequest,
    now: Instant,
) -> Result<(), ClaimError> {
    if t.claims.check(name, owner, now) == Err(Refusal::OtherOwner) {
        return Err(ClaimError::NameHeld(name.to_string()));
    }
    let Some(e) = t.claims.get(name).filter(|e| e.is_live(now)) else {
        return Ok(());
    };
    if e.data.kind != req.kind {
        return Err(ClaimError::Invalid(format!(
            "name `{name}` already serves `{}` tunnels",
            e.data.kind
        )));
    }
    // One membership per client and name: a second live one (another tunnel, or
    // another session of the client) is refused; the hub names its holder.
    if e.holders().any(|m| m.owner == req.owner) {
        return Err(ClaimError::HeldBySession {
            port: None,
            name: Some(name.to_string()),
        });
    }
    Ok(())
}

/// Adds the claiming tunnel as a member of `name` (made, or taken over by `owner` when it
/// has no member left); the new member's generation.
fn join(t: &mut Table, name: &str, owner: &str, req: &ClaimRequest) -> u64 {
    let member = Member {
        owner: req.owner.clone(),
        tunnel: req.tunnel.clone(),
        target: req.target.clone(),
        proxy_protocol: req.proxy_protocol,
    };
    t.claims
        .join(name.to_string(), owner, member, |old| NameData {
            kind: req.kind,
            next: old.map_or(0, |d| d.next),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_dns_labels() {
        for _ in 0..200 {
            let n = random_name();
            assert_eq!(n.len(), 16);
            assert!(valid_label(&n), "{n}");
            assert!(n.as_bytes()[0].is_ascii_lowercase());
        }
        assert_ne!(random_name(), random_name());
    }
}
