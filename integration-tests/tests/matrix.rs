//! The matrix: one tunneld running `config.example.yaml` (every transport, dialect and
//! frontend that exists) carries a tunnel over each transport through each frontend it serves.
//! Only listeners, state and the port range are moved to private places for the test.

use std::path::Path;
use tunneld_integration_tests::process::go_threshold_client_or_skip;
use tunneld_integration_tests::services::{tagged_echo, visit_tagged};
use tunneld_integration_tests::{endpoint_of, port_block, temp_dir, TestClient, TestServer};

const DEMO_TOKEN: &str = "demo-token-change-me-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_reaches_every_frontend_in_one_tunneld_from_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.yaml");
    let state = temp_dir("matrix").join("state");
    let (a, b) = port_block();
    let sets = vec![
        format!("state_dir={}", state.display()),
        "admin.listen=127.0.0.1:0".into(),
        "transports.edge.listen=127.0.0.1:0".into(),
        format!("frontends.tcp.range={a}-{b}"),
        // The example keeps threshold clients to certificates; the test client uses the header.
        "transports.edge.threshold.header_identity=true".into(),
    ];
    let server = TestServer::from_file(&example, &sets)
        .await
        .expect("tunneld on the example config");

    // yamux (native tunnelc) -> ports (a tunnel of its own).
    let native = tagged_echo("via-yamux").await;
    let cfg = server
        .client_config_with(
            DEMO_TOKEN,
            &format!("  web:\n    local: {native}\n"),
            &["accept_server_mappings=true".into()],
        )
        .expect("client config");
    let mut client = TestClient::spawn(cfg);
    let tunnels = client.connected().await.expect("tunnelc connects");
    let ep = endpoint_of(&tunnels, "web").expect("endpoint");
    assert_eq!(visit_tagged(ep, 2048, 1).await.expect("visit"), "via-yamux");

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
    let m = server.metrics().await;
    assert!(m.get("tunneld_streams_opened_total", &[("frontend", "tcp")]) >= 2.0);
    client.shutdown().await.expect("stop");
}
