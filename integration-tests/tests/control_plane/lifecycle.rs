//! Expiry and revocation cutting live sessions, and state surviving a restart and a
//! `kill -9` in the middle of writes.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_revocation_cut_live_sessions() {
    let p = Plane::start().await.expect("tunneld");
    let port = free_port();
    let tunnels = format!("  t:\n    local: 127.0.0.1:{port}\n");
    // Expiry: the session is cut when the lifespan ends, and reconnecting is refused.
    let t = p.token("gina", &["--lifespan", "3s"]).expect("token");
    let (mut rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    connected_then_cut(&mut rx).await;
    let err = refused(task).await;
    assert!(err.to_string().contains("expired"), "{err}");

    // Revocation from another process cuts the live session too.
    let t = p.token("hank", &[]).expect("token");
    let (mut rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    assert!(matches!(
        next_event(&mut rx).await,
        ClientEvent::Connected { .. }
    ));
    let out = p.cli(&["token", "revoke", "hank"]).expect("revoke");
    assert!(out.contains("revoked hank"), "{out}");
    assert!(matches!(
        next_event(&mut rx).await,
        ClientEvent::Disconnected { .. }
    ));
    let err = refused(task).await;
    assert!(err.to_string().contains("revoked"), "{err}");
    let api = p.api(&t).expect("api");
    let (s, v) = call(&api, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401, "{v}");
    assert!(error_of(&v).contains("revoked"), "{v}");

    // A token limited to other transports.
    let t = p
        .token("ivan", &["--transports", "h2-reverse"])
        .expect("token");
    let (_rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    let err = refused(task).await;
    assert!(
        err.to_string().contains("does not allow transport `edge`"),
        "{err}"
    );
    // Bad CLI input is refused with a message.
    let e = p
        .cli(&["token", "add", "x", "--lifespan", "soon"])
        .expect_err("bad lifespan");
    assert!(e.to_string().contains("--lifespan"), "{e}");
    let e = p.cli(&["token", "add", "alice"]).expect_err("config name");
    assert!(e.to_string().contains("auth.tokens.alice"), "{e}");
    let e = p
        .cli(&["token", "add", "y", "--transports", "nope"])
        .expect_err("transport");
    assert!(e.to_string().contains("`nope`"), "{e}");

    let m = p.metrics().await;
    has(&m, "tunneld_sessions_cut_total{reason=\"expired\"} 1");
    has(&m, "tunneld_sessions_cut_total{reason=\"revoked\"} 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_kill_9_during_writes() {
    let mut p = Plane::start().await.expect("tunneld");
    let t = p.token("jane", &["--max-names", "1000"]).expect("token");
    let api = p.api(&t).expect("api");
    let (s, first) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "keep", "protocols": ["https", "tcp"]})),
    )
    .await;
    assert_eq!(s, 201, "{first}");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec!["keep.localhost".to_string()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (s, signed) = api
        .call(
            Method::POST,
            "/v1/tunnels/keep/certificate",
            "application/pkcs10",
            csr.into_bytes(),
        )
        .await
        .expect("sign");
    assert_eq!(s.as_u16(), 201);
    let serial = serde_json::from_slice::<Value>(&signed).expect("json")["serial"].clone();
    let ca_before = std::fs::read(p.ca()).expect("ca");

    // Writes in flight: creations from two tasks while tunneld is killed with SIGKILL.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for w in 0..2 {
        let api = p.api(&t).expect("api");
        let ack_tx = ack_tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let body = json!({"name": name, "protocols": ["https"]}).to_string();
                match api
                    .call(
                        Method::POST,
                        "/v1/tunnels",
                        "application/json",
                        body.into_bytes(),
                    )
                    .await
                {
                    Ok((s, _)) if s.as_u16() == 201 => {
                        let _ = ack_tx.send(name);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(ack_tx);
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let name = tokio::time::timeout(WAIT, ack_rx.recv())
            .await
            .expect("creations acknowledged in time")
            .expect("writers running");
        acked.push(name);
    }
    p.proc.signal("KILL").expect("kill -9");
    let _ = p.proc.wait().await;
    for w in writers {
        let _ = tokio::time::timeout(WAIT, w).await;
    }
    while let Ok(name) = ack_rx.try_recv() {
        acked.push(name);
    }

    // The store is readable and complete.
    let out = p.cli(&["state", "check"]).expect("check");
    assert!(out.contains(": ok ("), "{out}");
    let (dir, config) = (p.dir.clone(), p.config.clone());
    drop(p);
    let p = Plane::run(dir, config).await.expect("restart");
    assert_eq!(std::fs::read(p.ca()).expect("ca"), ca_before, "same CA");
    let api = p.api(&t).expect("token still valid");
    let (s, list) = call(&api, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for n in &acked {
        assert!(
            names.contains(&n.as_str()),
            "acknowledged `{n}` lost after kill -9"
        );
    }
    let keep = list
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["name"] == "keep")
        .expect("keep");
    // The same name (the https listener moved: it is on port 0) and the same leased port.
    assert!(
        keep["endpoints"][0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://keep.localhost:")),
        "{keep}"
    );
    assert_eq!(
        keep["endpoints"][1], first["endpoints"][1],
        "same port lease"
    );
    assert_eq!(
        keep["certificates"][0]["serial"], serial,
        "issued certificate kept"
    );
    // The leased port is held for jane: another client cannot take it.
    let leased: u16 = first["endpoints"][1]["url"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let other = p.token("kim", &[]).expect("token");
    let cfg = client_cfg(
        &p,
        &other,
        &format!("  t:\n    local: 127.0.0.1:1\n    remote_port: {leased}\n"),
    )
    .expect("cfg");
    // Every tunnel it asked for is refused: tunnelc says why in one line and stops.
    let (_rx, task, _stop) = run_client(cfg);
    let err = refused(task).await.to_string();
    assert!(
        err.contains("tunneld refused every tunnel") && err.contains("held by another client"),
        "{err}"
    );
    // Backups are consistent copies.
    let backup = p.dir.join("backup.db");
    let out = p
        .cli(&["state", "backup", backup.to_str().expect("utf8")])
        .expect("backup");
    assert!(out.contains("wrote"), "{out}");
    assert!(std::fs::metadata(&backup).expect("backup").len() > 0);
}
