//! A pool's shares: a key alone may fill it; once it is full, a key within its share takes
//! the place of the oldest idle connection of the key furthest over its share.

use super::*;
use tokio::net::{TcpListener, TcpStream};

/// `n` connected loopback connections as raw pool entries, and their far ends (kept open).
async fn raw_conns(n: usize) -> (Vec<Conn>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut conns, mut far) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let near = TcpStream::connect(addr).await.expect("connect");
        far.push(listener.accept().await.expect("accept").0);
        conns.push(Conn::Raw(raw::RawConn::new(Box::new(near))));
    }
    (conns, far)
}

fn idle_of(pool: &LocalPool, key: &str) -> usize {
    crate::sync::lock(&pool.state)
        .idle
        .get(key)
        .map_or(0, Vec::len)
}

/// A pool of 4 idle connections with shares of at most 2, and its `displaced` counter.
fn four_with_shares_of_two() -> (Arc<LocalPool>, prometheus::IntCounter) {
    let displaced = prometheus::IntCounter::new("displaced", "displaced").expect("counter");
    let caps = Caps {
        per_key: 2,
        keys: 4,
        total: 4,
    };
    (
        LocalPool::with_caps(caps, Some(displaced.clone())),
        displaced,
    )
}

/// When each idle connection of `key` was given back, oldest first.
fn idle_since(pool: &LocalPool, key: &str) -> Vec<Instant> {
    crate::sync::lock(&pool.state)
        .idle
        .get(key)
        .map_or(Vec::new(), |l| l.iter().map(|i| i.since).collect())
}

#[tokio::test]
async fn a_key_alone_keeps_more_than_its_share_while_the_pool_has_room() {
    let pool = LocalPool::with_caps(
        Caps {
            per_key: 2,
            keys: 4,
            total: 5,
        },
        None,
    );
    let (conns, _far) = raw_conns(7).await;
    for c in conns {
        pool.put("a".into(), c);
    }
    // Past its share of 2, up to the pool's 5; the two over that are closed.
    assert_eq!(idle_of(&pool, "a"), 5);
    assert_eq!(pool.idle(), 5);
}

#[tokio::test]
async fn a_key_within_its_share_displaces_the_oldest_of_one_over_it_when_full() {
    let displaced = prometheus::IntCounter::new("displaced", "displaced").expect("counter");
    let pool = LocalPool::with_caps(
        Caps {
            per_key: 2,
            keys: 4,
            total: 5,
        },
        Some(displaced.clone()),
    );
    let (conns, _far) = raw_conns(9).await;
    let mut conns = conns.into_iter();
    for c in conns.by_ref().take(5) {
        pool.put("a".into(), c);
    }
    let since_a = idle_since(&pool, "a");
    // The pool is full with "a" over its share: "b" still keeps its first two.
    for c in conns.by_ref().take(2) {
        pool.put("b".into(), c);
    }
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (3, 2));
    assert_eq!(pool.idle(), 5);
    // The two oldest of "a" went (compared by when each was given back: equal instants on
    // a coarse clock could hide a wrong choice, never fail a right one).
    assert_eq!(idle_since(&pool, "a"), since_a[2..]);
    // "b" at its share and "a" over it: another of "b" is closed, not kept.
    pool.put("b".into(), conns.next().expect("conn"));
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (3, 2));
    // "c" takes the place of one of "a", down to its share; then nobody is over a share
    // and a full pool keeps no more.
    pool.put("c".into(), conns.next().expect("conn"));
    assert_eq!(
        (
            idle_of(&pool, "a"),
            idle_of(&pool, "b"),
            idle_of(&pool, "c")
        ),
        (2, 2, 1)
    );
    let (more, _far2) = raw_conns(1).await;
    for c in more {
        pool.put("c".into(), c);
    }
    assert_eq!(idle_of(&pool, "c"), 1);
    assert_eq!(pool.idle(), 5);
    // Two of "b" and one of "c" took places of "a".
    assert_eq!(displaced.get(), 3);
}

#[tokio::test]
async fn two_keys_at_their_share_still_leave_a_third_its_place() {
    let (pool, displaced) = four_with_shares_of_two();
    let (conns, _far) = raw_conns(6).await;
    let mut conns = conns.into_iter();
    for key in ["a", "a", "b", "b"] {
        pool.put(key.into(), conns.next().expect("conn"));
    }
    // Full, "a" and "b" at the share of two keys; with "c" the share is a third of the
    // room (one): "c" keeps one in the place of one of theirs, and no second.
    pool.put("c".into(), conns.next().expect("conn"));
    assert_eq!(idle_of(&pool, "c"), 1);
    assert_eq!(idle_of(&pool, "a") + idle_of(&pool, "b"), 3);
    pool.put("c".into(), conns.next().expect("conn"));
    assert_eq!(idle_of(&pool, "c"), 1);
    assert_eq!(pool.idle(), 4);
    assert_eq!(displaced.get(), 1);
}

#[tokio::test]
async fn eviction_takes_from_the_key_over_its_share_before_the_oldest() {
    let caps = Caps {
        per_key: 2,
        keys: 4,
        total: 4,
    };
    let pool = LocalPool::with_caps(caps, None);
    let (conns, _far) = raw_conns(4).await;
    let mut conns = conns.into_iter();
    // "b"'s one connection is the oldest; "a" holds three, over its share of two.
    pool.put("b".into(), conns.next().expect("conn"));
    for c in conns {
        pool.put("a".into(), c);
    }
    let closed = pool.evict_oldest().expect("something idle");
    closed.await;
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (2, 1));
    // Nobody over a share: the oldest of all goes ("b"'s).
    pool.evict_oldest().expect("something idle").await;
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (2, 0));
}

#[tokio::test]
async fn a_displaced_connection_already_closed_is_not_counted() {
    let (pool, displaced) = four_with_shares_of_two();
    let (conns, far) = raw_conns(6).await;
    let mut conns = conns.into_iter();
    let mut far = far.into_iter();
    for c in conns.by_ref().take(4) {
        pool.put("a".into(), c);
    }
    // The service closes "a"'s oldest; wait (bounded) until the pool's end sees it.
    drop(far.next());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pool_oldest_closed(&pool, "a") {
        assert!(Instant::now() < deadline, "the close never arrived");
        tokio::task::yield_now().await;
    }
    // "b" takes the closed one's place (not counted), then an open one's (counted).
    pool.put("b".into(), conns.next().expect("conn"));
    assert_eq!(displaced.get(), 0);
    pool.put("b".into(), conns.next().expect("conn"));
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (2, 2));
    assert_eq!(displaced.get(), 1);
}

/// Whether the oldest idle connection of `key` is closed by the other end.
fn pool_oldest_closed(pool: &LocalPool, key: &str) -> bool {
    let mut st = crate::sync::lock(&pool.state);
    st.idle
        .get_mut(key)
        .and_then(|list| list.first_mut())
        .is_some_and(|i| i.conn.closed())
}
