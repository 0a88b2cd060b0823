//! What one visitor connection carries: 100 HTTP/2 requests to two names under a wildcard
//! certificate, WebSocket upgrades over both transports, and TLS passed through by SNI to the
//! local service.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_carries_100_requests_to_two_names_with_a_wildcard_certificate(
) -> Result<()> {
    let dir = temp_dir("wildcard");
    let (ca, cert, key) = server_pki(&dir, "wildcard", &["*.tunnel.test", "tunnel.test"]);
    let frontend = format!(
        "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: tunnel.test\n    transport: h2\n    cert: {}\n    key: {}\n",
        cert.display(),
        key.display()
    );
    let s = TestServer::start_full(
        &frontend,
        &[
            "transports.h2.type=h2-reverse".into(),
            "transports.h2.listen=127.0.0.1:0".into(),
        ],
    )
    .await?;
    let one = http_echo("one").await;
    let two = http_echo("two").await;
    let mut alice =
        TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &http_tunnel("one", one, Some("one")))?);
    alice.connected().await?;
    let mut bob =
        TestClient::spawn(s.client_config(BOB_TOKEN, &http_tunnel("two", two, Some("two")))?);
    bob.connected().await?;

    let tls = tls_to(&s, "one.tunnel.test", b"h2", Some(&ca)).await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(conn);
    let port = s.web().port();
    let mut waits = Vec::new();
    let mut send = send.ready().await?;
    for i in 0..100 {
        let name = if i % 2 == 0 { "one" } else { "two" };
        let req = http::Request::get(format!("https://{name}.tunnel.test:{port}/r{i}"))
            .body(())
            .context("request")?;
        let (resp, _) = send.send_request(req, true)?;
        waits.push(tokio::spawn(async move {
            let resp = resp.await?;
            let status = resp.status().as_u16();
            let text = h2body::read_all(&mut resp.into_body()).await?;
            Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&text).into_owned()))
        }));
        send = send.ready().await?;
    }
    for (i, w) in waits.into_iter().enumerate() {
        let (status, body) = tokio::time::timeout(WAIT, w).await???;
        let name = if i % 2 == 0 { "one" } else { "two" };
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with(&format!("tag={name}\n")),
            "request {i}: {body}"
        );
        assert!(
            body.contains(&format!("GET /r{i} HTTP/1.1")),
            "request {i}: {body}"
        );
    }
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_both_transports() -> Result<()> {
    use futures::{SinkExt, StreamExt};
    let s = TestServer::start_web("").await?;
    let ws = websocket_echo().await;
    let mut alice =
        TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &http_tunnel("ws", ws, Some("ws-h2")))?);
    alice.connected().await?;
    let mut bob =
        TestClient::spawn(s.client_config(BOB_TOKEN, &http_tunnel("ws", ws, Some("ws-yamux")))?);
    bob.connected().await?;
    let port = s.web().port();
    for name in ["ws-h2", "ws-yamux"] {
        let host = format!("{name}.localhost");
        let tls = tls_to(&s, &host, b"http/1.1", None).await?;
        let (mut socket, resp) =
            tokio_tungstenite::client_async(format!("wss://{host}:{port}/chat"), tls).await?;
        assert_eq!(resp.status().as_u16(), 101);
        socket
            .send(tokio_tungstenite::tungstenite::Message::text("hello"))
            .await?;
        let big = pattern(200_000, 3);
        socket
            .send(tokio_tungstenite::tungstenite::Message::binary(big.clone()))
            .await?;
        let first = tokio::time::timeout(WAIT, socket.next())
            .await?
            .context("closed")??;
        assert_eq!(first.into_text()?.as_str(), "hello");
        let second = tokio::time::timeout(WAIT, socket.next())
            .await?
            .context("closed")??;
        assert_eq!(sha256_hex(&second.into_data()), sha256_hex(&big), "{name}");
        socket.close(None).await?;
    }
    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_http_requests_total",
            &[("frontend", "web"), ("outcome", "upgraded")]
        ),
        2.0
    );
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_ends_tls_at_the_local_service() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let (local_ca, cert, key) =
        server_pki(&s.dir, "secure", &["secure.localhost", "*.wild.localhost"]);
    let local = tls_local(&cert, &key, "behind-nat").await;
    let tunnels = format!(
        "  secure:\n    type: tls\n    local: \"{local}\"\n    subdomain: secure\n  wild:\n    type: tls\n    local: \"{local}\"\n    subdomain: \"*.wild\"\n"
    );
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &tunnels)?);
    alice.connected().await?;
    let mut bob = TestClient::spawn(
        s.client_config(
            BOB_TOKEN,
            &tunnels
                .replace("secure", "other")
                .replace("*.wild", "yamux-tls"),
        )?,
    );
    let bob_tunnels = bob.connected().await?;
    assert!(
        bob_tunnels.iter().all(|t| t.endpoint.is_some()),
        "{bob_tunnels:?}"
    );

    let port = s.web().port();
    let local_ca_s = local_ca.display().to_string();
    for host in ["secure.localhost", "deep.wild.localhost"] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}/");
        // curl trusts only the local service's CA: the certificate it sees is not tunneld's.
        let (status, out) = curl(&["--cacert", &local_ca_s, "--resolve", &resolve, &url]).await?;
        assert!(status.success(), "{host}: {out}");
        assert_eq!(out, "tls-local behind-nat\n");
    }
    // openssl s_client shows the local service's certificate.
    let connect = format!("127.0.0.1:{port}");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "secure.localhost",
                "-CAfile",
                &local_ca_s,
            ])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("secure local service"), "{text}");
    assert!(text.contains("Verify return code: 0"), "{text}");
    assert!(!text.contains("tunneld local CA"), "{text}");
    // Over yamux too.
    let resolve = format!("other.localhost:{port}:127.0.0.1");
    let url = format!("https://other.localhost:{port}/");
    let (status, out) = curl(&["-k", "--resolve", &resolve, &url]).await?;
    assert!(status.success(), "{out}");
    assert_eq!(out, "tls-local behind-nat\n");
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_passthrough_connections_total",
            &[("frontend", "web"), ("outcome", "ok")]
        ) >= 4.0
    );
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}
