use super::*;
use std::sync::{Arc, Mutex};

const GRACE: Duration = Duration::from_secs(30);

/// A table of names, with a tag per key and a tunnel name per holder.
type Names = ClaimTable<String, &'static str, &'static str>;

fn claimed(t: &mut Names, key: &str, owner: &str, holder: &'static str) -> u64 {
    assert_eq!(t.check(key, owner, Instant::now()), Ok(()));
    t.join(key.to_string(), owner, holder, |_| "data")
}

#[test]
fn a_claimed_key_belongs_to_its_owner() {
    let now = Instant::now();
    let mut t = Names::default();
    let gen = claimed(&mut t, "app", "alice", "web");
    let e = t.get("app").expect("claimed");
    assert_eq!(e.owner, "alice");
    assert_eq!(e.data, "data");
    assert_eq!(e.status(now), Status::Active);
    assert_eq!(e.state(), "active");
    assert!(e.is_held_by(gen));
    assert_eq!(e.holders().copied().collect::<Vec<_>>(), ["web"]);
    assert_eq!(t.check("app", "bob", now), Err(Refusal::OtherOwner));
    assert_eq!(t.check("app", "alice", now), Err(Refusal::Active));
    assert_eq!(t.check("other", "bob", now), Ok(()));
    assert_eq!(t.generation(), gen);
}

#[test]
fn a_released_key_is_reserved_for_its_owner_during_the_grace() {
    let now = Instant::now();
    let mut t = Names::default();
    let gen = claimed(&mut t, "app", "alice", "web");
    assert_eq!(t.release("app", gen, Some(GRACE), now), Some("web"));
    let e = t.get("app").expect("reserved");
    assert_eq!(e.status(now), Status::Reserved);
    assert_eq!(e.state(), "reserved");
    assert!(!e.is_held_by(gen));
    // Another owner is refused until the grace ends; the owner takes it back.
    let later = now + GRACE - Duration::from_millis(1);
    assert_eq!(t.check("app", "bob", later), Err(Refusal::OtherOwner));
    assert_eq!(t.check("app", "alice", later), Ok(()));
    let mut seen = None;
    let again = t.join("app".into(), "alice", "web2", |old| {
        seen = old;
        "new"
    });
    assert_eq!(seen, Some("data"), "the reserved data is handed over");
    assert!(again > gen);
    let e = t.get("app").expect("taken back");
    assert_eq!((e.status(later), e.data), (Status::Active, "new"));
    // The first claim's release comes too late to touch the new holder.
    assert_eq!(t.release("app", gen, Some(GRACE), later), None);
    assert_eq!(t.get("app").map(|e| e.status(later)), Some(Status::Active));
}

#[test]
fn a_reservation_expires_when_the_grace_ends() {
    let now = Instant::now();
    let mut t = Names::default();
    let gen = claimed(&mut t, "app", "alice", "web");
    t.release("app", gen, Some(GRACE), now);
    let end = now + GRACE;
    assert_eq!(t.get("app").map(|e| e.status(end)), Some(Status::Expired));
    assert_eq!(t.live(end).count(), 0);
    assert_eq!(t.live(now).count(), 1);
    assert_eq!(t.check("app", "bob", end), Ok(()));
    t.join("app".into(), "bob", "api", |_| "bob's");
    let e = t.get("app").expect("taken over");
    assert_eq!((e.owner.as_str(), e.data), ("bob", "bob's"));
    assert_eq!(t.check("app", "alice", end), Err(Refusal::OtherOwner));
}

#[test]
fn a_release_without_grace_drops_the_key() {
    let now = Instant::now();
    let mut t = Names::default();
    let gen = claimed(&mut t, "app", "alice", "web");
    assert_eq!(t.release("app", gen + 1, None, now), None, "not its holder");
    assert!(t.get("app").is_some());
    assert_eq!(t.release("app", gen, None, now), Some("web"));
    assert!(t.get("app").is_none());
    assert_eq!(t.release("app", gen, None, now), None);
    // A zero grace keeps the entry, already expired.
    let gen = claimed(&mut t, "app", "alice", "web");
    t.release("app", gen, Some(Duration::ZERO), now);
    assert_eq!(t.get("app").map(|e| e.status(now)), Some(Status::Expired));
}

#[test]
fn forget_drops_only_the_holders_key() {
    let mut t = Names::default();
    let gen = claimed(&mut t, "app", "alice", "web");
    t.forget("app", gen + 1);
    assert!(t.get("app").is_some());
    t.forget("app", gen);
    assert!(t.get("app").is_none());
}

#[test]
fn several_holders_share_a_key_until_the_last_leaves() {
    let now = Instant::now();
    let mut t = Names::default();
    let a = t.join("pool".into(), "pool:x", "a", |_| "first");
    let b = t.join("pool".into(), "pool:x", "b", |_| unreachable!("kept"));
    let e = t.get("pool").expect("pool");
    assert_eq!(e.holders().copied().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(e.data, "first");
    assert_eq!(t.release("pool", a, Some(GRACE), now), Some("a"));
    assert_eq!(t.get("pool").map(|e| e.status(now)), Some(Status::Active));
    assert_eq!(t.release("pool", b, None, now), Some("b"));
    assert!(t.get("pool").is_none());
}

#[test]
fn quotas_count_the_live_keys_of_an_owner() {
    let now = Instant::now();
    let mut t = Names::default();
    claimed(&mut t, "a", "alice", "1");
    let b = claimed(&mut t, "b", "alice", "2");
    let c = claimed(&mut t, "c", "alice", "3");
    claimed(&mut t, "d", "bob", "4");
    t.release("b", b, Some(GRACE), now);
    t.release("c", c, Some(Duration::ZERO), now);
    // `a` active, `b` reserved, `c` expired.
    assert_eq!(t.owned("alice", now).count(), 2);
    assert_eq!(
        t.owned("alice", now).filter(|(_, e)| e.is_active()).count(),
        1
    );
    assert_eq!(t.owned("bob", now).count(), 1);
    assert_eq!(check_quota(1, Some(2), "max_names", "names"), Ok(()));
    assert_eq!(check_quota(5, None, "max_names", "names"), Ok(()));
    let refused = check_quota(2, Some(2), "max_names", "names").unwrap_err();
    assert_eq!(
        refused.to_string(),
        "quota exceeded (max_names): this client may hold at most 2 names at once"
    );
    t.retain(|_, e| e.is_live(now));
    assert!(t.get("c").is_none());
    assert_eq!(t.iter().count(), 3);
}

/// Records the releases it is asked for.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64, bool)>>);

impl Releases<String> for Recorder {
    fn release(&self, key: &String, gen: u64, reserve: bool) {
        crate::sync::lock(&self.0).push((key.clone(), gen, reserve));
    }
}

#[test]
fn a_release_guard_releases_once_when_dropped() {
    let r = Arc::new(Recorder::default());
    let guard = ReleaseGuard::new(Arc::downgrade(&r), "app".to_string(), 7, true);
    assert!(crate::sync::lock(&r.0).is_empty());
    drop(guard);
    assert_eq!(*crate::sync::lock(&r.0), [("app".to_string(), 7, true)]);
    // Once the frontend is gone, dropping a guard does nothing.
    let gone = Arc::new(Recorder::default());
    let guard = ReleaseGuard::new(Arc::downgrade(&gone), "x".to_string(), 1, false);
    drop(gone);
    drop(guard);
}

#[test]
fn name_routes_list_holders_and_reservations() {
    let now = Instant::now();
    let mut t = Names::default();
    t.join("pool".into(), "pool:p", "bob", |_| "");
    t.join("pool".into(), "pool:p", "alice", |_| "");
    let gen = claimed(&mut t, "app", "carol", "carol");
    t.release("app", gen, Some(GRACE), now);
    let gone = claimed(&mut t, "old", "dave", "dave");
    t.release("old", gone, Some(Duration::ZERO), now);
    let rows = t.name_routes("web", now, |n| format!("https://{n}.example"), |m| Some(*m));
    let seen: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.tunnel.as_str(),
                r.owner.as_str(),
                r.state,
                r.frontend.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("app", "carol", "reserved", "web"),
            ("pool", "alice", "active", "web"),
            ("pool", "bob", "active", "web"),
        ]
    );
    assert_eq!(rows[0].endpoint, "https://app.example");
    let owners = t.name_routes("web", now, |n| n.to_string(), |_| None);
    assert_eq!(owners[1].owner, "pool:p", "without a client, the owner");
}
