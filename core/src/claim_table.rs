//! Who holds which port or name on a frontend: one owner/grace table for every frontend.
//!
//! A key (a port, a name) belongs to an owner (a client id, or `pool:<name>`). It is
//! *active* while one or more holders (the claims of live tunnels; several only for a pool)
//! serve it. When the last holder lets go the key is dropped, or *reserved* for its owner
//! until a grace period ends: another owner is refused until then, the same owner may take
//! it back. A reservation past its grace has *expired*: anyone may take the key.
//!
//! The table is plain data: a frontend keeps it under its own lock, with whatever else it
//! decides under that lock, and passes the time in. Each holder has a generation, so a
//! [`ReleaseGuard`] of a claim that was taken over releases nothing.

use crate::frontend::{Claim, ClaimError, RouteInfo};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served by at least one holder.
    Active,
    /// Kept for its owner until the grace period ends.
    Reserved,
    /// A reservation past its grace: free for anyone.
    Expired,
}

/// Why a key cannot be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Active, or reserved within its grace, for another owner.
    OtherOwner,
    /// Already active for this owner (another tunnel or session of it).
    Active,
}

/// One key's owner, holders and reservation.
pub struct Entry<E, M> {
    pub owner: String,
    /// The frontend's data of the key, kept while it is reserved.
    pub data: E,
    /// The holders in the order they came, each with its generation.
    holders: Vec<(u64, M)>,
    /// Set when the last holder left with a grace period.
    reserved_until: Option<Instant>,
}

impl<E, M> Entry<E, M> {
    pub fn status(&self, now: Instant) -> Status {
        match self.reserved_until {
            _ if !self.holders.is_empty() => Status::Active,
            Some(until) if until > now => Status::Reserved,
            _ => Status::Expired,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.holders.is_empty()
    }

    /// Active, or reserved within its grace: held for its owner.
    pub fn is_live(&self, now: Instant) -> bool {
        self.status(now) != Status::Expired
    }

    /// The state `/tunnels` shows for a live entry: `active` or `reserved`.
    pub fn state(&self) -> &'static str {
        if self.is_active() {
            "active"
        } else {
            "reserved"
        }
    }

    /// The holders' values, in the order they came.
    pub fn holders(&self) -> impl ExactSizeIterator<Item = &M> {
        self.holders.iter().map(|(_, m)| m)
    }

    /// Whether the holder of generation `gen` still holds this key.
    pub fn is_held_by(&self, gen: u64) -> bool {
        self.holders.iter().any(|(g, _)| *g == gen)
    }
}

/// The claimed keys of one frontend: `K` the key (`u16` port, `String` name), `E` the
/// frontend's data per key, `M` its data per holder.
pub struct ClaimTable<K, E, M> {
    entries: HashMap<K, Entry<E, M>>,
    gen: u64,
}

impl<K, E, M> Default for ClaimTable<K, E, M> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            gen: 0,
        }
    }
}

impl<K: Hash + Eq, E, M> ClaimTable<K, E, M> {
    pub fn get<Q>(&self, key: &Q) -> Option<&Entry<E, M>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut Entry<E, M>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key)
    }

    /// Every entry, expired ones too.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Entry<E, M>)> {
        self.entries.iter()
    }

    /// The entries held for their owners (active or reserved), for `/tunnels`.
    pub fn live(&self, now: Instant) -> impl Iterator<Item = (&K, &Entry<E, M>)> {
        self.entries.iter().filter(move |(_, e)| e.is_live(now))
    }

    /// The live entries of `owner`, for its quota.
    pub fn owned<'a>(
        &'a self,
        owner: &'a str,
        now: Instant,
    ) -> impl Iterator<Item = (&'a K, &'a Entry<E, M>)> {
        self.live(now).filter(move |(_, e)| e.owner == owner)
    }

    /// Keeps the entries `keep` says to.
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut Entry<E, M>) -> bool) {
        self.entries.retain(keep);
    }

    /// The generation given to the last holder (0 before the first).
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Whether `owner` may take `key` now: not while another owner holds it (active or
    /// reserved), nor while it is active for `owner` already.
    pub fn check<Q>(&self, key: &Q, owner: &str, now: Instant) -> Result<(), Refusal>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.entries.get(key) {
            Some(e) if e.is_live(now) && e.owner != owner => Err(Refusal::OtherOwner),
            Some(e) if e.is_active() => Err(Refusal::Active),
            _ => Ok(()),
        }
    }

    /// Adds a holder of `key` for `owner` (the caller checked it may); its generation. A key
    /// no one holds (new, reserved or expired) is taken over: its owner set and its data made
    /// by `data` from the old data. A key with holders keeps its owner and data (a pool).
    pub fn join(
        &mut self,
        key: K,
        owner: &str,
        holder: M,
        data: impl FnOnce(Option<E>) -> E,
    ) -> u64 {
        self.gen += 1;
        let gen = self.gen;
        if let Some(e) = self.entries.get_mut(&key).filter(|e| e.is_active()) {
            e.holders.push((gen, holder));
            return gen;
        }
        let old = self.entries.remove(&key).map(|e| e.data);
        let entry = Entry {
            owner: owner.to_string(),
            data: data(old),
            holders: vec![(gen, holder)],
            reserved_until: None,
        };
        self.entries.insert(key, entry);
        gen
    }

    /// Ends the hold of generation `gen` on `key`; its value, or `None` if it held nothing
    /// (released before, or taken over). When no holder is left, the key is reserved for its
    /// owner until `now + grace`, or dropped without a `grace`.
    pub fn release<Q>(
        &mut self,
        key: &Q,
        gen: u64,
        grace: Option<Duration>,
        now: Instant,
    ) -> Option<M>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.entries.get_mut(key)?;
        let i = e.holders.iter().position(|(g, _)| *g == gen)?;
        let (_, holder) = e.holders.remove(i);
        if e.holders.is_empty() {
            match grace {
                Some(grace) => e.reserved_until = Some(now + grace),
                None => {
                    self.entries.remove(key);
                }
            }
        }
        Some(holder)
    }

    /// Drops `key` outright if the holder of generation `gen` holds it (a claim that failed
    /// after joining).
    pub fn forget<Q>(&mut self, key: &Q, gen: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.entries.get(key).is_some_and(|e| e.is_held_by(gen)) {
            self.entries.remove(key);
        }
    }
}

impl<E, M> ClaimTable<String, E, M> {
    /// The `/tunnels` rows of a frontend that routes by name, by name and owner: a row per
    /// holder of an active name (`client` names a holder's client; `None`, the owner), one
    /// for the owner of a reserved name.
    pub fn name_routes(
        &self,
        frontend: &str,
        now: Instant,
        endpoint: impl Fn(&str) -> String,
        client: impl Fn(&M) -> Option<&str>,
    ) -> Vec<RouteInfo> {
        let mut v = Vec::new();
        for (name, e) in self.live(now) {
            let row = |owner: &str| RouteInfo {
                frontend: frontend.to_string(),
                owner: owner.to_string(),
                tunnel: name.clone(),
                endpoint: endpoint(name),
                state: e.state(),
            };
            if e.is_active() {
                v.extend(e.holders().map(|m| row(client(m).unwrap_or(&e.owner))));
            } else {
                v.push(row(&e.owner));
            }
        }
        v.sort_by(|a, b| (&a.tunnel, &a.owner).cmp(&(&b.tunnel, &b.owner)));
        v
    }
}

/// Refuses a claim when the owner already holds `held` of at most `max` (`limit` as
/// `tunneld token add` spells it, e.g. `max_ports`; `what` it counts, e.g. `ports`).
pub fn check_quota(
    held: usize,
    max: Option<u32>,
    limit: &'static str,
    what: &'static str,
) -> Result<(), ClaimError> {
    match max {
        Some(max) if held >= max as usize => Err(ClaimError::Quota { limit, what, max }),
        _ => Ok(()),
    }
}

/// What a [`ReleaseGuard`] calls when its claim is dropped: typically the frontend, which
/// releases the key in its [`ClaimTable`] and does its own part (closing a listener).
pub trait Releases<K>: Send + Sync + 'static {
    /// Releases `key` for the holder of generation `gen`; `reserve` asks for the grace
    /// period (client tunnels) rather than none (admin mappings).
    fn release(&self, key: &K, gen: u64, reserve: bool);
}

/// A [`crate::frontend::Claim`]'s `release`: releases the key when dropped, if its frontend
/// is still there.
pub struct ReleaseGuard<T: Releases<K>, K> {
    table: Weak<T>,
    key: K,
    gen: u64,
    reserve: bool,
}

impl<T: Releases<K>, K> ReleaseGuard<T, K> {
    pub fn new(table: Weak<T>, key: K, gen: u64, reserve: bool) -> Self {
        Self {
            table,
            key,
            gen,
            reserve,
        }
    }
}

impl<T: Releases<String>> ReleaseGuard<T, String> {
    /// The claim of `name` at `endpoint`, released through `table` when dropped.
    pub fn name_claim(
        table: Weak<T>,
        endpoint: String,
        name: String,
        gen: u64,
        reserve: bool,
    ) -> Claim {
        Claim {
            endpoint,
            port: None,
            name: Some(name.clone()),
            release: Box::new(Self::new(table, name, gen, reserve)),
        }
    }
}

impl<T: Releases<K>, K> Drop for ReleaseGuard<T, K> {
    fn drop(&mut self) {
        if let Some(t) = self.table.upgrade() {
            t.release(&self.key, self.gen, self.reserve);
        }
    }
}

#[cfg(test)]
mod tests;
