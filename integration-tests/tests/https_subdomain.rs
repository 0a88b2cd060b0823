//! The `https-subdomain` frontend and the `h2-reverse` transport on loopback, with curl,
//! openssl, a WebSocket client, a raw HTTP/2 client and Node's 2ptth-style initiator.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_core::proto::{
    encode_frame, read_frame, Hello, ServerHello, TunnelKind, TunnelRequest, MAGIC, VERSION,
};
use tunneld_integration_tests::h2raw::{self, frame};
use tunneld_integration_tests::process::{curl, Proc};
use tunneld_integration_tests::services::{http_echo, tls_local, websocket_echo};
use tunneld_integration_tests::{
    metrics, pattern, server_pki, sha256_hex, temp_dir, TestClient, TestServer, ALICE_TOKEN,
    BOB_TOKEN, WAIT,
};

fn http_tunnel(name: &str, local: SocketAddr, subdomain: Option<&str>) -> String {
    let mut t = format!("  {name}:\n    type: http\n    local: \"{local}\"\n");
    if let Some(s) = subdomain {
        t.push_str(&format!("    subdomain: \"{s}\"\n"));
    }
    t
}

/// curl against `https://<host>:<web port><path>`, resolved to loopback and trusting
/// tunneld's CA. Answers (status, body, HTTP version).
async fn visit(
    s: &TestServer,
    host: &str,
    path: &str,
    extra: &[&str],
) -> Result<(u16, String, String)> {
    let port = s.web().port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = s.ca_file().display().to_string();
    let mut args = vec![
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (status, out) = curl(&args).await?;
    if !status.success() {
        return Err(anyhow!("curl {url} failed: {status} {out}"));
    }
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", &out));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    Ok((
        code.parse().unwrap_or(0),
        body.to_string(),
        version.to_string(),
    ))
}

fn write_pattern(dir: &Path, len: usize) -> (PathBuf, String) {
    let data = pattern(len, 7);
    let file = dir.join("upload.bin");
    std::fs::write(&file, &data).expect("write upload");
    (file, sha256_hex(&data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_http_tunnels_over_h2_reverse_and_yamux() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let port = s.web().port();
    let h2_local = http_echo("served-over-h2").await;
    let mut alice = TestClient::spawn(
        s.h2_client_config(ALICE_TOKEN, &http_tunnel("app", h2_local, Some("app")))?,
    );
    let tunnels = alice.connected().await?;
    assert_eq!(
        tunnels[0].endpoint.as_deref(),
        Some(format!("https://app.localhost:{port}").as_str())
    );
    let y_local = http_echo("served-over-yamux").await;
    let mut bob =
        TestClient::spawn(s.client_config(BOB_TOKEN, &http_tunnel("yam", y_local, Some("yam")))?);
    bob.connected().await?;

    let (upload, upload_sha) = write_pattern(&s.dir, 16 << 20);
    let upload_arg = format!("@{}", upload.display());
    for (name, tag) in [("app", "served-over-h2"), ("yam", "served-over-yamux")] {
        let host = format!("{name}.localhost");
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let (code, body, v) = visit(
                &s,
                &host,
                "/some/path?q=1",
                &[
                    flag,
                    "-H",
                    "Connection: keep-alive, X-Secret",
                    "-H",
                    "X-Secret: hop",
                    "-H",
                    "X-Forwarded-For: 6.6.6.6",
                    "-H",
                    "X-End-To-End: kept",
                    // Over HTTP/2, two fields (as browsers split their cookies).
                    "-H",
                    "Cookie: a=1",
                    "-H",
                    "Cookie: b=2; c=3",
                ],
            )
            .await?;
            assert_eq!((code, v.as_str()), (200, version), "{name} {flag}: {body}");
            let lower = body.to_ascii_lowercase();
            assert!(lower.starts_with(&format!("tag={tag}\n")), "{body}");
            assert!(lower.contains("get /some/path?q=1 http/1.1"), "{body}");
            assert!(lower.contains(&format!("host: {host}:{port}")), "{body}");
            assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{body}");
            assert!(lower.contains("x-forwarded-proto: https"), "{body}");
            assert!(
                lower.contains(&format!("x-forwarded-host: {host}:{port}")),
                "{body}"
            );
            assert!(lower.contains("x-end-to-end: kept"), "{body}");
            assert!(!lower.contains("6.6.6.6"), "{body}");
            // The service gets one Cookie line (RFC 9113 §8.2.3).
            let cookies: Vec<_> = lower.lines().filter(|l| l.starts_with("cookie:")).collect();
            assert_eq!(cookies, ["cookie: a=1; b=2; c=3"], "{body}");
            if version == "1.1" {
                // Named by Connection, so hop-by-hop (HTTP/2 has no Connection header).
                assert!(!lower.contains("x-secret"), "{body}");
            }

            // 16 MiB streamed up, checked by SHA-256 at the local service; the answer comes
            // back chunked.
            let (code, body, _) =
                visit(&s, &host, "/upload", &[flag, "--data-binary", &upload_arg]).await?;
            assert_eq!(code, 200, "{body}");
            assert!(
                body.contains(&format!("sha256={upload_sha} body={}", 16 << 20)),
                "{name} {flag}: {body}"
            );
        }
        // A chunked upload (HTTP/1.1).
        let (code, body, _) = visit(
            &s,
            &host,
            "/chunked",
            &[
                "--http1.1",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &upload_arg,
            ],
        )
        .await?;
        assert_eq!(code, 200);
        assert!(body.contains(&format!("sha256={upload_sha}")), "{body}");
    }
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_http_requests_total",
            &[("frontend", "web"), ("outcome", "forwarded")]
        ) >= 10.0
    );
    assert_eq!(
        m.get("tunneld_http_names_active", &[("frontend", "web")]),
        2.0
    );
    assert_eq!(
        m.get("tunneld_sessions_active", &[("transport", "h2")]),
        1.0
    );
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_offline_refused_misdirected_and_smuggled_requests() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let local = http_echo("ok").await;
    let tunnels = format!(
        "{}{}  dead:\n    type: http\n    local: \"127.0.0.1:1\"\n    subdomain: dead\n",
        http_tunnel("app", local, Some("app")),
        http_tunnel("gone", local, Some("gone"))
    );
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &tunnels)?);
    alice.connected().await?;
    let mut bob =
        TestClient::spawn(s.client_config(BOB_TOKEN, &http_tunnel("gone", local, Some("bobs")))?);
    bob.connected().await?;

    // A name nobody holds gets the domain's certificate (nothing is signed for it), so a
    // verifying client stops at TLS; past that (-k) it gets the 404 page.
    assert!(visit(&s, "nobody.localhost", "/", &[]).await.is_err());
    let (code, body, _) = visit(&s, "nobody.localhost", "/", &["-k"]).await?;
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("No tunnel is registered for nobody.localhost"),
        "{body}"
    );

    let (code, body, _) = visit(&s, "dead.localhost", "/", &[]).await?;
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("local service could not be reached"),
        "{body}"
    );

    // A host outside the domain on this listener.
    let (code, _, _) = visit(&s, "example.test", "/", &["-k"]).await?;
    assert_eq!(code, 421);

    // One HTTP/2 connection opened for app.localhost, reused for another name: 421, while
    // its own name still works on the same connection.
    let tls = tls_to(&s, "app.localhost", b"h2", None).await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(conn);
    let mut send = send.ready().await?;
    let port = s.web().port();
    for (authority, want) in [("bobs.localhost", 421), ("app.localhost", 200)] {
        let req = http::Request::get(format!("https://{authority}:{port}/"))
            .body(())
            .context("request")?;
        let (resp, _) = send.send_request(req, true)?;
        let resp = tokio::time::timeout(WAIT, resp).await??;
        assert_eq!(resp.status().as_u16(), want, "{authority}");
        send = send.ready().await?;
    }

    // Ambiguous framing: Content-Length with Transfer-Encoding, repeated Content-Length, and
    // the same hidden behind a clean first request on a kept-alive connection.
    for (raw, first) in [
        ("POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400"),
        ("POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 400"),
        ("GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\nPOST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.localhost\r\n\r\n", "HTTP/1.1 200"),
    ] {
        let mut tls = tls_to(&s, "app.localhost", b"http/1.1", None).await?;
        tls.write_all(raw.as_bytes()).await?;
        let out = read_all(&mut tls).await?;
        assert!(out.starts_with(first), "{out}");
        assert!(out.contains("HTTP/1.1 400 Bad Request"), "{out}");
        assert!(!out.contains("/smuggled"), "{out}");
    }

    // After its client disconnects, the name is reserved: 502, not 404.
    bob.shutdown().await?;
    let (code, body, _) = visit(&s, "bobs.localhost", "/", &[]).await?;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("offline"), "{body}");

    let m = s.metrics().await;
    let outcome = |o: &str| {
        m.get(
            "tunneld_http_requests_total",
            &[("frontend", "web"), ("outcome", o)],
        )
    };
    assert!(outcome("not_found") >= 1.0);
    assert!(outcome("misdirected") >= 2.0);
    assert!(outcome("local_refused") >= 1.0);
    assert!(outcome("offline") >= 1.0);
    assert!(outcome("bad_request") >= 3.0);
    alice.shutdown().await?;
    Ok(())
}

/// Everything until the peer closes (with or without TLS close_notify: the answers carry
/// their lengths).
async fn read_all<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(WAIT, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// TLS to the `web` listener with `sni`, trusting `ca` (default: tunneld's CA).
async fn tls_to(
    s: &TestServer,
    sni: &str,
    alpn: &[u8],
    ca: Option<&Path>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ca = ca.map(Path::to_path_buf).unwrap_or_else(|| s.ca_file());
    let cfg = tunneld_core::tls::client_config(
        &tunneld_core::tls::ClientTrust::CaFile(ca),
        None,
        &[alpn],
    )?;
    let tcp = tokio::net::TcpStream::connect(s.web()).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni.to_string().try_into()?, tcp)
        .await?)
}

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
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_belong_to_their_owner_and_pools_share_one() -> Result<()> {
    let s = TestServer::start_web("    pools:\n      shop: [alice, bob]\n").await?;
    let a_local = http_echo("alice").await;
    let b_local = http_echo("bob").await;
    let alice_tunnels = format!(
        "{}{}{}",
        http_tunnel("site", a_local, Some("taken")),
        http_tunnel("random", a_local, None),
        http_tunnel("shop", a_local, Some("shop"))
    );
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &alice_tunnels)?);
    let first = alice.connected().await?;
    let random_url = first
        .iter()
        .find(|t| t.name == "random")
        .and_then(|t| t.endpoint.clone())
        .context("random name")?;
    let random = random_url
        .trim_start_matches("https://")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(random.len(), 16, "{random_url}");

    // bob asks for alice's name: refused with a clear reason; the pool name is shared.
    let bob_tunnels = format!(
        "{}{}",
        http_tunnel("mine", b_local, Some("taken")),
        http_tunnel("shop", b_local, Some("shop"))
    );
    let mut bob = TestClient::spawn(s.client_config(BOB_TOKEN, &bob_tunnels)?);
    let got = bob.connected().await?;
    let refused = got.iter().find(|t| t.name == "mine").context("mine")?;
    assert_eq!(
        refused.error.as_deref(),
        Some("name `taken` is held by another client"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|t| t.name == "shop" && t.endpoint.is_some()),
        "{got:?}"
    );

    // The pool answers round-robin from both members.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body, _) = visit(&s, "shop.localhost", "/", &[]).await?;
        assert_eq!(code, 200);
        seen.insert(body.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // alice goes away: the pool fails over to bob; her names stay hers.
    alice.shutdown().await?;
    for _ in 0..4 {
        let (code, body, _) = visit(&s, "shop.localhost", "/", &[]).await?;
        assert_eq!((code, body.lines().next()), (200, Some("tag=bob")));
    }
    let (code, _, _) = visit(&s, "taken.localhost", "/", &[]).await?;
    assert_eq!(code, 502);

    // She comes back within the grace period and gets both names again, the random one too.
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &alice_tunnels)?);
    let again = alice.connected().await?;
    assert_eq!(
        again
            .iter()
            .find(|t| t.name == "random")
            .and_then(|t| t.endpoint.clone()),
        Some(random_url)
    );
    let (code, body, _) = visit(&s, "taken.localhost", "/", &[]).await?;
    assert_eq!((code, body.lines().next()), (200, Some("tag=alice")));
    let (code, _, _) = visit(&s, &format!("{random}.localhost"), "/", &[]).await?;
    assert_eq!(code, 200);
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

/// A hostile tunnel client: authenticates over the shared port, then answers tunneld's
/// requests with `misbehave`.
async fn evil_session(
    s: &TestServer,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tls = s
        .tls_connect_to(s.web(), tunneld_transport_h2_reverse::ALPN)
        .await;
    let hello = Hello {
        version: VERSION,
        token: Some(BOB_TOKEN.into()),
        tunnels: vec![TunnelRequest {
            name: name.into(),
            kind: TunnelKind::Http,
            remote_port: None,
            frontend: None,
            proxy_protocol: None,
            subdomain: Some(name.into()),
        }],
        accept_server_mappings: false,
        agent: "evil".into(),
        max_streams: None,
        instance: None,
    };
    let mut pre = MAGIC.to_vec();
    pre.extend(encode_frame(&hello)?);
    tls.write_all(&pre).await?;
    let welcome: ServerHello = read_frame(&mut tls).await?;
    assert!(
        matches!(welcome, ServerHello::Welcome { .. }),
        "{welcome:?}"
    );
    let mut preface = [0u8; 24];
    tls.read_exact(&mut preface).await?;
    assert_eq!(&preface[..], h2raw::PREFACE);
    tls.write_all(&frame(h2raw::SETTINGS, 0, 0, &[])).await?;
    Ok(tls)
}

/// Reads frames until tunneld's request HEADERS arrives; returns its stream id.
async fn next_request(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<u32> {
    tokio::time::timeout(WAIT, async {
        loop {
            let (kind, flags, stream, _) = h2raw::read_frame(tls).await?;
            if kind == h2raw::SETTINGS && flags & h2raw::ACK == 0 {
                tls.write_all(&frame(h2raw::SETTINGS, h2raw::ACK, 0, &[]))
                    .await?;
            }
            if kind == h2raw::HEADERS {
                return Ok::<_, anyhow::Error>(stream);
            }
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_end_in_goaway_while_other_tunnels_keep_working() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let local = http_echo("steady").await;
    let mut alice = TestClient::spawn(
        s.h2_client_config(ALICE_TOKEN, &http_tunnel("app", local, Some("steady")))?,
    );
    alice.connected().await?;
    let port = s.web().port();

    // Visitors: rapid reset (HEADERS then RST_STREAM, 500 times).
    let mut tls = tls_to(&s, "steady.localhost", b"h2", None).await?;
    let mut burst = h2raw::PREFACE.to_vec();
    burst.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
    let block = h2raw::get_block(&format!("steady.localhost:{port}"));
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &block,
        ));
        burst.extend(frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tls.write_all(&burst).await;
    assert_eq!(
        h2raw::goaway_code(&mut tls).await?,
        h2raw::ENHANCE_YOUR_CALM,
        "rapid reset"
    );

    // Visitors: a header block in endless CONTINUATION frames.
    let mut tls = tls_to(&s, "steady.localhost", b"h2", None).await?;
    let mut burst = h2raw::PREFACE.to_vec();
    burst.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
    burst.extend(frame(h2raw::HEADERS, 0, 1, &block));
    for _ in 0..200 {
        burst.extend(frame(h2raw::CONTINUATION, 0, 1, &h2raw::SMALL_FIELD));
    }
    let _ = tls.write_all(&burst).await;
    assert_eq!(
        h2raw::goaway_code(&mut tls).await?,
        h2raw::ENHANCE_YOUR_CALM,
        "CONTINUATION flood"
    );

    // A tunnel client answering in endless CONTINUATION frames, then one sending empty DATA
    // frames: tunneld ends each connection with GOAWAY.
    for (name, attack) in [("evil-cont", 0u8), ("evil-empty", 1u8)] {
        let mut evil = evil_session(&s, name).await?;
        let host = format!("{name}.localhost");
        let visitor = tokio::spawn({
            let ca = s.ca_file().display().to_string();
            let resolve = format!("{host}:{port}:127.0.0.1");
            let url = format!("https://{host}:{port}/");
            async move {
                curl(&[
                    "--cacert",
                    &ca,
                    "--resolve",
                    &resolve,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ])
                .await
            }
        });
        let stream = next_request(&mut evil).await?;
        let mut burst = Vec::new();
        if attack == 0 {
            burst.extend(frame(h2raw::HEADERS, 0, stream, &h2raw::STATUS_200));
            for _ in 0..200 {
                burst.extend(frame(h2raw::CONTINUATION, 0, stream, &h2raw::SMALL_FIELD));
            }
        } else {
            burst.extend(frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS,
                stream,
                &h2raw::STATUS_200,
            ));
            for _ in 0..300 {
                burst.extend(frame(h2raw::DATA, 0, stream, &[]));
            }
        }
        let _ = evil.write_all(&burst).await;
        assert_eq!(
            h2raw::goaway_code(&mut evil).await?,
            h2raw::ENHANCE_YOUR_CALM,
            "{name}"
        );
        let (_, code) = tokio::time::timeout(WAIT, visitor).await???;
        assert_ne!(code, "200", "{name}");
    }

    // The well-behaved tunnel never noticed.
    let (code, body, _) = visit(&s, "steady.localhost", "/", &["--http2"]).await?;
    assert_eq!((code, body.lines().next()), (200, Some("tag=steady")));
    // Counted after each connection's GOAWAY.
    let calm = |m: &metrics::Samples, transport: &str| {
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", transport), ("reason", "h2_enhance_your_calm")],
        )
    };
    let m = s
        .metrics_until(|m| calm(m, "h2") >= 2.0 && calm(m, "web") >= 2.0)
        .await;
    assert!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", "h2"), ("reason", "h2_enhance_your_calm")]
        ) >= 2.0
    );
    assert!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", "web"), ("reason", "h2_enhance_your_calm")]
        ) >= 2.0
    );
    alice.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2ptth_initiator_from_node_serves_curl() -> Result<()> {
    let s = TestServer::start_web("    compat_2ptth:\n      hostname: legacy.localhost\n").await?;
    // Nobody connected yet: 502 with the original's words.
    let (code, body, _) = visit(&s, "legacy.localhost", "/", &[]).await?;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body, "There is no upstream available\n");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/initiator-2ptth.js");
    let port = s.web().port().to_string();
    let ca = s.ca_file().display().to_string();
    let script = script.display().to_string();
    let mut node = Proc::spawn_program(
        Path::new("node"),
        &[&script, "127.0.0.1", &port, "localhost", &ca],
        s.dir.join("node.err"),
    )?;
    node.line_starting("connected").await?;
    for flag in ["--http1.1", "--http2"] {
        let (code, body, _) = visit(
            &s,
            "legacy.localhost",
            "/hello?x=1",
            &[flag, "--data-binary", "12345"],
        )
        .await?;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body,
            format!("2ptth POST /hello?x=1 authority=legacy.localhost:{port} body=5\n")
        );
    }
    let m = s.metrics().await;
    assert_eq!(
        m.get("tunneld_2ptth_upstreams", &[("frontend", "web")]),
        1.0
    );
    // The same listener still serves an ordinary browser-like client (ALPN h2/http1.1).
    let (code, _, v) = visit(&s, "nobody.localhost", "/", &["-k"]).await?;
    assert_eq!((code, v.as_str()), (404, "2"));
    drop(node);
    Ok(())
}

/// One head limit (`limits.max_request_head`, 64 KiB by default), answered `431` on both
/// protocols: curl over HTTP/1.1 writes its whole request before reading, so the answer must
/// survive the close (a lingering close drains what it still sends); over HTTP/2 the stream
/// gets a plain 431 and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_limit_get_431_on_http1_and_http2() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let local = http_echo("heads").await;
    let mut c = TestClient::spawn(
        s.h2_client_config(ALICE_TOKEN, &http_tunnel("app", local, Some("app")))?,
    );
    c.connected().await?;
    let big = format!("X-Big: {}", "a".repeat(66_000));
    let fits = format!("X-Big: {}", "a".repeat(60_000));
    let (code, body, _) = visit(&s, "app.localhost", "/", &["--http1.1", "-H", &big]).await?;
    assert_eq!(code, 431, "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    for flag in ["--http1.1", "--http2"] {
        let (code, body, _) = visit(&s, "app.localhost", "/", &[flag, "-H", &fits]).await?;
        assert_eq!(code, 200, "{flag}: {body}");
    }
    // curl's HTTP/2 library will not send a header block over 64 KiB at all, so the HTTP/2
    // case is written by hand.
    // Raw HTTP/2: HEADERS + CONTINUATION of 66,000 bytes, then a small request on the same
    // connection: a 431 without a reset, then a 200.
    let mut tls = tls_to(&s, "app.localhost", b"h2", None).await?;
    let mut block = h2raw::get_block(&format!("app.localhost:{}", s.web().port()));
    block.extend_from_slice(&[0x00, 0x05]);
    block.extend_from_slice(b"x-big");
    // The value's length as an HPACK integer with a 7-bit prefix: 127 + 65873.
    let value = vec![b'a'; 66_000];
    let mut n = value.len() - 127;
    block.push(0x7f);
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend_from_slice(&value);
    let mut out = h2raw::PREFACE.to_vec();
    out.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, c) in chunks.iter().enumerate() {
        let kind = if i == 0 {
            h2raw::HEADERS
        } else {
            h2raw::CONTINUATION
        };
        let mut flags = if i == 0 { h2raw::END_STREAM } else { 0 };
        if i + 1 == chunks.len() {
            flags |= h2raw::END_HEADERS;
        }
        out.extend(frame(kind, flags, 1, c));
    }
    out.extend(frame(
        h2raw::HEADERS,
        h2raw::END_STREAM | h2raw::END_HEADERS,
        3,
        &h2raw::get_block(&format!("app.localhost:{}", s.web().port())),
    ));
    tls.write_all(&out).await?;
    let mut bodies: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    tokio::time::timeout(WAIT, async {
        loop {
            let (kind, flags, stream, payload) = h2raw::read_frame(&mut tls).await?;
            anyhow::ensure!(kind != h2raw::RST_STREAM, "stream {stream} was reset");
            anyhow::ensure!(kind != h2raw::GOAWAY, "GOAWAY");
            if kind == h2raw::DATA {
                bodies.entry(stream).or_default().extend(payload);
                if flags & h2raw::END_STREAM != 0 && bodies.len() == 2 {
                    return Ok(());
                }
            }
        }
    })
    .await??;
    let first = String::from_utf8_lossy(&bodies[&1]).to_string();
    assert!(first.contains("Request Header Fields Too Large"), "{first}");
    assert!(String::from_utf8_lossy(&bodies[&3]).contains("heads"));
    c.shutdown().await?;
    Ok(())
}
