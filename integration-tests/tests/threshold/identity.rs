//! Threshold's identity from the client certificate instead of a header.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_identity_comes_from_the_client_certificate() {
    let Some(go) = go_threshold_client_or_skip("threshold mTLS") else {
        return;
    };
    let dir = temp_dir("threshold-mtls");
    let (ca, leaves) = client_pki(&dir, &["node7@example.test", "node8@other.test"]);
    let mut sets = threshold_sets(false);
    sets.push(format!("auth.client_ca={}", ca.display()));
    sets.push("admin.shape=threshold".into());
    sets.push("transports.edge.threshold.management_api=true".into());
    let server = TestServer::start_full("", &sets).await.expect("server");
    let echo = tagged_echo("seven").await;
    let arg = |p: &PathBuf| p.display().to_string();

    let (c7, k7) = (arg(&leaves[0].0), arg(&leaves[0].1));
    let mut good = server
        .spawn_threshold_client(&go, &["-cert", &c7, "-key", &k7], &[("svc", echo)], "node7")
        .expect("spawn the Go client");
    good.line_starting("connected")
        .await
        .expect("node7 connects");
    let sessions = server.running.hub.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].info.client_id, "node7");
    assert_eq!(sessions[0].info.auth_method, "certificate");
    // admin.shape: threshold makes threshold's shape the default answer.
    let (code, clients) = server.admin_call("GET", "/clients", None).await;
    assert_eq!(code, 200);
    let clients: serde_json::Value = serde_json::from_str(&clients).expect("json");
    assert_eq!(
        clients["node7"]["CurrentState"], "ClientConnected",
        "{clients}"
    );
    let p = server.range.0 + 5;
    let (code, body) = server.admin_call("PUT",
        "/tunnels",
        Some(&format!(
            r#"[{{"ClientIdentifier":"node7","ListenPort":{p},"ListenAddress":"127.0.0.1","BackEndService":"svc"}}]"#
        )),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        visit_tagged(std::net::SocketAddr::from(([127, 0, 0, 1], p)), 1000, 7)
            .await
            .expect("visitor"),
        "seven"
    );

    // threshold's /liveconfig: the client forwards PUT /tunnels to the tunnel port with its
    // client certificate, and tunneld answers it there, in threshold's shape.
    let p2 = server.range.0 + 6;
    let live = format!(
        r#"[{{"ClientIdentifier":"node7","ListenPort":{p},"ListenAddress":"127.0.0.1","BackEndService":"svc"}},{{"ClientIdentifier":"node7","ListenPort":{p2},"ListenAddress":"127.0.0.1","BackEndService":"svc"}}]"#
    );
    let mut put = server
        .spawn_threshold_client(
            &go,
            &["-cert", &c7, "-key", &k7, "-liveconfig", &live],
            &[],
            "live",
        )
        .expect("spawn the Go client");
    let status = put.line_starting("status ").await.expect("an answer");
    assert_eq!(status, "status 200", "{}", put.stderr());
    let listed = put.next_line().await.expect("the listener list");
    assert!(listed.contains(&format!("\"ListenPort\":{p2}")), "{listed}");
    assert_eq!(
        visit_tagged(std::net::SocketAddr::from(([127, 0, 0, 1], p2)), 500, 8)
            .await
            .expect("visitor on the port added over the tunnel port"),
        "seven"
    );
    // Without a client certificate: refused.
    let mut anon = server
        .spawn_threshold_client(&go, &["-liveconfig", "[]"], &[], "live-anon")
        .expect("spawn the Go client");
    let status = anon.line_starting("status ").await.expect("an answer");
    assert_eq!(status, "status 403", "{}", anon.stderr());

    // Wrong domain in the CN, a header that disagrees, and no certificate at all.
    let (c8, k8) = (arg(&leaves[1].0), arg(&leaves[1].1));
    let cases: [(&[&str], &str); 3] = [
        (&["-cert", &c8, "-key", &k8], "<id>@example.test"),
        (
            &["-cert", &c7, "-key", &k7, "-id", "node9"],
            "does not match",
        ),
        (&["-id", "node9"], "client certificate is required"),
    ];
    for (i, (args, words)) in cases.iter().enumerate() {
        let mut bad = server
            .spawn_threshold_client(&go, args, &[], &format!("bad{i}"))
            .expect("spawn the Go client");
        let status = bad.wait().await.expect("exits");
        assert!(!status.success());
        let err = bad.stderr();
        assert!(err.contains("refused") && err.contains(words), "{err}");
    }
    // Counted after the answer was written and the connection dropped.
    let m = server
        .metrics_until(|m| hs(m, "bad_certificate") >= 1.0 && hs(m, "missing_credentials") >= 1.0)
        .await;
    assert!(
        m.get(
            "tunneld_handshakes_total",
            &[("outcome", "bad_certificate")]
        ) >= 1.0
    );
    assert!(
        m.get(
            "tunneld_handshakes_total",
            &[("outcome", "missing_credentials")]
        ) >= 1.0
    );

    // threshold's answers: states as threshold reported them, `/ping/`, and `PUT []`.
    let state = |clients: &serde_json::Value| {
        (
            clients["node7"]["CurrentState"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            clients["node7"]["LastState"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    let (_, clients) = server.admin_call("GET", "/clients", None).await;
    let clients: serde_json::Value = serde_json::from_str(&clients).expect("json");
    assert_eq!(
        state(&clients),
        ("ClientConnected".into(), "ClientUnknown".into()),
        "{clients}"
    );
    let (code, pong) = server.admin_call("GET", "/ping/", None).await;
    assert_eq!((code, pong.as_str()), (200, "pong"));
    drop(good);
    // Disconnected: still listed, as closed (polled: the session ends a moment later).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, clients) = server.admin_call("GET", "/clients", None).await;
        let clients: serde_json::Value = serde_json::from_str(&clients).expect("json");
        if state(&clients) == ("ClientClosed".into(), "ClientConnected".into()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{clients}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, body) = server.admin_call("PUT", "/tunnels", Some("[]")).await;
    assert_eq!((code, body.trim()), (200, "[]"));
}
