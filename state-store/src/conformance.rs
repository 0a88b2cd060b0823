//! What every [`StateStore`] does, as test bodies run against each implementation
//! (`sqlite::tests`, `redis_store::tests`): SQLite's behaviour is the definition.

use crate::records::{CertRecord, RendezvousRecord, SshKeyRecord, TokenRecord, TunnelRecord};
use crate::sqlite::SqliteStore;
use crate::{StateError, StateStore, TunnelFlavour};
use std::path::{Path, PathBuf};

pub(crate) fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tunneld-{what}-{}",
        tunneld_core::auth::hex(&tunneld_core::auth::random_bytes::<6>())
    ))
}

pub(crate) fn token(name: &str) -> TokenRecord {
    TokenRecord {
        name: name.into(),
        digest: tunneld_core::auth::hex(&tunneld_core::auth::sha256(name.as_bytes())),
        max_ports: Some(2),
        max_names: None,
        expires_at: Some(100),
        single_use: true,
        used_at: None,
        transports: Some(vec!["edge".into()]),
        revoked_at: None,
        created_at: 1,
    }
}

pub(crate) fn tunnel(name: &str, owner: &str, created_at: u64) -> TunnelRecord {
    TunnelRecord {
        name: name.into(),
        owner: owner.into(),
        protocols: vec!["https".into(), "tcp".into()],
        ports: [("tcp".to_string(), 20001u16)].into(),
        created_at,
        expires_at: None,
        flavour: Default::default(),
        id_digest: None,
    }
}

pub(crate) fn key(fp: &str, client: &str, tunnel: Option<&str>) -> SshKeyRecord {
    SshKeyRecord {
        fingerprint: fp.into(),
        key: "ssh-ed25519 AAAA".into(),
        comment: Some("me@host".into()),
        client: client.into(),
        tunnel: tunnel.map(str::to_string),
        created_at: 2,
    }
}

fn rendezvous(id: &str) -> RendezvousRecord {
    RendezvousRecord {
        id: id.into(),
        secret: "GEZDGNBVGY3TQOJQ".into(),
        step: 30,
        client: Some("alice".into()),
        created: 4,
    }
}

fn cert(serial: &str, tunnel: &str, created_at: u64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        tunnel: tunnel.into(),
        owner: "alice".into(),
        names: vec![format!("{tunnel}.example.com")],
        not_after: 1_000,
        pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n"),
        created_at,
    }
}

fn exists<T: std::fmt::Debug>(r: Result<T, StateError>) -> bool {
    matches!(r, Err(StateError::Exists(_)))
}

fn sorted(mut v: Vec<(String, u64, String)>) -> Vec<(String, u64, String)> {
    v.sort();
    v
}

/// Tokens: unique names and digests, lookups, use once, revoke (the first time stays).
pub(crate) fn tokens(s: &dyn StateStore) {
    let (bob, alice) = (token("bob"), token("alice"));
    s.add_token(&bob).expect("add");
    s.add_token(&alice).expect("add");
    assert!(exists(s.add_token(&alice)), "name taken");
    let mut same_digest = token("carol");
    same_digest.digest.clone_from(&alice.digest);
    assert!(exists(s.add_token(&same_digest)), "digest taken");
    assert_eq!(
        s.token_by_digest(&alice.digest).expect("get"),
        Some(alice.clone())
    );
    assert_eq!(s.token_by_digest(&"00".repeat(32)).expect("get"), None);
    assert_eq!(s.token("bob").expect("get"), Some(bob.clone()));
    assert_eq!(s.token("carol").expect("get"), None);
    assert_eq!(s.tokens().expect("all"), vec![alice.clone(), bob.clone()]);
    assert!(s.use_token("alice", 5).expect("use"));
    assert!(!s.use_token("alice", 6).expect("used"));
    assert!(!s.use_token("nobody", 6).expect("no such token"));
    assert!(s.revoke_token("alice", 7).expect("revoke"));
    assert!(s.revoke_token("alice", 8).expect("revoked again"));
    assert!(!s.revoke_token("nobody", 7).expect("no such token"));
    let got = s.token("alice").expect("get").expect("some");
    assert_eq!((got.used_at, got.revoked_at), (Some(5), Some(7)));
    assert_eq!(s.token_by_digest(&alice.digest).expect("get"), Some(got));
}

/// Tunnels, SSH keys and certificates.
pub(crate) fn tunnels_keys_and_certificates(s: &dyn StateStore) {
    let mut t = tunnel("calm-blue-otter", "alice", 3);
    t.flavour = TunnelFlavour::Pipe2me;
    t.id_digest = Some("ab".repeat(32));
    s.add_tunnel(&t).expect("tunnel");
    assert!(exists(s.add_tunnel(&t)), "name taken");
    let mut same_id = tunnel("other", "bob", 1);
    same_id.id_digest.clone_from(&t.id_digest);
    assert!(exists(s.add_tunnel(&same_id)), "secret id taken");
    let (early, late) = (tunnel("zz-early", "bob", 1), tunnel("aa-late", "bob", 9));
    s.add_tunnel(&late).expect("tunnel");
    s.add_tunnel(&early).expect("tunnel");
    assert_eq!(s.tunnel(&t.name).expect("get"), Some(t.clone()));
    assert_eq!(s.tunnel("none").expect("get"), None);
    let names = |owner: Option<&str>| -> Vec<String> {
        let all = s.tunnels(owner).expect("list");
        all.into_iter().map(|t| t.name).collect()
    };
    assert_eq!(names(None), ["zz-early", "calm-blue-otter", "aa-late"]);
    assert_eq!(names(Some("bob")), ["zz-early", "aa-late"]);
    assert!(names(Some("carol")).is_empty());
    // An update sets the owner, protocols, ports and expiry; the rest stays.
    let mut changed = t.clone();
    changed.expires_at = Some(99);
    changed.ports = [("tcp".to_string(), 20009u16)].into();
    changed.created_at = 50;
    changed.flavour = TunnelFlavour::Native;
    changed.id_digest = None;
    s.update_tunnel(&changed).expect("update");
    let mut want = t.clone();
    want.expires_at = Some(99);
    want.ports.clone_from(&changed.ports);
    assert_eq!(s.tunnel(&t.name).expect("get"), Some(want));
    let missing = s.update_tunnel(&tunnel("none", "alice", 1));
    assert!(
        matches!(missing, Err(StateError::Invalid(_))),
        "{missing:?}"
    );

    let a = key("SHA256:a", "alice", None);
    let b = key("SHA256:b", "alice", Some("calm-blue-otter"));
    let c = key("SHA256:c", "bob", None);
    for k in [&c, &b, &a] {
        s.add_ssh_key(k).expect("add");
    }
    assert!(exists(s.add_ssh_key(&a)));
    assert_eq!(s.ssh_key("SHA256:b").expect("get"), Some(b.clone()));
    assert_eq!(s.ssh_key("SHA256:x").expect("get"), None);
    assert_eq!(s.ssh_keys(Some("alice")).expect("list"), [a.clone(), b]);
    assert_eq!(s.ssh_keys(None).expect("list").len(), 3);
    assert!(s.remove_ssh_key("SHA256:c").expect("remove"));
    assert!(!s.remove_ssh_key("SHA256:c").expect("gone"));

    for c in [
        cert("01", &t.name, 5),
        cert("02", &t.name, 7),
        cert("03", &t.name, 7),
    ] {
        s.add_certificate(&c).expect("certificate");
    }
    s.add_certificate(&cert("04", "aa-late", 1))
        .expect("another tunnel's");
    assert!(
        exists(s.add_certificate(&cert("02", "aa-late", 2))),
        "serials are unique"
    );
    let serials = |tunnel: &str| -> Vec<String> {
        let all = s.certificates(tunnel).expect("list");
        all.into_iter().map(|c| c.serial).collect()
    };
    assert_eq!(
        serials(&t.name),
        ["03", "02", "01"],
        "newest first, then latest added"
    );
    assert_eq!(
        s.certificates("aa-late").expect("list"),
        [cert("04", "aa-late", 1)]
    );
    assert!(serials("none").is_empty());

    // Deleting the tunnel deletes the keys bound to it, not the client's own, and frees
    // its secret id; its certificates stay.
    assert!(s.delete_tunnel(&t.name).expect("delete"));
    assert!(!s.delete_tunnel(&t.name).expect("gone"));
    assert_eq!(s.ssh_keys(None).expect("list"), [a]);
    s.add_tunnel(&same_id).expect("the secret id is free again");
    assert_eq!(serials(&t.name).len(), 3);
}

/// Rendezvous ids, used codes and the admin mappings.
pub(crate) fn rendezvous_codes_and_mappings(s: &dyn StateStore) {
    let (r2, r1) = (rendezvous("r2"), rendezvous("r1"));
    s.add_rendezvous(&r2).expect("add");
    s.add_rendezvous(&r1).expect("add");
    assert!(exists(s.add_rendezvous(&r1)));
    assert_eq!(s.rendezvous("r1").expect("get"), Some(r1.clone()));
    assert_eq!(s.rendezvous("r3").expect("get"), None);
    assert_eq!(s.rendezvous_ids().expect("all"), [r1.clone(), r2.clone()]);
    let rotated = RendezvousRecord {
        secret: "DEF".into(),
        step: 60,
        client: None,
        created: 9,
        ..r1
    };
    assert!(s.update_rendezvous(&rotated).expect("update"));
    assert_eq!(s.rendezvous("r1").expect("get"), Some(rotated));
    assert!(!s
        .update_rendezvous(&rendezvous("nope"))
        .expect("no such id"));
    assert_eq!(s.rendezvous("nope").expect("get"), None);
    assert!(s.remove_rendezvous("r2").expect("remove"));
    assert!(!s.remove_rendezvous("r2").expect("gone"));

    let code = |id: &str, n, addr: &str| (id.to_string(), n, addr.to_string());
    s.add_used_code("r1", 1, "192.0.2.1", 100, 0).expect("code");
    s.add_used_code("r1", 1, "192.0.2.9", 101, 0)
        .expect("the first use stays");
    s.add_used_code("r1", 2, "192.0.2.2", 120, 0).expect("code");
    s.add_used_code("r2", 1, "192.0.2.3", 130, 0).expect("code");
    assert_eq!(
        sorted(s.used_codes(0).expect("all")),
        [
            code("r1", 1, "192.0.2.1"),
            code("r1", 2, "192.0.2.2"),
            code("r2", 1, "192.0.2.3")
        ]
    );
    assert_eq!(
        sorted(s.used_codes(120).expect("since")).len(),
        2,
        "at or after"
    );
    assert!(s.used_codes(131).expect("none").is_empty());
    // Forgets those recorded before `forget_before` (120 stays).
    s.add_used_code("r3", 7, "192.0.2.4", 140, 120)
        .expect("code");
    assert_eq!(
        sorted(s.used_codes(0).expect("all")),
        [
            code("r1", 2, "192.0.2.2"),
            code("r2", 1, "192.0.2.3"),
            code("r3", 7, "192.0.2.4")
        ]
    );
    s.add_used_code("r1", 1, "192.0.2.5", 150, 0)
        .expect("forgotten: recorded anew");
    assert_eq!(
        s.used_codes(150).expect("new"),
        [code("r1", 1, "192.0.2.5")]
    );

    assert_eq!(s.admin_mappings().expect("none"), None);
    s.set_admin_mappings("[]").expect("set");
    s.set_admin_mappings(r#"[{"route":"a"}]"#).expect("replace");
    assert_eq!(
        s.admin_mappings().expect("get").as_deref(),
        Some(r#"[{"route":"a"}]"#)
    );
}

/// All of the above, then `check` and a backup that holds every record.
pub(crate) fn every_method_and_backup(s: &dyn StateStore, dir: &Path) {
    tokens(s);
    tunnels_keys_and_certificates(s);
    rendezvous_codes_and_mappings(s);
    assert_eq!(s.check().expect("check"), "ok");
    std::fs::create_dir_all(dir).expect("dir");
    let copy = dir.join("backup.db");
    s.backup(&copy).expect("backup");
    assert!(exists(s.backup(&copy)), "never overwrites");
    let b = SqliteStore::open(&copy).expect("open backup");
    assert_eq!(b.tokens().expect("tokens"), s.tokens().expect("tokens"));
    assert_eq!(
        b.tunnels(None).expect("tunnels"),
        s.tunnels(None).expect("tunnels")
    );
    assert_eq!(
        b.ssh_keys(None).expect("keys"),
        s.ssh_keys(None).expect("keys")
    );
    let ids = s.rendezvous_ids().expect("ids");
    assert_eq!(b.rendezvous_ids().expect("ids"), ids);
    for t in ["calm-blue-otter", "aa-late"] {
        assert_eq!(
            b.certificates(t).expect("certs"),
            s.certificates(t).expect("certs")
        );
    }
    let codes = sorted(s.used_codes(0).expect("codes"));
    assert_eq!(sorted(b.used_codes(0).expect("codes")), codes);
    assert_eq!(
        b.admin_mappings().expect("m"),
        s.admin_mappings().expect("m")
    );
    assert_eq!(b.check().expect("check"), "ok");
}

/// The change counters move with each write to the table they count, and only then.
pub(crate) fn counters_move_with_writes(s: &dyn StateStore) {
    let first = s.cached_changes(None).expect("first read");
    assert_eq!(first.tokens.as_deref(), Some(&[][..]));
    assert!(first.rendezvous.is_some() && first.tunnels.is_some() && first.ssh_keys.is_some());
    let mut known = first.versions;
    // Which tables moved since the last call, and checks their content came along.
    let mut moved = |what: &str| -> Vec<&'static str> {
        let c = s
            .cached_changes(Some(known))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut out = Vec::new();
        if let Some(all) = c.tokens {
            assert_eq!(all, s.tokens().expect("tokens"), "{what}");
            out.push("tokens");
        }
        if let Some(all) = c.rendezvous {
            assert_eq!(all, s.rendezvous_ids().expect("ids"), "{what}");
            out.push("rendezvous");
        }
        if let Some(all) = c.tunnels {
            assert_eq!(all, s.tunnels(None).expect("tunnels"), "{what}");
            out.push("tunnels");
        }
        if let Some(all) = c.ssh_keys {
            assert_eq!(all, s.ssh_keys(None).expect("keys"), "{what}");
            out.push("ssh_keys");
        }
        assert_eq!(
            out.is_empty(),
            c.versions == known,
            "{what}: counters and tables agree"
        );
        known = c.versions;
        out
    };
    assert!(moved("nothing written").is_empty());
    s.add_token(&token("alice")).expect("add");
    assert_eq!(moved("token added"), ["tokens"]);
    assert!(exists(s.add_token(&token("alice"))));
    assert!(moved("a refused add").is_empty());
    s.revoke_token("alice", 3).expect("revoke");
    assert_eq!(moved("token revoked"), ["tokens"]);
    s.add_rendezvous(&rendezvous("r1")).expect("add");
    assert_eq!(moved("id added"), ["rendezvous"]);
    s.update_rendezvous(&rendezvous("r1")).expect("update");
    assert_eq!(moved("id updated"), ["rendezvous"]);
    s.add_tunnel(&tunnel("web", "alice", 1)).expect("add");
    assert_eq!(moved("tunnel added"), ["tunnels"]);
    s.add_ssh_key(&key("SHA256:k", "alice", Some("web")))
        .expect("add");
    assert_eq!(moved("key added"), ["ssh_keys"]);
    assert!(s.delete_tunnel("web").expect("delete"));
    assert_eq!(moved("tunnel and its key deleted"), ["tunnels", "ssh_keys"]);
    assert!(!s.delete_tunnel("web").expect("gone"));
    assert!(!s.remove_ssh_key("SHA256:k").expect("gone"));
    assert!(!s.remove_rendezvous("r9").expect("none"));
    s.add_used_code("r1", 1, "192.0.2.1", 1, 0).expect("code");
    s.set_admin_mappings("[]").expect("mappings");
    s.add_certificate(&cert("01", "web", 1))
        .expect("certificate");
    assert!(moved("nothing cached written").is_empty());
    assert!(s.remove_rendezvous("r1").expect("remove"));
    assert_eq!(moved("id removed"), ["rendezvous"]);
}
