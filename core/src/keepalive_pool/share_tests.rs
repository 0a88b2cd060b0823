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
    let oldest_a = crate::sync::lock(&pool.state).idle["a"][0].since;
    // The pool is full with "a" over its share: "b" still keeps its first two.
    for c in conns.by_ref().take(2) {
        pool.put("b".into(), c);
    }
    assert_eq!((idle_of(&pool, "a"), idle_of(&pool, "b")), (3, 2));
    assert_eq!(pool.idle(), 5);
    assert!(crate::sync::lock(&pool.state).idle["a"][0].since > oldest_a);
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
