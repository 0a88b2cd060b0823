use super::*;

fn temp() -> PathBuf {
    std::env::temp_dir().join(format!(
        "tunneld-state-{}",
        tunneld_core::auth::hex(&tunneld_core::auth::random_bytes::<6>())
    ))
}

fn token(name: &str) -> TokenRecord {
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

#[test]
fn round_trips_and_survives_reopen() {
    let dir = temp();
    let path = dir.join(crate::FILE);
    let s = SqliteStore::open(&path).expect("open");
    let a = token("alice");
    s.add_token(&a).expect("add");
    assert!(matches!(s.add_token(&a), Err(StateError::Exists(_))));
    assert_eq!(s.token_by_digest(&a.digest).expect("get"), Some(a.clone()));
    assert!(s.use_token("alice", 5).expect("use"));
    assert!(!s.use_token("alice", 6).expect("used"));
    assert!(s.revoke_token("alice", 7).expect("revoke"));
    assert!(!s.revoke_token("nobody", 7).expect("revoke"));
    let t = TunnelRecord {
        name: "calm-blue-otter".into(),
        owner: "alice".into(),
        protocols: vec!["https".into(), "tcp".into()],
        ports: [("tcp".to_string(), 20001u16)].into(),
        created_at: 3,
        expires_at: None,
        flavour: Default::default(),
        id_digest: None,
    };
    s.add_tunnel(&t).expect("tunnel");
    assert!(matches!(s.add_tunnel(&t), Err(StateError::Exists(_))));
    let mut t2 = t.clone();
    t2.expires_at = Some(99);
    s.update_tunnel(&t2).expect("update");
    s.add_rendezvous(&RendezvousRecord {
        id: "r1".into(),
        secret: "ABC".into(),
        step: 30,
        client: None,
        created: 4,
    })
    .expect("rdv");
    let mut rotated = s.rendezvous("r1").expect("rdv").expect("r1");
    rotated.secret = "DEF".into();
    assert!(s.update_rendezvous(&rotated).expect("update"));
    rotated.id = "nope".into();
    assert!(!s.update_rendezvous(&rotated).expect("update"));
    drop(s);
    // The last connection to close (the writing one) checkpoints and removes the WAL.
    let wal = path.with_extension("db-wal");
    assert!(!wal.exists(), "{} left behind", wal.display());
    let s = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        s.rendezvous("r1").expect("rdv").map(|r| r.secret),
        Some("DEF".into())
    );
    let got = s.token("alice").expect("get").expect("some");
    assert_eq!((got.used_at, got.revoked_at), (Some(5), Some(7)));
    assert!(got.refusal(8).expect("refused").contains("revoked"));
    assert_eq!(s.tunnels(Some("alice")).expect("list"), vec![t2]);
    assert!(s.tunnels(Some("bob")).expect("list").is_empty());
    assert_eq!(s.rendezvous("r1").expect("rdv").map(|r| r.step), Some(30));
    assert_eq!(s.check().expect("check"), "ok");
    let copy = dir.join("backup.db");
    s.backup(&copy).expect("backup");
    let b = SqliteStore::open(&copy).expect("open backup");
    assert_eq!(b.tokens().expect("tokens").len(), 1);
    assert!(s.delete_tunnel("calm-blue-otter").expect("delete"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_file_is_refused_with_its_path() {
    let dir = temp();
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("state.db");
    std::fs::write(&path, vec![b'x'; 4096]).expect("write");
    let e = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(e.contains("state.db"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn key(fp: &str, client: &str, tunnel: Option<&str>) -> SshKeyRecord {
    SshKeyRecord {
        fingerprint: fp.into(),
        key: "ssh-ed25519 AAAA".into(),
        comment: Some("me@host".into()),
        client: client.into(),
        tunnel: tunnel.map(str::to_string),
        created_at: 2,
    }
}

#[test]
fn ssh_keys_round_trip_and_go_with_their_tunnel() {
    let dir = temp();
    let s = SqliteStore::open(&dir.join(crate::FILE)).expect("open");
    let t = TunnelRecord {
        name: "calm-blue-otter".into(),
        owner: "alice".into(),
        protocols: vec!["http".into(), "https".into()],
        ports: [("http".to_string(), 20001u16), ("https".into(), 20002)].into(),
        created_at: 3,
        expires_at: None,
        flavour: crate::TunnelFlavour::Pipe2me,
        id_digest: Some("ab".repeat(32)),
    };
    s.add_tunnel(&t).expect("tunnel");
    assert_eq!(s.tunnel(&t.name).expect("get"), Some(t.clone()));
    let a = key("SHA256:a", "alice", None);
    let b = key("SHA256:b", "alice", Some("calm-blue-otter"));
    let c = key("SHA256:c", "bob", None);
    for k in [&a, &b, &c] {
        s.add_ssh_key(k).expect("add");
    }
    assert!(matches!(s.add_ssh_key(&a), Err(StateError::Exists(_))));
    assert_eq!(s.ssh_key("SHA256:b").expect("get"), Some(b.clone()));
    assert_eq!(
        s.ssh_keys(Some("alice")).expect("list"),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(s.ssh_keys(None).expect("list").len(), 3);
    assert_eq!(a.algorithm(), "ssh-ed25519");
    assert!(s.remove_ssh_key("SHA256:c").expect("remove"));
    assert!(!s.remove_ssh_key("SHA256:c").expect("gone"));
    // Deleting the tunnel deletes the keys bound to it, not the client's own.
    assert!(s.delete_tunnel("calm-blue-otter").expect("delete"));
    assert_eq!(s.ssh_keys(None).expect("list"), vec![a]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written by a tunneld of schema 1 opens, keeps its rows (tunnels read as native)
/// and gains the SSH keys table; a store of a newer schema is refused.
#[test]
fn a_schema_1_store_is_upgraded() {
    let dir = temp();
    let path = dir.join(crate::FILE);
    std::fs::create_dir_all(&dir).expect("dir");
    {
        let raw = Connection::open(&path).expect("raw");
        raw.execute_batch(super::schema::SCHEMA).expect("schema 1");
        raw.execute_batch(
            "INSERT INTO tunnels (name, owner, protocols, ports, created_at, expires_at)
             VALUES ('old', 'alice', '[\"tcp\"]', '{\"tcp\":20005}', 1, NULL);
             PRAGMA user_version = 1;",
        )
        .expect("old rows");
    }
    let s = SqliteStore::open(&path).expect("upgrade");
    let old = s.tunnel("old").expect("read").expect("kept");
    assert_eq!(old.flavour, crate::TunnelFlavour::Native);
    assert_eq!(old.id_digest, None);
    assert_eq!(old.ports.get("tcp"), Some(&20005));
    s.add_ssh_key(&key("SHA256:x", "alice", Some("old")))
        .expect("keys table");
    let v: i64 = s
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(v, schema::SCHEMA_VERSION);
    drop(s);
    // Opening again changes nothing.
    let s = SqliteStore::open(&path).expect("reopen");
    assert_eq!(s.ssh_keys(None).expect("keys").len(), 1);
    s.conn()
        .pragma_update(None, "user_version", 99)
        .expect("newer");
    drop(s);
    let e = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(e.contains("newer tunneld"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The behaviour every store shares (`crate::conformance`), on SQLite.
#[test]
fn conformance_every_method_and_backup() {
    let dir = temp();
    let s = SqliteStore::open(&dir.join(crate::FILE)).expect("open");
    crate::conformance::every_method_and_backup(&s, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conformance_counters_move_with_writes() {
    let dir = temp();
    let s = SqliteStore::open(&dir.join(crate::FILE)).expect("open");
    crate::conformance::counters_move_with_writes(&s);
    let _ = std::fs::remove_dir_all(&dir);
}
