//! Public names of an https-subdomain frontend. A name is bound to its owner: another client
//! asking for it is refused, and after the owner's session ends the name stays reserved for
//! it during the grace period (so a random name comes back to the same tunnel after a
//! reconnect). Pool names are shared by the clients the config lists.

use crate::config::valid_label;
use prometheus::IntGauge;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tunneld_core::auth::random_bytes;
use tunneld_core::frontend::{Claim, ClaimError, ClaimRequest, RouteInfo};
use tunneld_core::hub::Target;
use tunneld_core::proto::TunnelKind;
use tunneld_core::proxy_protocol;

/// One client serving a name.
#[derive(Clone)]
pub(crate) struct Member {
    pub owner: String,
    pub tunnel: String,
    pub target: Arc<dyn Target>,
    pub proxy_protocol: Option<proxy_protocol::Version>,
    gen: u64,
}

/// What a name resolves to.
pub(crate) enum Lookup {
    /// Members in the order to try (round-robin start first).
    Active {
        kind: TunnelKind,
        members: Vec<Member>,
    },
    /// The owner is offline; the name is kept for it.
    Reserved,
    Unknown,
}

struct Entry {
    /// The owning client, or `pool:<name>` for pools.
    owner: String,
    kind: TunnelKind,
    members: Vec<Member>,
    /// Set when the last member left.
    reserved_until: Option<Instant>,
    next: usize,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// The name each (owner, tunnel) last had, so a random name survives a reconnect.
    remembered: HashMap<(String, String), String>,
    next_gen: u64,
}

pub(crate) struct Names {
    table: Mutex<Table>,
    grace: Duration,
    pools: BTreeMap<String, Vec<String>>,
    /// Names with at least one connected member.
    active: IntGauge,
}

struct Release {
    names: Weak<Names>,
    name: String,
    gen: u64,
    reserve: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(names) = self.names.upgrade() {
            names.release(&self.name, self.gen, self.reserve);
        }
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
        self.active
            .set(t.entries.values().filter(|e| !e.members.is_empty()).count() as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        tunneld_core::sync::lock(&self.table)
    }

    fn release(&self, name: &str, gen: u64, reserve: bool) {
        let mut t = self.lock();
        let Some(e) = t.entries.get_mut(name) else {
            return;
        };
        e.members.retain(|m| m.gen != gen);
        if e.members.is_empty() {
            if reserve && !e.owner.starts_with("pool:") {
                e.reserved_until = Some(Instant::now() + self.grace);
            } else {
                t.entries.remove(name);
            }
        }
        self.update_gauge(&t);
    }

    /// Claims a name for a tunnel; `endpoint` renders the public URL of a name.
    pub(crate) fn claim(
        self: &Arc<Self>,
        req: &ClaimRequest,
        endpoint: impl Fn(&str) -> String,
    ) -> Result<Claim, ClaimError> {
        if req.port.is_some() {
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
            check_quota(&t, &name, req, now)?;
        }
        let gen = join(&mut t, &name, owner, req);
        t.remembered.insert(key, name.clone());
        if t.remembered.len() > 100_000 {
            t.remembered.clear();
        }
        self.update_gauge(&t);
        Ok(Claim {
            endpoint: endpoint(&name),
            port: None,
            name: Some(name.clone()),
            release: Box::new(Release {
                names: Arc::downgrade(self),
                name,
                gen,
                reserve: req.reserve_on_release,
            }),
        })
    }

    /// The name a claim asks for: its subdomain (checked, lower-cased), else the name the
    /// tunnel had while its owner still holds it, else a fresh random name.
    fn pick_name(
        &self,
        t: &Table,
        req: &ClaimRequest,
        key: &(String, String),
    ) -> Result<String, ClaimError> {
        Ok(match &req.subdomain {
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
                Some(n) if t.entries.get(n).is_some_and(|e| e.owner == req.owner) => n.clone(),
                _ => loop {
                    let n = random_name();
                    if !t.entries.contains_key(&n) && !self.pools.contains_key(&n) {
                        break n;
                    }
                },
            },
        })
    }

    fn lookup_inner(&self, name: &str, advance: bool) -> Lookup {
        let now = Instant::now();
        let mut t = self.lock();
        let Some(e) = t.entries.get_mut(name) else {
            return Lookup::Unknown;
        };
        if e.members.is_empty() {
            return match e.reserved_until {
                Some(u) if u > now => Lookup::Reserved,
                _ => Lookup::Unknown,
            };
        }
        let start = e.next % e.members.len();
        if advance {
            e.next = e.next.wrapping_add(1);
        }
        let mut members = e.members.clone();
        members.rotate_left(start);
        Lookup::Active {
            kind: e.kind,
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
        let now = Instant::now();
        let t = self.lock();
        let mut v = Vec::new();
        for (name, e) in &t.entries {
            if e.members.is_empty() {
                if e.reserved_until.is_some_and(|u| u > now) {
                    v.push(RouteInfo {
                        frontend: frontend.to_string(),
                        owner: e.owner.clone(),
                        tunnel: name.clone(),
                        endpoint: endpoint(name),
                        state: "reserved",
                    });
                }
                continue;
            }
            for m in &e.members {
                v.push(RouteInfo {
                    frontend: frontend.to_string(),
                    owner: m.owner.clone(),
                    tunnel: name.clone(),
                    endpoint: endpoint(name),
                    state: "active",
                });
            }
        }
        v.sort_by(|a, b| (&a.tunnel, &a.owner).cmp(&(&b.tunnel, &b.owner)));
        v
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
    let Some(e) = t.entries.get(name) else {
        return Ok(());
    };
    let live = !e.members.is_empty() || e.reserved_until.is_some_and(|u| u > now);
    if live && e.owner != owner {
        return Err(ClaimError::NameHeld(name.to_string()));
    }
    if live && e.kind != req.kind {
        return Err(ClaimError::Invalid(format!(
            "name `{name}` already serves `{}` tunnels",
            e.kind
        )));
    }
    // One membership per client and name: a second live one (another tunnel, or
    // another session of the client) is refused; the hub names its holder.
    if e.members.iter().any(|m| m.owner == req.owner) {
        return Err(ClaimError::HeldBySession {
            port: None,
            name: Some(name.to_string()),
        });
    }
    Ok(())
}

/// Refuses a claim over the client's `max_names`: the live names it owns besides `name`.
fn check_quota(t: &Table, name: &str, req: &ClaimRequest, now: Instant) -> Result<(), ClaimError> {
    let Some(max) = req.max_names else {
        return Ok(());
    };
    let held = t
        .entries
        .iter()
        .filter(|(n, e)| {
            n.as_str() != name
                && e.owner == req.owner
                && (!e.members.is_empty() || e.reserved_until.is_some_and(|u| u > now))
        })
        .count();
    if held >= max as usize {
        return Err(ClaimError::Quota {
            limit: "max_names",
            what: "names",
            max,
        });
    }
    Ok(())
}

/// Adds the claiming tunnel as a member of `name`'s entry (made, or taken over by `owner`
/// when it has no member left); the new member's generation.
fn join(t: &mut Table, name: &str, owner: String, req: &ClaimRequest) -> u64 {
    t.next_gen += 1;
    let gen = t.next_gen;
    let member = Member {
        owner: req.owner.clone(),
        tunnel: req.tunnel.clone(),
        target: req.target.clone(),
        proxy_protocol: req.proxy_protocol,
        gen,
    };
    let entry = t.entries.entry(name.to_string()).or_insert_with(|| Entry {
        owner: owner.clone(),
        kind: req.kind,
        members: Vec::new(),
        reserved_until: None,
        next: 0,
    });
    if entry.members.is_empty() {
        entry.owner = owner;
        entry.kind = req.kind;
    }
    entry.reserved_until = None;
    entry.members.push(member);
    gen
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
