//! The threshold dialect of the yamux transport, against a client built on the reference
//! yamux implementation (hashicorp/yamux, Go, from Debian), and threshold's admin API shapes.

use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_integration_tests::process::go_threshold_client_or_skip;
use tunneld_integration_tests::services::{recorder, tagged_echo, visit_tagged};
use tunneld_integration_tests::{client_pki, metrics, temp_dir, TestServer, WAIT};

/// `tunneld_handshakes_total{outcome}`.
fn hs(m: &metrics::Samples, outcome: &str) -> f64 {
    m.get("tunneld_handshakes_total", &[("outcome", outcome)])
}

fn threshold_sets(header_identity: bool) -> Vec<String> {
    vec![
        "transports.edge.threshold.domain=example.test".into(),
        format!("transports.edge.threshold.header_identity={header_identity}"),
        "transports.edge.threshold.pair_timeout=5s".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_threshold_client_serves_visitors_with_fifo_pairing_and_proxy_v1() {
    let Some(go) = go_threshold_client_or_skip("threshold interop") else {
        return;
    };
    let server = TestServer::start_full("", &threshold_sets(true))
        .await
        .expect("server");
    let (svc_a, svc_b) = (
        tagged_echo("service-a").await,
        tagged_echo("service-b").await,
    );
    let (rec, mut recorded) = recorder().await;
    let mut node = server
        .spawn_threshold_client(
            &go,
            &["-id", "node1"],
            &[("a", svc_a), ("b", svc_b), ("rec", rec)],
            "node1",
        )
        .expect("spawn the Go client");
    node.line_starting("connected")
        .await
        .expect("go client connects");

    let (pa, pb, pr) = (server.range.0 + 1, server.range.0 + 2, server.range.0 + 3);
    let listeners = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"a","HaProxyProxyProtocol":false}},
            {{"ClientIdentifier":"node1","ListenPort":{pb},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"b","HaProxyProxyProtocol":false}},
            {{"ClientIdentifier":"node1","ListenPort":{pr},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"rec","HaProxyProxyProtocol":true}}]"#
    );
    let (code, body) = server.admin_call("PUT", "/tunnels", Some(&listeners)).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("threshold listener list");
    assert_eq!(answer[2]["HaProxyProxyProtocol"], true, "{body}");
    assert_eq!(answer[0]["ClientIdentifier"], "node1", "{body}");

    // 120 concurrent visitors over two services: a wrong pairing would hand a visitor of
    // one service the other's tag.
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let (port, want) = if i % 2 == 0 {
            (pa, "service-a")
        } else {
            (pb, "service-b")
        };
        tasks.push(tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let tag = visit_tagged(addr, 4096 + i as usize * 97, i).await?;
            anyhow::ensure!(tag == want, "visitor {i} of {want} got {tag}");
            Ok(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("visitor");
    }

    // PROXY v1: the local service sees the line threshold's server wrote.
    let mut v = tokio::net::TcpStream::connect(("127.0.0.1", pr))
        .await
        .expect("visitor");
    let local = v.local_addr().expect("addr");
    let first = tokio::time::timeout(WAIT, recorded.recv())
        .await
        .expect("recorded in time")
        .expect("recorded");
    let line = String::from_utf8_lossy(&first);
    assert!(
        line.starts_with(&format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {pr}\r\n",
            local.port()
        )),
        "{line:?}"
    );
    v.write_all(b"after-proxy").await.expect("write");
    let mut back = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&back).contains("after-proxy") {
        let n = tokio::time::timeout(WAIT, v.read(&mut buf))
            .await
            .expect("echo in time")
            .expect("read");
        assert!(n > 0, "closed early");
        back.extend_from_slice(&buf[..n]);
    }

    // Threshold's management shapes.
    let (code, clients) = server
        .admin_call("GET", "/clients?shape=threshold", None)
        .await;
    assert_eq!(code, 200);
    let clients: serde_json::Value = serde_json::from_str(&clients).expect("json");
    assert_eq!(clients["node1"]["CurrentState"], "ClientConnected");
    let (code, pong) = server.admin_call("GET", "/ping", None).await;
    assert_eq!((code, pong.as_str()), (200, "pong"));
    let (code, listed) = server
        .admin_call("GET", "/tunnels?shape=threshold", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed).expect("json"),
        answer
    );
    // Threshold's error semantics: 422, 400, 404, 409, as plain text.
    let bad_addr = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"nowhere","BackEndService":"a"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&bad_addr)).await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("is not an IP address"), "{msg}");
    let unknown = format!(
        r#"[{{"ClientIdentifier":"ghost","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"a"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&unknown)).await;
    assert_eq!(code, 404, "{msg}");
    let (code, msg) = server
        .admin_call(
            "PUT",
            "/tunnels",
            Some(r#"[{"ClientIdentifier":"node1","ListenPort":"x"}]"#),
        )
        .await;
    assert_eq!(code, 422, "{msg}");
    let twice = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"a"}},
            {{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"b"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&twice)).await;
    assert_eq!(code, 409, "{msg}");
    assert_eq!(
        visit_tagged(std::net::SocketAddr::from(([127, 0, 0, 1], pa)), 10, 1)
            .await
            .expect("failed updates keep the listeners"),
        "service-a"
    );

    let m = server.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_pool_streams_total",
            &[("route", &format!("mapping-{pa}")), ("client", "node1")]
        ),
        61.0
    );
    assert_eq!(
        m.get("tunneld_sessions_active", &[("transport", "edge")]),
        1.0
    );
    assert_eq!(m.get("tunneld_threshold_pairs_pending", &[]), 0.0);
    drop(node);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_threshold_handshakes_get_a_status_and_a_metric() {
    let server = TestServer::start_full("", &threshold_sets(true))
        .await
        .expect("server");
    let huge = format!(
        "CONNECT /_controlPath/ HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let cases = [
        (
            "CONNECT /nope HTTP/1.1\r\nX-Threshold-ClientId: n\r\n\r\n",
            "404",
        ),
        ("CONNECT /_controlPath/ HTTP/1.1\r\nHost: t\r\n\r\n", "401"),
        (
            "CONNECT /_controlPath/ HTTP/1.1\r\nX-Threshold-ClientId: bad id!\r\n\r\n",
            "400",
        ),
        ("CONNECT /_controlPath/ SPDY/3\r\n\r\n", "400"),
        (huge.as_str(), "400"),
    ];
    for (head, want) in cases {
        let mut tls = server.tls_connect().await;
        // The server may answer and close before reading all of an oversized head.
        let _ = tls.write_all(head.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
            .await
            .expect("answered and closed in time");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want} ")),
            "{} -> {text}",
            &head[..head.len().min(60)]
        );
    }
    assert!(server.running.hub.sessions().is_empty());
    let m = server
        .metrics_until(|m| {
            hs(m, "head_too_large") >= 1.0
                && hs(m, "missing_credentials") >= 1.0
                && hs(m, "bad_request") >= 3.0
        })
        .await;
    assert!(m.get("tunneld_handshakes_total", &[("outcome", "head_too_large")]) >= 1.0);
    assert!(
        m.get(
            "tunneld_handshakes_total",
            &[("outcome", "missing_credentials")]
        ) >= 1.0
    );
    assert!(m.get("tunneld_handshakes_total", &[("outcome", "bad_request")]) >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_koding_client_gets_kodings_control_messages() {
    let Some(go) = go_threshold_client_or_skip("koding interop") else {
        return;
    };
    let server = TestServer::start_full("", &threshold_sets(true))
        .await
        .expect("server");
    let (one, two) = (
        tagged_echo("koding-one").await,
        tagged_echo("koding-two").await,
    );
    let (p1, p2) = (server.range.0 + 7, server.range.0 + 8);
    // koding's client maps the public port in each control message to a local address.
    let mut node = server
        .spawn_threshold_client(
            &go,
            &[
                "-id",
                "kclient",
                "-header",
                "X-KTunnel-Identifier",
                "-dialect",
                "koding",
            ],
            &[(&p1.to_string(), one), (&p2.to_string(), two)],
            "kclient",
        )
        .expect("spawn the Go client");
    node.line_starting("connected")
        .await
        .expect("koding client connects");
    let listeners = format!(
        r#"[{{"ClientIdentifier":"kclient","ListenPort":{p1},"ListenAddress":"127.0.0.1","BackEndService":"one"}},
            {{"ClientIdentifier":"kclient","ListenPort":{p2},"ListenAddress":"127.0.0.1","BackEndService":"two"}}]"#
    );
    let (code, body) = server.admin_call("PUT", "/tunnels", Some(&listeners)).await;
    assert_eq!(code, 200, "{body}");
    // Concurrent visitors on both ports: each reaches its own service, and the client (which
    // panics on a message it cannot use) stays up.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let (port, want) = if i % 2 == 0 {
            (p1, "koding-one")
        } else {
            (p2, "koding-two")
        };
        tasks.push(tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let tag = visit_tagged(addr, 2048 + i as usize * 31, i).await?;
            anyhow::ensure!(tag == want, "visitor {i} of {want} got {tag}");
            Ok(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("visitor");
    }
    let sessions = server.running.hub.sessions();
    assert_eq!(
        sessions.len(),
        1,
        "the koding client crashed: {}",
        node.stderr()
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_clients_over_plain_tcp_when_opted_in() {
    let Some(go) = go_threshold_client_or_skip("threshold plain TCP") else {
        return;
    };
    let plain = tunneld_integration_tests::port_block().0;
    let mut sets = threshold_sets(true);
    sets.push(format!(
        "transports.edge.threshold.plain_listen=127.0.0.1:{plain}"
    ));
    let server = TestServer::start_full("", &sets).await.expect("server");
    let echo = tagged_echo("plain").await;
    let args: Vec<String> = vec![
        "-server".into(),
        format!("127.0.0.1:{plain}"),
        "-ca".into(),
        server.ca_file().display().to_string(),
        "-plain".into(),
        "-id".into(),
        "plainnode".into(),
        "-service".into(),
        format!("svc={echo}"),
    ];
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = tunneld_integration_tests::process::Proc::spawn_program(
        &go,
        &args_ref,
        server.dir.join("plain.err"),
    )
    .expect("spawn the Go client");
    node.line_starting("connected")
        .await
        .expect("connects over plain TCP");
    let p = server.range.0 + 9;
    let (code, body) = server
        .admin_call(
            "PUT",
            "/tunnels",
            Some(&format!(
                r#"[{{"ClientIdentifier":"plainnode","ListenPort":{p},"ListenAddress":"127.0.0.1","BackEndService":"svc"}}]"#
            )),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        visit_tagged(std::net::SocketAddr::from(([127, 0, 0, 1], p)), 4096, 3)
            .await
            .expect("visitor"),
        "plain"
    );
    // The plain port takes nothing but the control CONNECT.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", plain))
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 405"),
        "{out:?}"
    );
    drop(node);
}
