//! A reload that changes `limits:` applies live: a lowered stream cap binds the open session
//! at once (a tunnel at the cap refuses its next visitor while the same client's neighbour
//! tunnel keeps answering), the visitors already open keep going, no session is cut, an
//! invalid value changes nothing and names its key, and raising the cap again admits more.
//! A component that cannot start is reported once, with its key and the OS error.

use tokio::net::TcpStream;
use tunneld_integration_tests::services::echo_message as echo_on;
use tunneld_integration_tests::{endpoint_of, services, TestClient, TestServer, ALICE_TOKEN};

const LIMITS: &str = "limits:\n  handshake_timeout: 2s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_and_raised_limits_apply_to_the_open_session() {
    let (s, file, v1) = TestServer::reloadable("").await.expect("server");
    assert!(
        v1.contains(LIMITS),
        "the test server's file has changed shape"
    );
    let local = services::echo().await;
    let tunnels =
        format!("  a:\n    local: {local}\n    frontend: tcp\n  b:\n    local: {local}\n    frontend: tcp\n");
    let cfg = s
        .client_config_with(ALICE_TOKEN, &tunnels, &[])
        .expect("cfg");
    let mut alice = TestClient::spawn(cfg);
    let up = alice.connected().await.expect("alice connects");
    let (a, b) = (
        endpoint_of(&up, "a").expect("a"),
        endpoint_of(&up, "b").expect("b"),
    );
    let mut kept = Vec::new();
    for i in 0..2u8 {
        let mut v = TcpStream::connect(a).await.expect("visitor of a");
        echo_on(&mut v, &[b'k', i]).await.expect("kept visitor");
        kept.push(v);
    }
    let session = s.running.hub.sessions()[0].info.id;

    // An invalid value: refused with its key path, nothing changes.
    let bad = v1.replace(
        LIMITS,
        "limits:\n  handshake_timeout: 2s\n  max_pending_handshakes: 0\n",
    );
    std::fs::write(&file, &bad).expect("write bad");
    let err = s.running.reloader.reload().await.expect_err("invalid");
    assert!(
        err.to_string().contains("limits.max_pending_handshakes"),
        "{err}"
    );

    // Two streams per tunnel: `a` has two open, so its next visitor is refused.
    let capped = v1.replace(
        LIMITS,
        "limits:\n  handshake_timeout: 2s\n  max_streams_per_tunnel: 2\n  max_auth_failures: 3\n",
    );
    std::fs::write(&file, &capped).expect("write v2");
    let sum = s.running.reloader.reload().await.expect("reload v2");
    assert_eq!(
        sum.changed,
        ["limits.max_streams_per_tunnel", "limits.max_auth_failures"],
        "{sum:?}"
    );
    assert!(sum.needs_restart.is_empty(), "{sum:?}");
    assert_eq!(sum.sessions_cut, 0, "{sum:?}");
    let mut third = TcpStream::connect(a).await.expect("tcp accepts");
    assert!(
        echo_on(&mut third, b"over").await.is_err(),
        "a third stream through `a` passes the lowered cap"
    );
    let m = s
        .metrics_when(
            "tunneld_streams_refused_total",
            &[("transport", "edge"), ("reason", "tunnel_cap")],
            1.0,
        )
        .await;
    assert_eq!(
        m.get(
            "tunneld_streams_refused_total",
            &[("transport", "edge"), ("reason", "tunnel_cap")]
        ),
        1.0
    );
    // The neighbour tunnel of the same session has its own budget.
    let mut nb = TcpStream::connect(b).await.expect("visitor of b");
    echo_on(&mut nb, b"neighbour")
        .await
        .expect("b answers while a is at its cap");
    for v in &mut kept {
        echo_on(v, b"still")
            .await
            .expect("open visitors keep going");
    }

    // Back to the defaults: `a` takes a third visitor again.
    std::fs::write(&file, &v1).expect("write v3");
    let sum = s.running.reloader.reload().await.expect("reload v3");
    assert_eq!(
        sum.changed,
        ["limits.max_streams_per_tunnel", "limits.max_auth_failures"],
        "{sum:?}"
    );
    let mut again = TcpStream::connect(a).await.expect("visitor of a");
    echo_on(&mut again, b"again")
        .await
        .expect("the raised cap admits a third");
    for v in &mut kept {
        echo_on(v, b"end")
            .await
            .expect("open visitors kept to the end");
    }
    let sessions = s.running.hub.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].info.id, session, "the session was never cut");
    alice.shutdown().await.expect("alice stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_cannot_listen_is_reported_once() {
    let (s, file, v1) = TestServer::reloadable("").await.expect("server");
    let taken = s.admin();
    let edge = "transports:\n  edge:\n    type: yamux\n    listen: 127.0.0.1:0\n";
    assert!(
        v1.contains(edge),
        "the test server's file has changed shape"
    );
    let busy = format!("{edge}  busy:\n    type: yamux\n    listen: {taken}\n");
    std::fs::write(&file, v1.replace(edge, &busy)).expect("write");
    let sum = s.running.reloader.reload().await.expect("valid");
    assert_eq!(sum.failed.len(), 1, "{sum:?}");
    let line = &sum.failed[0];
    assert!(line.starts_with("transports.busy"), "{line}");
    assert_eq!(line.matches("transports.busy").count(), 1, "{line}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");
    assert!(line.contains(&taken.to_string()), "{line}");
}
