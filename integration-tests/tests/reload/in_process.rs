//! Reloads of a tunneld run inside the test: transports and frontends come and go.

use tokio::net::TcpStream;
use tunneld_integration_tests::{services, ALICE_TOKEN, BOB_TOKEN, WAIT};

use crate::common::*;

/// In-process: without a file a reload changes nothing; with one, a transport and a frontend
/// are added, a limit is reported as needing a restart (and again at the next reload), and a
/// removed transport's sessions end while another transport's visitor stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_and_frontends_come_and_go_in_process() {
    use tunneld_daemon::reload::{ReloadError, Source};
    use tunneld_integration_tests::{server_yaml, TestClient, TestServer};
    let s = TestServer::start().await.expect("server");
    let err = s.running.reloader.reload().await.expect_err("no file");
    assert!(matches!(err, ReloadError::NoFile), "{err}");
    let (code, body) = s.admin_call("POST", "/reload", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no configuration file"), "{body}");

    let file = s.dir.join("server.yaml");
    s.running.reloader.set_source(Some(Source {
        file: file.clone(),
        sets: Vec::new(),
    }));
    let base = server_yaml(&s.dir.join("state"), s.range, "");
    let side = "  side:\n    type: yamux\n    listen: 127.0.0.1:0\nfrontends:\n";
    let v2 = base
        .replacen("frontends:\n", side, 1)
        .replace("log: { level: info }", "log: { level: debug }")
        + "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    connect_access: { auth: none }\n";
    std::fs::write(&file, &v2).expect("write v2");
    let sum = s.running.reloader.reload().await.expect("reload v2");
    assert_eq!(sum.added, ["transports.side", "frontends.rdv"], "{sum:?}");
    assert_eq!(sum.needs_restart, ["log.level"], "{sum:?}");
    assert!(s.running.hub.frontend("rdv").is_some());
    let side_addr = sum.listening["transports.side"];
    assert!(sum.listening.contains_key("frontends.rdv"), "{sum:?}");

    // alice on edge with a kept visitor; bob on side.
    let local = services::echo().await;
    let tunnel = |port: u16| format!("  t:\n    local: {local}\n    remote_port: {port}\n");
    let mut alice = TestClient::spawn(
        s.client_config(ALICE_TOKEN, &tunnel(s.range.0 + 1))
            .expect("cfg"),
    );
    let a = alice.endpoint("t").await.expect("alice connects");
    let mut kept = TcpStream::connect(a).await.expect("kept visitor");
    echo_on(&mut kept, b"before").await.expect("echo before");
    let bob_yaml = s
        .client_yaml(BOB_TOKEN, &tunnel(s.range.0 + 2))
        .replace(&s.transport().to_string(), &side_addr.to_string());
    let bob_file = s.dir.join("bob.yaml");
    std::fs::write(&bob_file, bob_yaml).expect("bob file");
    let bob_cfg =
        tunneld_client::config::client::ClientConfig::load(Some(&bob_file), &[]).expect("bob cfg");
    let mut bob = TestClient::spawn(bob_cfg);
    bob.endpoint("t").await.expect("bob connects through side");
    assert!(s
        .running
        .hub
        .sessions()
        .iter()
        .any(|x| x.info.transport == "side"));

    // Remove `side`: bob's session ends, alice's visitor stays; the log level is still pending.
    std::fs::write(&file, v2.replacen(side, "frontends:\n", 1)).expect("write v3");
    let sum = s.running.reloader.reload().await.expect("reload v3");
    assert_eq!(sum.removed, ["transports.side"], "{sum:?}");
    assert_eq!(sum.sessions_cut, 1, "{sum:?}");
    assert_eq!(sum.needs_restart, ["log.level"], "{sum:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while s
        .running
        .hub
        .sessions()
        .iter()
        .any(|x| x.info.client_id == "bob")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's session stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        TcpStream::connect(side_addr).await.is_err(),
        "side still listens"
    );
    echo_on(&mut kept, b"after")
        .await
        .expect("alice's visitor stays");
    bob.shutdown().await.ok();
    alice.shutdown().await.expect("alice stops");
}
