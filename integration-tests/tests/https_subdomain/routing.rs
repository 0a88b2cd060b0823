//! Requests reaching http tunnels over h2-reverse and yamux with curl (bodies, cookies), and
//! the ones refused: unknown, offline, misdirected and smuggled requests, and heads over the
//! limit on HTTP/1.1 and HTTP/2.

use crate::common::*;

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
    // the same hidden behind a clean first request on a kept-alive connection; and `*` as
    // the target of anything but OPTIONS.
    for (raw, first) in [
        ("GET * HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n", "HTTP/1.1 400"),
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
    assert!(outcome("bad_request") >= 4.0);
    alice.shutdown().await?;
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
