//! The matrix: one tunneld running `config.example.yaml` (every transport, dialect and
//! frontend that exists) carries a tunnel over each transport through each frontend it serves.
//! Only listeners, state and the port range are moved to private places for the test.

use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_client::client::ClientEvent;
use tunneld_client::config::client::ClientConfig;
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::process::go_threshold_client_or_skip;
use tunneld_integration_tests::services::{
    http_echo, tagged_echo, tls_local, visit_tagged, visit_tagged_over,
};
use tunneld_integration_tests::ssh;
use tunneld_integration_tests::{
    endpoint_of, port_block, server_pki, temp_dir, TestClient, TestServer, WAIT,
};

const DEMO_TOKEN: &str = "demo-token-change-me-0123456789";

/// `CONNECT <name>:443` on the rendezvous frontend with the example's visitor credentials,
/// then a tagged visit through it: the tag that answered.
async fn connect_via_rendezvous(
    server: &TestServer,
    rdv: std::net::SocketAddr,
    name: &str,
    seed: u64,
) -> String {
    let basic = data_encoding::BASE64.encode(b"visitor:visitor-password-change-me");
    let answer = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut tls = server.tls_connect_to(rdv, b"http/1.1").await;
    tls.write_all(
        format!("CONNECT {name}:443 HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write CONNECT");
    let mut got = vec![0u8; answer.len()];
    tls.read_exact(&mut got).await.expect("CONNECT answer");
    assert_eq!(&got, answer);
    visit_tagged_over(tls, b"", b"", 2048, seed)
        .await
        .expect("visit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_reaches_every_frontend_in_one_tunneld_from_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.yaml");
    let state = temp_dir("matrix").join("state");
    let (a, b) = port_block();
    let sets = vec![
        format!("state_dir={}", state.display()),
        "admin.listen=127.0.0.1:0".into(),
        "transports.edge.listen=127.0.0.1:0".into(),
        "transports.hidden.listen=127.0.0.1:0".into(),
        "frontends.rendezvous.listen=127.0.0.1:0".into(),
        "transports.h2.listen=127.0.0.1:0".into(),
        "frontends.web.listen=127.0.0.1:0".into(),
        "transports.ws.listen=127.0.0.1:0".into(),
        "transports.ssh.listen=127.0.0.1:0".into(),
        "control.listen=127.0.0.1:0".into(),
        "control.web_listen=127.0.0.1:0".into(),
        format!("frontends.tcp.range={a}-{b}"),
        // The example keeps threshold clients to certificates; the test client uses the header.
        "transports.edge.threshold.header_identity=true".into(),
    ];
    let server = TestServer::from_file(&example, &sets)
        .await
        .expect("tunneld on the example config");

    // yamux (native tunnelc) -> ports (a tunnel of its own).
    let native = tagged_echo("via-yamux").await;
    let yamux_http = http_echo("http-via-yamux").await;
    let cfg = server
        .client_config_with(
            DEMO_TOKEN,
            &format!(
                "  web:\n    local: {native}\n  web-connect:\n    local: {native}\n    frontend: rendezvous\n  yweb:\n    type: http\n    local: {yamux_http}\n    subdomain: yweb\n"
            ),
            &["accept_server_mappings=true".into()],
        )
        .expect("client config");
    let mut client = TestClient::spawn(cfg);
    let tunnels = client.connected().await.expect("tunnelc connects");
    let ep = endpoint_of(&tunnels, "web").expect("endpoint");
    assert_eq!(visit_tagged(ep, 2048, 1).await.expect("visit"), "via-yamux");

    // yamux (native tunnelc) -> rendezvous (CONNECT <tunnel>:<port> with the example's
    // visitor credentials).
    let rdv = server.running.frontends["rendezvous"];
    let mut tls = server.tls_connect_to(rdv, b"http/1.1").await;
    let basic = data_encoding::BASE64.encode(b"visitor:visitor-password-change-me");
    tls.write_all(
        format!("CONNECT web-connect:443 HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write CONNECT");
    let answer = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut got = vec![0u8; answer.len()];
    tls.read_exact(&mut got).await.expect("CONNECT answer");
    assert_eq!(got, answer);
    assert_eq!(
        visit_tagged_over(tls, b"", b"", 2048, 5)
            .await
            .expect("visit"),
        "via-yamux"
    );

    // connect (tunnelc parking for a rendezvous id) -> rendezvous (a Basic visitor).
    tunneld_daemon::rendezvous_ids::add(
        &*server.running.store,
        Some("matrix-id"),
        30,
        Some("demo"),
    )
    .expect("add id");
    let hidden_echo = tagged_echo("via-connect").await;
    let yaml = format!(
        "server: {}\nserver_name: localhost\ntransport: connect\ntoken: {DEMO_TOKEN}\ntls: {{ ca: {} }}\nrendezvous:\n  matrix-id: {{ local: \"{hidden_echo}\", parked: 2 }}\n",
        server.running.transports["hidden"],
        server.ca_file().display()
    );
    let file = temp_dir("matrix-client").join("client.yaml");
    std::fs::write(&file, yaml).expect("client yaml");
    let mut hidden =
        TestClient::spawn(ClientConfig::load(Some(&file), &[]).expect("client config"));
    loop {
        match tokio::time::timeout(WAIT, hidden.events.recv()).await {
            Ok(Some(ClientEvent::Parked { .. })) => break,
            Ok(Some(_)) => {}
            other => panic!("tunnelc did not park: {other:?}"),
        }
    }
    let tls = server.tls_connect_to(rdv, b"http/1.1").await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\n\r\n",
        data_encoding::BASE64.encode(b"matrix-id:x")
    );
    // The hidden side receives the head without Authorization.
    let forwarded = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let tag = visit_tagged_over(tls, request.as_bytes(), forwarded.as_bytes(), 2048, 6)
        .await
        .expect("visit");
    assert_eq!(tag, "via-connect");
    hidden.shutdown().await.expect("stop");

    // yamux (native tunnelc) -> ports (a port the admin API maps to it, by service name).
    let p = a + 17;
    let body = format!(r#"[{{"client":"demo","listen_port":{p},"target":"web"}}]"#);
    let (code, resp) = server.admin_call("PUT", "/tunnels", Some(&body)).await;
    assert_eq!(code, 200, "{resp}");
    let mapped = std::net::SocketAddr::from(([127, 0, 0, 1], p));
    assert_eq!(
        visit_tagged(mapped, 2048, 2).await.expect("visit"),
        "via-yamux"
    );

    // yamux, threshold dialect (reference yamux client) -> ports (admin mapping).
    if let Some(go) = go_threshold_client_or_skip("matrix: threshold dialect") {
        let legacy = tagged_echo("via-threshold").await;
        let mut node = server
            .spawn_threshold_client(&go, &["-id", "legacy"], &[("web", legacy)], "legacy")
            .expect("spawn");
        node.line_starting("connected")
            .await
            .expect("threshold client connects");
        // The same list in threshold's shape: both mappings, the kept one unchanged.
        let body = format!(
            r#"[{{"ClientIdentifier":"demo","ListenPort":{p},"ListenAddress":"","BackEndService":"web"}},
                {{"ClientIdentifier":"legacy","ListenPort":{},"ListenAddress":"127.0.0.1","BackEndService":"web"}}]"#,
            p + 1
        );
        let (code, resp) = server.admin_call("PUT", "/tunnels", Some(&body)).await;
        assert_eq!(code, 200, "{resp}");
        let legacy_port = std::net::SocketAddr::from(([127, 0, 0, 1], p + 1));
        assert_eq!(
            visit_tagged(legacy_port, 2048, 3).await.expect("visit"),
            "via-threshold"
        );
        assert_eq!(
            visit_tagged(mapped, 2048, 4)
                .await
                .expect("the kept port still works"),
            "via-yamux"
        );
        let m = server.metrics().await;
        assert_eq!(
            m.get("tunneld_sessions_active", &[("transport", "edge")]),
            2.0
        );
        drop(node);
    }
    // h2-reverse (its own listener) -> https-subdomain (http and tls passthrough), ports and
    // rendezvous; and yamux -> https-subdomain (http).
    let h2_http = http_echo("http-via-h2").await;
    let h2_tcp = tagged_echo("via-h2").await;
    let pki = temp_dir("matrix-pki");
    let (local_ca, cert, key_pem) = server_pki(&pki, "sec", &["sec.localhost", "ssec.localhost"]);
    let h2_tls = tls_local(&cert, &key_pem, "via-h2-passthrough").await;
    let yaml = format!(
        "server: {}\nserver_name: localhost\ntransport: h2-reverse\ntoken: demo-2-token-change-me-012345678\ntls: {{ ca: {} }}\ntunnels:\n  site:\n    type: http\n    local: {h2_http}\n    subdomain: site\n  sec:\n    type: tls\n    local: {h2_tls}\n    subdomain: sec\n  raw:\n    local: {h2_tcp}\n  h2-connect:\n    local: {h2_tcp}\n    frontend: rendezvous\n",
        server.running.transports["h2"],
        server.ca_file().display()
    );
    let file = temp_dir("matrix-h2").join("client.yaml");
    std::fs::write(&file, yaml).expect("client yaml");
    let mut h2c = TestClient::spawn(ClientConfig::load(Some(&file), &[]).expect("client config"));
    let tunnels = h2c.connected().await.expect("h2-reverse tunnelc connects");
    let web = server.running.frontends["web"].port();
    let ca = server.ca_file().display().to_string();
    for (host, tag) in [("site", "http-via-h2"), ("yweb", "http-via-yamux")] {
        let resolve = format!("{host}.localhost:{web}:127.0.0.1");
        let url = format!("https://{host}.localhost:{web}/");
        let (status, out) = curl(&["--cacert", &ca, "--resolve", &resolve, &url])
            .await
            .expect("curl");
        assert!(status.success(), "{out}");
        assert!(out.starts_with(&format!("tag={tag}\n")), "{out}");
    }
    let resolve = format!("sec.localhost:{web}:127.0.0.1");
    let url = format!("https://sec.localhost:{web}/");
    let local_ca = local_ca.display().to_string();
    let (status, out) = curl(&["--cacert", &local_ca, "--resolve", &resolve, &url])
        .await
        .expect("curl");
    assert!(status.success(), "{out}");
    assert_eq!(out, "tls-local via-h2-passthrough\n");
    let raw = endpoint_of(&tunnels, "raw").expect("ports endpoint");
    assert_eq!(visit_tagged(raw, 4096, 8).await.expect("visit"), "via-h2");
    assert_eq!(
        connect_via_rendezvous(&server, rdv, "h2-connect", 9).await,
        "via-h2"
    );
    h2c.shutdown().await.expect("stop");

    // websocket (tunnelc, tunneld.1 extensions) -> its own port (visitor by Host),
    // https-subdomain (the same name over TLS), ports and rendezvous.
    let ws_http = http_echo("http-via-ws").await;
    let ws_tcp = tagged_echo("via-ws").await;
    let ws_port = server.running.transports["ws"].port();
    let yaml = format!(
        "server: http://localhost:{ws_port}\ntransport: websocket\ntoken: demo-2-token-change-me-012345678\ntunnels:\n  wsite:\n    type: http\n    local: {ws_http}\n    subdomain: wsite\n  wraw:\n    local: {ws_tcp}\n  ws-connect:\n    local: {ws_tcp}\n    frontend: rendezvous\n",
    );
    let file = temp_dir("matrix-ws").join("client.yaml");
    std::fs::write(&file, yaml).expect("client yaml");
    let mut wsc = TestClient::spawn(ClientConfig::load(Some(&file), &[]).expect("client config"));
    let tunnels = wsc.connected().await.expect("websocket tunnelc connects");
    for (url, resolve) in [
        (
            format!("http://wsite.localhost:{ws_port}/"),
            format!("wsite.localhost:{ws_port}:127.0.0.1"),
        ),
        (
            format!("https://wsite.localhost:{web}/"),
            format!("wsite.localhost:{web}:127.0.0.1"),
        ),
    ] {
        let (status, out) = curl(&["--cacert", &ca, "--resolve", &resolve, &url])
            .await
            .expect("curl");
        assert!(status.success(), "{out}");
        assert!(out.starts_with("tag=http-via-ws\n"), "{url}: {out}");
    }
    let raw = endpoint_of(&tunnels, "wraw").expect("ports endpoint");
    assert_eq!(visit_tagged(raw, 4096, 10).await.expect("visit"), "via-ws");
    assert_eq!(
        connect_via_rendezvous(&server, rdv, "ws-connect", 11).await,
        "via-ws"
    );
    wsc.shutdown().await.expect("stop");

    // A visitor is counted when its conversation has ended.
    let m = server
        .metrics_when(
            "tunneld_ws_requests_total",
            &[("transport", "ws"), ("route", "visitor"), ("code", "200")],
            1.0,
        )
        .await;
    assert!(
        m.get(
            "tunneld_ws_requests_total",
            &[("transport", "ws"), ("route", "visitor"), ("code", "200")]
        ) >= 1.0
    );
    assert!(m.get("tunneld_streams_opened_total", &[("frontend", "tcp")]) >= 2.0);
    // HTTP requests and websocket-port visitors count as streams and bytes too (the series
    // Prometheus rates and quantiles come from).
    for fe in ["web", "ws"] {
        assert!(
            m.get("tunneld_streams_opened_total", &[("frontend", fe)]) >= 1.0,
            "{fe}"
        );
        assert!(
            m.get("tunneld_stream_open_seconds_count", &[("frontend", fe)]) >= 1.0,
            "{fe}"
        );
        for dir in ["in", "out"] {
            assert!(
                m.get(
                    "tunneld_bytes_total",
                    &[("frontend", fe), ("direction", dir)]
                ) > 0.0,
                "{fe} {dir}"
            );
        }
    }
    assert_eq!(
        m.get(
            "tunneld_http_requests_total",
            &[("frontend", "web"), ("outcome", "forwarded")]
        ),
        3.0
    );
    client.shutdown().await.expect("stop");

    // ssh (stock OpenSSH, the example's demo key) -> ports, https-subdomain (http and tls
    // passthrough) and the websocket port by Host (the same names).
    if ssh::peer_or_skip("ssh", "matrix ssh") {
        let dir = temp_dir("matrix-ssh");
        let key = dir.join("demo_ed25519");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ssh/demo_ed25519"),
            &key,
        )
        .expect("copy the demo key");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
        }
        let ssh_http = http_echo("http-via-ssh").await;
        let ssh_tcp = tagged_echo("via-ssh").await;
        let ssh_tls = tls_local(&cert, &key_pem, "via-ssh-passthrough").await;
        let mut args = ssh::base_args(server.running.transports["ssh"].port(), &key);
        for spec in [
            format!("0:{ssh_tcp}"),
            format!("sweb:80:{ssh_http}"),
            format!("ssec:443:{ssh_tls}"),
        ] {
            args.extend(["-R".to_string(), spec]);
        }
        args.extend(["-N", "-o", "ExitOnForwardFailure=yes", "demo@127.0.0.1"].map(String::from));
        let mut sshc = ssh::Ssh::spawn("ssh", &args, &[]).expect("ssh");
        let port = sshc.allocated_port().await.expect("a port for -R 0");
        let raw = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(visit_tagged(raw, 4096, 12).await.expect("visit"), "via-ssh");
        for (url, resolve, ca) in [
            (
                format!("https://sweb.localhost:{web}/"),
                format!("sweb.localhost:{web}:127.0.0.1"),
                ca.clone(),
            ),
            (
                format!("http://sweb.localhost:{ws_port}/"),
                format!("sweb.localhost:{ws_port}:127.0.0.1"),
                ca.clone(),
            ),
            (
                format!("https://ssec.localhost:{web}/"),
                format!("ssec.localhost:{web}:127.0.0.1"),
                local_ca.clone(),
            ),
        ] {
            let out = ssh_get(&url, &resolve, &ca).await;
            let want = if url.contains("ssec") {
                "tls-local via-ssh-passthrough\n"
            } else {
                "tag=http-via-ssh\n"
            };
            assert!(out.starts_with(want), "{url}: {out}");
        }
        let m = server.metrics().await;
        assert_eq!(
            m.get("tunneld_sessions_active", &[("transport", "ssh")]),
            1.0
        );
        assert_eq!(
            m.get("tunneld_ssh_forwards_total", &[("outcome", "ok")]),
            3.0
        );
        drop(sshc);
    }

    // The control plane: a tunnel provisioned through the API (http + tcp leases), served by
    // a yamux tunnelc through https-subdomain and ports, and the web port's 302.
    let token = tunneld_daemon::state_cli::new_token();
    server
        .running
        .store
        .add_token(&tunneld_state::TokenRecord {
            name: "matrix-user".into(),
            digest: tunneld_core::auth::hex(&tunneld_core::auth::sha256(token.as_bytes())),
            max_ports: Some(1),
            max_names: Some(1),
            expires_at: None,
            single_use: false,
            used_at: None,
            transports: None,
            revoked_at: None,
            created_at: 0,
        })
        .expect("token");
    let control = server.running.control.expect("control plane");
    let api = tunneld_client::setup::api_client::ApiClient::new(
        &format!("https://localhost:{}", control.api.port()),
        &tunneld_core::tls::ClientTrust::CaFile(server.ca_file()),
        None,
        Some(token.clone()),
    )
    .expect("api client");
    let created: serde_json::Value = api
        .json(
            http::Method::POST,
            "/v1/tunnels",
            Some(&serde_json::json!({"name": "mx", "protocols": ["http", "tcp"]})),
        )
        .await
        .expect("provisioned");
    let cp_http = http_echo("http-via-control").await;
    let cp_tcp = tagged_echo("via-control").await;
    let mut cpc = TestClient::spawn(
        server
            .client_config(
                &token,
                &format!("  mx-http:\n    type: http\n    local: {cp_http}\n  mx-tcp:\n    local: {cp_tcp}\n"),
            )
            .expect("client config"),
    );
    let tunnels = cpc.connected().await.expect("provisioned tunnel connects");
    assert!(tunnels.iter().all(|t| t.error.is_none()), "{tunnels:?}");
    let (status, out) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &format!("mx.localhost:{web}:127.0.0.1"),
        &format!("https://mx.localhost:{web}/"),
    ])
    .await
    .expect("curl");
    assert!(
        status.success() && out.starts_with("tag=http-via-control\n"),
        "{out}"
    );
    let tcp_url = created["endpoints"][1]["url"].as_str().expect("tcp url");
    let raw = tcp_url.trim_start_matches("tcp://").parse().expect("addr");
    assert_eq!(
        visit_tagged(raw, 4096, 12).await.expect("visit"),
        "via-control"
    );
    let (_, head) = curl(&[
        "-si",
        "-H",
        "Host: mx.localhost",
        &format!("http://{}/x", control.web.expect("web port")),
    ])
    .await
    .expect("curl");
    assert!(
        head.starts_with("HTTP/1.1 302")
            && head.contains(&format!("location: https://mx.localhost:{web}/x")),
        "{head}"
    );
    cpc.shutdown().await.expect("stop");
}

/// curl `url` until it answers 200 (a named forward is claimed a moment after ssh
/// connects); the body.
async fn ssh_get(url: &str, resolve: &str, ca: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, out) = curl(&["--cacert", ca, "--resolve", resolve, "-f", url])
            .await
            .expect("curl");
        if status.success() {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
