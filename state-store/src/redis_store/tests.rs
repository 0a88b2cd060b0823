//! RedisStore against a real redis-server (see [`server`]): the behaviour every store
//! shares ([`crate::conformance`], the state cache's tests), several handles on one Redis,
//! and Redis going away, hanging or holding garbage.

use super::*;
use crate::cache::tests::{other_writers_are_seen, ssh_keys_grant_and_refuse_in};
use crate::conformance::{self, token};
use crate::{CertRecord, RendezvousRecord, StateStore};
use server::RedisServer;
use std::sync::Arc;
use std::time::Instant;

mod server;

/// A redis-server for the test, or the test returns (skipped) when there is none.
macro_rules! redis_server {
    ($test:literal) => {
        match RedisServer::start($test) {
            Some(s) => s,
            None => return,
        }
    };
}

fn store(srv: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::open(&srv.url(), prefix).expect("open")
}

/// A plain connection to the same Redis, to look at or spoil what the store wrote.
fn raw(srv: &RedisServer) -> redis::Connection {
    redis::Client::open(srv.url())
        .expect("url")
        .get_connection()
        .expect("raw connection")
}

#[test]
fn conformance_every_method_and_backup() {
    let srv = redis_server!("conformance_every_method_and_backup");
    let dir = conformance::temp_dir("redis-backup");
    conformance::every_method_and_backup(&store(&srv, "t"), &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conformance_counters_move_with_writes() {
    let srv = redis_server!("conformance_counters_move_with_writes");
    conformance::counters_move_with_writes(&store(&srv, "t"));
}

/// The state cache over one handle sees what another handle (another node, the CLI)
/// writes, at the next lookup.
#[tokio::test]
async fn the_cache_sees_another_handles_writes() {
    let srv = redis_server!("the_cache_sees_another_handles_writes");
    other_writers_are_seen(Arc::new(store(&srv, "t")), &store(&srv, "t")).await;
}

#[tokio::test]
async fn the_cache_grants_and_refuses_ssh_keys() {
    let srv = redis_server!("the_cache_grants_and_refuses_ssh_keys");
    ssh_keys_grant_and_refuse_in(Arc::new(store(&srv, "t")), &store(&srv, "t")).await;
}

#[test]
fn two_handles_see_each_others_writes() {
    let srv = redis_server!("two_handles_see_each_others_writes");
    let (a, b) = (store(&srv, "shared"), store(&srv, "shared"));
    let start = b.cached_changes(None).expect("read").versions;
    a.add_token(&token("alice")).expect("add");
    let seen = b.cached_changes(Some(start)).expect("read");
    assert_eq!(seen.tokens, Some(vec![token("alice")]));
    assert!(a.revoke_token("alice", 9).expect("revoke"));
    let seen2 = b.cached_changes(Some(seen.versions)).expect("read");
    let tokens = seen2.tokens.expect("the tokens table moved");
    assert_eq!(tokens[0].revoked_at, Some(9));
    assert_eq!(seen2.versions.tokens, seen.versions.tokens + 1);
    assert!(seen2.rendezvous.is_none() && seen2.tunnels.is_none() && seen2.ssh_keys.is_none());
    assert!(!b.use_token("nobody", 1).expect("use"));
    assert!(b.use_token("alice", 10).expect("use"));
    assert_eq!(
        a.token("alice").expect("get").and_then(|t| t.used_at),
        Some(10)
    );
    // Another prefix is another store.
    let other = store(&srv, "other");
    assert!(other.tokens().expect("tokens").is_empty());
    other.add_token(&token("alice")).expect("not taken there");
}

/// Compare-and-set: of many handles using one single-use token at once, one wins; a
/// revocation and a use racing on one token both land.
#[test]
fn concurrent_writers_lose_no_update() {
    let srv = redis_server!("concurrent_writers_lose_no_update");
    let s = store(&srv, "t");
    for i in 0..40 {
        s.add_token(&token(&format!("t{i}"))).expect("add");
    }
    let handles: Vec<Arc<RedisStore>> = (0..4).map(|_| Arc::new(store(&srv, "t"))).collect();
    let threads: Vec<_> = handles
        .iter()
        .enumerate()
        .map(|(n, h)| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for i in 0..40 {
                    let name = format!("t{i}");
                    if n % 2 == 0 {
                        won += usize::from(h.use_token(&name, 5).expect("use"));
                    } else {
                        assert!(h.revoke_token(&name, 6).expect("revoke"));
                    }
                }
                won
            })
        })
        .collect();
    let uses: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(uses, 40, "each token used exactly once");
    for t in s.tokens().expect("tokens") {
        assert_eq!((t.used_at, t.revoked_at), (Some(5), Some(6)), "{}", t.name);
    }
    assert_eq!(s.check().expect("check"), "ok");
}

#[test]
fn an_unreachable_redis_is_a_clean_open_error() {
    let dir = conformance::temp_dir("redis-none");
    let url = format!("redis+unix://{}/r.sock?pass=hunter2", dir.display());
    let cases = [
        (
            url.as_str(),
            format!("redis+unix://{}/r.sock?pass=***", dir.display()),
        ),
        (
            "redis://u:hunter2@127.0.0.1:1/0",
            "redis://***@127.0.0.1:1/0".into(),
        ),
        ("http://u:hunter2@h/", "http://***@h/".into()),
    ];
    for (url, shown) in cases {
        let t0 = Instant::now();
        match RedisStore::open(url, "t") {
            Err(e @ StateError::Open { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&shown), "{msg}");
                assert!(!msg.contains("hunter2"), "{msg}");
            }
            Err(e) => panic!("{url}: not an open error: {e}"),
            Ok(_) => panic!("{url}: opened"),
        }
        assert!(t0.elapsed() < TIMEOUT * 2, "{url}: {:?}", t0.elapsed());
    }
}

#[test]
fn a_restarted_redis_is_dialled_again() {
    let mut srv = redis_server!("a_restarted_redis_is_dialled_again");
    let s = store(&srv, "t");
    s.add_token(&token("alice")).expect("add");
    srv.start_again();
    // The old connection is dead: the call dials again (the data went with the server:
    // no persistence here), and the scripts are loaded again.
    assert_eq!(s.token("alice").expect("after the restart"), None);
    s.add_token(&token("alice")).expect("add again");
    assert!(s
        .token_by_digest(&token("alice").digest)
        .expect("get")
        .is_some());
    // Down: calls fail with the URL, then work once it is back.
    srv.stop();
    let e = s.tokens().expect_err("down").to_string();
    assert!(e.contains(&srv.url()), "{e}");
    assert!(s.check().is_err());
    srv.start_again();
    assert_eq!(s.tokens().expect("back"), vec![]);
    assert_eq!(s.check().expect("check"), "ok");
}

#[test]
fn a_hung_redis_fails_calls_at_the_deadline() {
    let srv = redis_server!("a_hung_redis_fails_calls_at_the_deadline");
    let s = store(&srv, "t");
    s.add_token(&token("alice")).expect("add");
    srv.signal("STOP");
    let t0 = Instant::now();
    let e = s.token("alice").expect_err("no answer");
    let took = t0.elapsed();
    srv.signal("CONT");
    assert!(took >= TIMEOUT / 2 && took < TIMEOUT * 2, "{took:?}: {e}");
    assert_eq!(
        s.token("alice").expect("answers again"),
        Some(token("alice"))
    );
}

#[test]
fn malformed_records_are_errors_naming_their_key() {
    let srv = redis_server!("malformed_records_are_errors_naming_their_key");
    let s = store(&srv, "t");
    s.add_token(&token("bob")).expect("add");
    let mut con = raw(&srv);
    let set = |con: &mut redis::Connection, key: &str, field: &str, value: &str| {
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query::<()>(con)
            .expect("HSET");
    };
    set(&mut con, "t:state:tokens", "alice", "{not json");
    let named = |r: Result<(), StateError>| {
        let e = r.expect_err("malformed").to_string();
        assert!(e.contains("`t:state:tokens` field `alice`"), "{e}");
    };
    named(s.token("alice").map(drop));
    named(s.tokens().map(drop));
    named(s.revoke_token("alice", 1).map(drop));
    named(s.cached_changes(None).map(drop));
    assert_eq!(s.token("bob").expect("bob is fine"), Some(token("bob")));
    let report = s.check().expect("check");
    assert!(
        report.contains("`t:state:tokens` field `alice`"),
        "{report}"
    );
    let dir = conformance::temp_dir("redis-backup");
    let to = dir.join("b.db");
    named(s.backup(&to));
    assert!(!to.exists(), "no partial backup");
    let _ = std::fs::remove_dir_all(&dir);

    redis::cmd("HDEL")
        .arg("t:state:tokens")
        .arg("alice")
        .query::<()>(&mut con)
        .expect("HDEL");
    set(&mut con, "t:state:versions", "tokens", "many");
    let e = s.cached_changes(None).expect_err("no counters").to_string();
    assert!(e.contains("`t:state:versions` field `tokens`"), "{e}");
    assert!(s.check().expect("check").contains("not a change counter"));
    // An index entry naming the wrong token fails closed.
    set(&mut con, "t:state:versions", "tokens", "1");
    set(&mut con, "t:state:token_digests", "ff", "bob");
    assert!(s.token_by_digest("ff").is_err());
    assert!(s.check().expect("check").contains("token_digests"));
}

/// The keys the module documentation lists, and no others.
#[test]
fn the_key_layout() {
    let srv = redis_server!("the_key_layout");
    let s = store(&srv, "p");
    let mut t = conformance::tunnel("web", "alice", 1);
    t.id_digest = Some("cd".repeat(32));
    s.add_token(&token("alice")).expect("token");
    s.add_tunnel(&t).expect("tunnel");
    s.add_ssh_key(&conformance::key("SHA256:k", "alice", None))
        .expect("key");
    s.add_rendezvous(&RendezvousRecord {
        id: "r1".into(),
        secret: "ABC".into(),
        step: 30,
        client: None,
        created: 1,
    })
    .expect("id");
    s.add_certificate(&CertRecord {
        serial: "01".into(),
        tunnel: "web".into(),
        owner: "alice".into(),
        names: vec![],
        not_after: 1,
        pem: String::new(),
        created_at: 1,
    })
    .expect("certificate");
    s.add_used_code("r1", 1, "192.0.2.1", 1, 0).expect("code");
    s.set_admin_mappings("[]").expect("mappings");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut raw(&srv))
        .expect("KEYS");
    keys.sort();
    let want = [
        "admin_mappings",
        "certificate_serials",
        "certificates:web",
        "rendezvous",
        "ssh_keys",
        "token_digests",
        "tokens",
        "tunnel_ids",
        "tunnels",
        "used_codes",
        "used_codes_at",
        "versions",
    ];
    let want: Vec<String> = want.iter().map(|k| format!("p:state:{k}")).collect();
    assert_eq!(keys, want);
    let versions: Vec<(String, u64)> = redis::cmd("HGETALL")
        .arg("p:state:versions")
        .query(&mut raw(&srv))
        .expect("versions");
    assert_eq!(versions.len(), 4, "{versions:?}");
    // Records are the record structs' JSON, field names as in records.rs.
    let json: String = redis::cmd("HGET")
        .arg("p:state:tunnels")
        .arg("web")
        .query(&mut raw(&srv))
        .expect("tunnel");
    let mut fields: Vec<String> = match serde_json::from_str(&json).expect("JSON") {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        v => panic!("not an object: {v}"),
    };
    fields.sort();
    let want = "created_at expires_at flavour id_digest name owner ports protocols";
    assert_eq!(fields.join(" "), want);
}

#[test]
fn redact_hides_passwords() {
    assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
    assert_eq!(redact("redis://:secret@h"), "redis://***@h");
    assert_eq!(redact("redis://h:1"), "redis://h:1");
    assert_eq!(
        redact("redis+unix:///run/r.sock?db=2&pass=secret"),
        "redis+unix:///run/r.sock?db=2&pass=***"
    );
    assert_eq!(
        redact("redis+unix:///run/a@b.sock"),
        "redis+unix:///run/a@b.sock"
    );
}
