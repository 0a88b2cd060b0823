//! Hostile handshakes, koding's control messages, and threshold over plain TCP.

use super::*;

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
