//! Authentication (tokens, client certificates) and hostile input before and after it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_client::client::ClientEvent;
use tunneld_core::proto::{encode_frame, Hello, ServerHello, MAGIC, VERSION};
use tunneld_integration_tests::{
    client_pki, metrics, temp_dir, TestClient, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT,
};

async fn next_disconnect(client: &mut TestClient) -> String {
    loop {
        match tokio::time::timeout(WAIT, client.events.recv())
            .await
            .expect("event in time")
        {
            Some(ClientEvent::Disconnected { reason, .. }) => return reason,
            Some(_) => continue,
            None => panic!("client ended"),
        }
    }
}

/// Waits until the server closes `s` (EOF or reset); that is the synchronization point.
async fn closed_by_server<S: AsyncReadExt + Unpin>(s: &mut S) {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("server closes in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_for_good_and_counted() {
    let server = TestServer::start().await.expect("server");
    let cfg = server
        .client_config(
            "not-the-right-token-000000",
            "  svc:\n    local: 127.0.0.1:9\n",
        )
        .expect("config");
    let client = TestClient::spawn(cfg);
    let err = tokio::time::timeout(WAIT, client.task)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("refused");
    assert!(err.to_string().contains("invalid token"), "{err}");
    assert_eq!(
        server
            .metrics()
            .await
            .get("tunneld_handshakes_total", &[("outcome", "bad_token")]),
        1.0
    );
    // A hashed token works.
    let cfg = server
        .client_config(BOB_TOKEN, "  svc:\n    local: 127.0.0.1:9\n")
        .expect("config");
    let mut bob = TestClient::spawn(cfg);
    bob.endpoint("svc")
        .await
        .expect("bob connects with a sha256-stored token");
    bob.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_clients_and_foreign_ones_are_refused() {
    let dir = temp_dir("mtls");
    let (ca, leaves) = client_pki(&dir, &["carol"]);
    let (cert, key) = leaves[0].clone();
    let server = TestServer::start_full("", &[format!("auth.client_ca={}", ca.display())])
        .await
        .expect("server");
    let tunnels = "  svc:\n    local: 127.0.0.1:9\n";
    let mut cfg = server.client_config(ALICE_TOKEN, tunnels).expect("config");
    cfg.token = None;
    cfg.tls.cert = Some(cert);
    cfg.tls.key = Some(key);
    let mut carol = TestClient::spawn(cfg.clone());
    carol
        .endpoint("svc")
        .await
        .expect("certificate client connects");
    let sessions = server.running.hub.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].info.client_id, "carol");
    assert_eq!(sessions[0].info.auth_method, "certificate");
    carol.shutdown().await.expect("stop");

    let other = temp_dir("mtls-other");
    let (_, bad) = client_pki(&other, &["mallory"]);
    let (bad_cert, bad_key) = bad[0].clone();
    cfg.tls.cert = Some(bad_cert);
    cfg.tls.key = Some(bad_key);
    let mut mallory = TestClient::spawn(cfg);
    let reason = next_disconnect(&mut mallory).await;
    assert!(
        reason.to_lowercase().contains("certificate") || reason.contains("alert"),
        "{reason}"
    );
    mallory.shutdown().await.expect("stop");
    // The client sees the alert before the server has counted the refusal.
    let refused = |m: &metrics::Samples| {
        m.get(
            "tunneld_handshakes_total",
            &[("outcome", "bad_certificate")],
        ) + m.get("tunneld_handshakes_total", &[("outcome", "tls_error")])
    };
    let m = server.metrics_until(|m| refused(m) >= 1.0).await;
    assert!(refused(&m) >= 1.0, "refusal not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_before_auth_are_rejected() {
    let server = TestServer::start().await.expect("server");
    // Not TLS at all.
    let mut plain = TcpStream::connect(server.transport())
        .await
        .expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    closed_by_server(&mut plain).await;
    // TLS, then not our protocol.
    let mut s = server.tls_connect().await;
    s.write_all(b"HELLO??!").await.expect("write");
    closed_by_server(&mut s).await;
    // An oversized hello frame.
    let mut s = server.tls_connect().await;
    s.write_all(MAGIC).await.expect("write");
    s.write_all(&(10u32 << 20).to_be_bytes())
        .await
        .expect("write");
    closed_by_server(&mut s).await;
    // A malformed hello frame.
    let mut s = server.tls_connect().await;
    s.write_all(MAGIC).await.expect("write");
    s.write_all(&[0, 0, 0, 5]).await.expect("write");
    s.write_all(b"{nope").await.expect("write");
    closed_by_server(&mut s).await;

    // Each refusal is counted after the connection is dropped.
    let m = server
        .metrics_until(|m| {
            let outcome = |o| m.get("tunneld_handshakes_total", &[("outcome", o)]);
            [
                "tls_error",
                "bad_magic",
                "frame_too_large",
                "malformed_frame",
            ]
            .iter()
            .all(|o| outcome(o) >= 1.0)
                && m.get(
                    "tunneld_protocol_errors_total",
                    &[("reason", "frame_too_large")],
                ) >= 1.0
        })
        .await;
    let outcome = |o| m.get("tunneld_handshakes_total", &[("outcome", o)]);
    assert_eq!(outcome("tls_error"), 1.0);
    assert_eq!(outcome("bad_magic"), 1.0);
    assert_eq!(outcome("frame_too_large"), 1.0);
    assert_eq!(outcome("malformed_frame"), 1.0);
    assert_eq!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("reason", "frame_too_large")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_after_auth_end_only_that_session() {
    let server = TestServer::start().await.expect("server");
    for (i, junk) in [
        // yamux version 0xff: malformed.
        vec![0xffu8; 12],
        // A data frame (SYN, stream 1) announcing 16 MiB: over the frame limit.
        [
            vec![0, 0, 0, 1, 0, 0, 0, 1],
            (16u32 << 20).to_be_bytes().to_vec(),
        ]
        .concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = server.tls_connect().await;
        let hello = Hello {
            version: VERSION,
            token: Some(ALICE_TOKEN.into()),
            tunnels: vec![],
            accept_server_mappings: false,
            agent: "raw test".into(),
            max_streams: None,
            instance: None,
        };
        let mut pre = MAGIC.to_vec();
        pre.extend(encode_frame(&hello).expect("encode"));
        s.write_all(&pre).await.expect("write");
        let answer: ServerHello = tunneld_core::proto::read_frame(&mut s)
            .await
            .expect("answer");
        assert!(matches!(answer, ServerHello::Welcome { .. }), "{answer:?}");
        s.write_all(&junk).await.expect("write junk");
        closed_by_server(&mut s).await;
        // The socket closes as the session's connection is dropped, a moment before the
        // session counts why it ended.
        let want = (i + 1) as f64;
        let bad = [("reason", "bad_yamux_frame")];
        let count = server
            .metrics_when("tunneld_protocol_errors_total", &bad, want)
            .await
            .get("tunneld_protocol_errors_total", &bad);
        assert_eq!(count, want);
    }
    // tunneld is fine: a proper client still connects.
    let cfg = server
        .client_config(ALICE_TOKEN, "  svc:\n    local: 127.0.0.1:9\n")
        .expect("config");
    let mut c = TestClient::spawn(cfg);
    c.endpoint("svc").await.expect("connects");
    c.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_hit_the_deadline_and_the_per_address_cap() {
    let server = TestServer::start_full("", &["limits.max_pending_per_address=2".into()])
        .await
        .expect("server");
    let mut a = TcpStream::connect(server.transport()).await.expect("a");
    let _b = TcpStream::connect(server.transport()).await.expect("b");
    // The third pending handshake from this address is closed at once.
    let mut c = TcpStream::connect(server.transport()).await.expect("c");
    closed_by_server(&mut c).await;
    // The silent ones are closed by the 2 s handshake deadline.
    closed_by_server(&mut a).await;
    // The socket closes as the timed-out handshake is dropped, a moment before the count.
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let m = server.metrics().await;
        if m.get("tunneld_handshakes_total", &[("outcome", "timeout")]) >= 1.0
            || tokio::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        m.get(
            "tunneld_handshakes_total",
            &[("outcome", "too_many_pending_from_address")]
        ),
        1.0
    );
    assert!(m.get("tunneld_handshakes_total", &[("outcome", "timeout")]) >= 1.0);
}
