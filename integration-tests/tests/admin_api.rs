//! The admin API through curl: PUT /tunnels (add, keep, remove, errors), /metrics, health.

use tunneld_integration_tests::metrics;
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::{services, TestClient, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT};

async fn put(server: &TestServer, body: &str, ct: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{}/tunnels", server.admin());
    let (st, out) = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {ct}"),
        "--data-binary",
        body,
        "-w",
        "\n%{http_code}",
        &url,
    ])
    .await
    .expect("curl");
    assert!(st.success(), "curl failed");
    let (json, code) = out.rsplit_once('\n').expect("status line");
    (
        code.parse().expect("code"),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", server.admin());
    let (_, out) = curl(&["-w", "\n%{http_code}", &url]).await.expect("curl");
    let (body, code) = out.rsplit_once('\n').expect("status");
    (code.parse().expect("code"), body.to_string())
}

#[track_caller]
fn echo_through(port: u16) -> impl std::future::Future<Output = Vec<u8>> {
    let caller = std::panic::Location::caller();
    async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect {port} from {caller}: {e}"));
        s.write_all(b"hi").await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("in time")
            .expect("read");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_tunnels_adds_keeps_removes_and_explains_errors() {
    let server = TestServer::start().await.expect("server");
    let echo = services::echo().await;
    let cfg = server
        .client_config_with(
            ALICE_TOKEN,
            "  own:\n    local: 127.0.0.1:9\n",
            &["accept_server_mappings=true".into()],
        )
        .expect("config");
    let mut alice = TestClient::spawn(cfg);
    alice.connected().await.expect("alice up");
    let bob_cfg = server
        .client_config(BOB_TOKEN, "  b:\n    local: 127.0.0.1:9\n")
        .expect("config");
    let mut bob = TestClient::spawn(bob_cfg);
    bob.connected().await.expect("bob up");
    let (p1, p2) = (server.range.0 + 10, server.range.0 + 11);
    let m1 = format!(r#"{{"client":"alice","listen_port":{p1},"target":"{echo}"}}"#);
    let m2 = format!(
        r#"{{"client":"alice","listen_port":{p2},"target":"{echo}","proxy_protocol":null}}"#
    );

    let (code, body) = put(&server, &format!("[{m1}]"), "application/json").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["mappings"][0]["endpoint"],
        format!("tcp://127.0.0.1:{p1}")
    );
    assert_eq!(echo_through(p1).await, b"hi");

    // Keep m1 (same listener), add m2.
    let (code, _) = put(&server, &format!("[{m1},{m2}]"), "application/json").await;
    assert_eq!(code, 200);
    assert_eq!(echo_through(p1).await, b"hi");
    assert_eq!(echo_through(p2).await, b"hi");

    // Errors change nothing.
    let cases = [
        (
            r#"[{"client":"alice"}]"#.to_string(),
            "application/json",
            422,
            "missing field",
        ),
        (format!("[{m1}]"), "text/plain", 415, "application/json"),
        (
            format!(r#"[{{"client":"nobody","listen_port":{p1},"target":"{echo}"}}]"#),
            "application/json",
            404,
            "not connected",
        ),
        (
            format!(r#"[{{"client":"bob","listen_port":{p1},"target":"{echo}"}}]"#),
            "application/json",
            422,
            "does not accept",
        ),
        (
            format!(r#"[{{"client":"alice","listen_port":{p1},"target":"not an address"}}]"#),
            "application/json",
            400,
            "neither a host:port",
        ),
        (format!("[{m1},{m1}]"), "application/json", 409, "twice"),
        (
            r#"[{"client":"alice","listen_port":80,"target":"127.0.0.1:1"}]"#.to_string(),
            "application/json",
            400,
            "outside the range",
        ),
        (
            format!(r#"[{{"client":"alice","listen_port":{p1},"target":"{echo}","bogus":1}}]"#),
            "application/json",
            422,
            "unknown field",
        ),
    ];
    for (body, ct, want, words) in cases {
        let (code, resp) = put(&server, &body, ct).await;
        assert_eq!(code, want, "{body} -> {resp}");
        assert!(
            resp["error"].as_str().unwrap_or("").contains(words),
            "{body} -> {resp}"
        );
    }
    // A port held by bob's own tunnel is a conflict.
    let bob_port = server
        .running
        .hub
        .routes()
        .iter()
        .find(|r| r.owner == "bob")
        .map(|r| r.endpoint.clone())
        .expect("bob route");
    let bob_port: u16 = bob_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (code, resp) = put(
        &server,
        &format!(r#"[{{"client":"alice","listen_port":{bob_port},"target":"{echo}"}}]"#),
        "application/json",
    )
    .await;
    assert_eq!(code, 409, "{resp}");
    assert_eq!(
        echo_through(p1).await,
        b"hi",
        "failed updates keep the old mappings"
    );
    assert_eq!(echo_through(p2).await, b"hi");

    // Remove m1, keep m2.
    let (code, _) = put(&server, &format!("[{m2}]"), "application/json").await;
    assert_eq!(code, 200);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", p1))
            .await
            .is_err(),
        "m1 closed"
    );
    assert_eq!(echo_through(p2).await, b"hi");
    let (code, listing) = get(&server, "/tunnels").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&listing).expect("json");
    assert_eq!(v["mappings"].as_array().map(Vec::len), Some(1));
    let (code, clients) = get(&server, "/clients").await;
    assert_eq!(code, 200);
    assert!(
        clients.contains("\"client_id\":\"alice\"") && clients.contains("\"client_id\":\"bob\""),
        "{clients}"
    );

    alice.shutdown().await.expect("stop");
    bob.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic_and_health_answers() {
    let server = TestServer::start_full("", &["admin.token=admin-token-0123456789abcd".into()])
        .await
        .expect("server");
    let url = format!("http://{}/metrics", server.admin());
    let (_, out) = curl(&["-w", "\n%{http_code}", &url]).await.expect("curl");
    assert!(
        out.ends_with("\n401"),
        "metrics need the admin token: {out}"
    );
    let scrape = || async {
        let (st, text) = curl(&[
            "-H",
            "Authorization: Bearer admin-token-0123456789abcd",
            &url,
        ])
        .await
        .expect("curl");
        assert!(st.success());
        metrics::parse(&text).expect("valid Prometheus text")
    };
    let before = scrape().await;
    assert_eq!(before.get("tunneld_sessions_active", &[]), 0.0);
    let cfg = server
        .client_config(
            ALICE_TOKEN,
            &format!("  svc:\n    local: {}\n", services::echo().await),
        )
        .expect("config");
    let mut c = TestClient::spawn(cfg);
    let ep = c.endpoint("svc").await.expect("up");
    assert_eq!(echo_through(ep.port()).await, b"hi");
    let after = scrape().await;
    assert_eq!(
        after.get("tunneld_sessions_active", &[("transport", "edge")]),
        1.0
    );
    assert_eq!(
        after.get("tunneld_handshakes_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        after.get("tunneld_ports_allocated", &[("frontend", "tcp")]),
        1.0
    );
    assert!(after.get("tunneld_bytes_total", &[("direction", "in")]) >= 2.0);
    assert!(after.get("tunneld_streams_opened_total", &[]) >= 1.0);
    assert!(
        after.get(
            "tunneld_admin_requests_total",
            &[("route", "/metrics"), ("code", "401")]
        ) >= 1.0
    );
    assert_eq!(get(&server, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(&server, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(
        get(&server, "/nope").await.0,
        401,
        "unknown routes need the token too"
    );
    c.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_survive_a_restart() {
    let server = TestServer::start().await.expect("server");
    let echo = services::echo().await;
    let client = |s: &TestServer| {
        s.client_config_with(
            ALICE_TOKEN,
            "  own:\n    local: 127.0.0.1:9\n",
            &["accept_server_mappings=true".into()],
        )
        .expect("config")
    };
    let mut alice = TestClient::spawn(client(&server));
    alice.connected().await.expect("alice up");
    let p = server.range.0 + 15;
    let m = format!(r#"[{{"client":"alice","listen_port":{p},"target":"{echo}"}}]"#);
    let (code, body) = put(&server, &m, "application/json").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(echo_through(p).await, b"hi");
    alice.stop.cancel();

    // Stop tunneld and start it again on the same config and state: the mapping is back
    // (its port listens) before alice reconnects, and serves once she does.
    let TestServer {
        running,
        dir,
        range,
    } = server;
    running.stop().await;
    drop(running);
    let cfg =
        tunneld_daemon::config::server::ServerConfig::load(Some(&dir.join("server.yaml")), &[])
            .expect("config");
    let running = tunneld_daemon::server::start(cfg).await.expect("restart");
    let server = TestServer {
        running,
        dir,
        range,
    };
    let (code, listed) = get(&server, "/tunnels").await;
    assert_eq!(code, 200);
    assert!(listed.contains(&format!("\"listen_port\":{p}")), "{listed}");
    let mut alice = TestClient::spawn(client(&server));
    alice.connected().await.expect("alice back");
    assert_eq!(echo_through(p).await, b"hi");
    alice.stop.cancel();
}
