//! TPoT's wire: framing byte for byte from a hand-written client (as TPoT v0.2.0 speaks it),
//! its create errors, live names that are not taken over, and conversation ids a client may
//! read over 33,000 conversations.

use crate::common::*;

#[tokio::test]
async fn tpot_framing_byte_for_byte() {
    let s = server().await;
    let port = ws_port(&s);
    let mut ws = tpot_connect(port, "legacy").await;
    assert_eq!(next_bin(&mut ws).await, b"\x11GTPoT/1 legacy".to_vec());

    // A visitor: `H` with its IPv4 address and port, then its bytes as the first `D`.
    let mut visitor = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("visitor");
    let vport = visitor.local_addr().expect("addr").port();
    let request = format!("GET /hello HTTP/1.1\r\nHost: legacy.localhost:{port}\r\n\r\n");
    visitor.write_all(request.as_bytes()).await.expect("write");
    let h = next_bin(&mut ws).await;
    assert_eq!(&h[..2], b"\x11H");
    let id = u16::from_le_bytes([h[2], h[3]]);
    assert_eq!(&h[4..8], &[127, 0, 0, 1]);
    assert_eq!(u16::from_le_bytes([h[8], h[9]]), vport);
    let d = next_bin(&mut ws).await;
    assert_eq!(&d[..4], &[0x12, h[2], h[3], b'D']);
    assert_eq!(&d[4..], request.as_bytes());
    // Answer, then `X`: the visitor gets the answer and the end.
    ws.send(conv(
        id,
        b'D',
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await
    .expect("send");
    ws.send(conv(id, b'X', b"")).await.expect("send");
    let mut got = String::new();
    tokio::time::timeout(WAIT, visitor.read_to_string(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.ends_with("ok"),
        "{got}"
    );

    // The next conversation id is the next number; `N` becomes a 503 for the visitor.
    let mut v2 = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("visitor");
    v2.write_all(format!("GET / HTTP/1.1\r\nHost: legacy.localhost:{port}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let h2 = next_bin(&mut ws).await;
    let id2 = u16::from_le_bytes([h2[2], h2[3]]);
    assert_eq!(id2, id + 1);
    let _first = next_bin(&mut ws).await;
    ws.send(conv(id2, b'N', b"")).await.expect("send N");
    let mut got = String::new();
    tokio::time::timeout(WAIT, v2.read_to_string(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");

    // `P` stops tunneld sending that conversation; `C` resumes it; nothing is lost.
    let mut v3 = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("visitor");
    let body = pattern(8 << 20, 3);
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: legacy.localhost:{port}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    v3.write_all(head.as_bytes()).await.expect("head");
    let h3 = next_bin(&mut ws).await;
    let id3 = u16::from_le_bytes([h3[2], h3[3]]);
    let mut received = next_bin(&mut ws).await[4..].to_vec();
    ws.send(conv(id3, b'P', b"")).await.expect("pause");
    let sent = body.clone();
    let writer = tokio::spawn(async move {
        v3.write_all(&sent).await.expect("body");
        v3
    });
    // Read what was already in flight until tunneld goes quiet.
    while let Ok(Some(Ok(Message::Binary(b)))) =
        tokio::time::timeout(Duration::from_millis(700), ws.next()).await
    {
        received.extend_from_slice(&b[4..]);
    }
    let while_paused = received.len();
    assert!(
        while_paused < head.len() + body.len() / 2,
        "tunneld kept sending after P: {while_paused} bytes"
    );
    ws.send(conv(id3, b'C', b"")).await.expect("resume");
    while received.len() < head.len() + body.len() {
        let m = next_bin(&mut ws).await;
        assert_eq!(u16::from_le_bytes([m[1], m[2]]), id3);
        received.extend_from_slice(&m[4..]);
    }
    assert_eq!(&received[head.len()..], &body[..]);
    let v3 = writer.await.expect("writer");
    drop(v3);

    // An unknown conversation id is ignored; an unknown message type closes with 4180.
    ws.send(conv(999, b'D', b"nobody")).await.expect("send");
    ws.send(Message::Binary(vec![0x13, 1].into()))
        .await
        .expect("send");
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close: {other:?}"),
        }
    };
    assert_eq!(code, 4180);
    // Counted when the session ends, after its Close frame was sent.
    let m = s
        .metrics_when(
            "tunneld_protocol_errors_total",
            &[("transport", "ws"), ("reason", "unknown_message")],
            1.0,
        )
        .await;
    assert!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", "ws"), ("reason", "unknown_message")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn create_errors_are_tpots() {
    let s = server().await;
    let port = ws_port(&s);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            create_request(port, "", None),
            "401",
            "missing Authorization",
        ),
        (
            create_request(
                port,
                "",
                Some(&header_value(
                    "wrong-key-wrong-key-wrong-key-wrong",
                    "bm9uY2Ux",
                    now,
                )),
            ),
            "401",
            "wrong TPoT-1 key",
        ),
        (
            create_request(
                port,
                "",
                Some(&header_value(KEY, "bm9uY2Uy", now - 120_000)),
            ),
            "401",
            "60 s",
        ),
        (
            create_request(port, "?subdomain=-bad", Some(&new_header_value(KEY))),
            "400",
            "invalid subdomain",
        ),
        (
            format!(
                "POST /create-tpot HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
            "405",
            "Method",
        ),
        (
            format!("GET /elsewhere HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").into_bytes(),
            "404",
            "Not Found",
        ),
        (
            format!("GET /create-tpot HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").into_bytes(),
            "400",
            "not a WebSocket upgrade",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n".to_vec(),
            "404",
            "Not Found",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: nobody.localhost:{port}\r\n\r\n").into_bytes(),
            "404",
            "no tunnel is named `nobody`",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(66 * 1024)
            )
            .into_bytes(),
            "431",
            "larger than 65536",
        ),
    ];
    for (req, code, text) in cases {
        let out = raw(port, &req).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {code} ")) && out.contains(text),
            "want {code} `{text}`, got: {out}"
        );
    }
    // A nonce works once.
    let once = header_value(KEY, "cmVwbGF5", now);
    let first = raw(port, &create_request(port, "?subdomain=once", Some(&once))).await;
    assert!(first.starts_with("HTTP/1.1 101"), "{first}");
    let again = raw(port, &create_request(port, "?subdomain=once2", Some(&once))).await;
    assert!(
        again.starts_with("HTTP/1.1 401") && again.contains("already used"),
        "{again}"
    );
    // A subdomain in use: 409 (its holder reads, and so answers the server's ping).
    let mut held = tpot_connect(port, "taken").await;
    let _held = tokio::spawn(async move { while let Some(Ok(_)) = held.next().await {} });
    let out = raw(
        port,
        &create_request(port, "?subdomain=taken", Some(&new_header_value(KEY))),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 409"), "{out}");
    // Oversized messages close the WebSocket (1009).
    let mut ws = tpot_connect(port, "big").await;
    let _greeting = next_bin(&mut ws).await;
    let _ = ws
        .send(Message::Binary(vec![0x12; (1 << 20) + 16].into()))
        .await;
    let closed = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break None,
            Err(_) => panic!("no close"),
        }
    };
    assert!(matches!(closed, Some(1009) | None), "{closed:?}");
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_ws_requests_total",
            &[("transport", "ws"), ("route", "create"), ("code", "401")]
        ) >= 3.0
    );
}

/// A live TPoT name is never taken over: a second original client gets 409, and `tunnelc
/// http` with the TPoT key asking for the same name is refused for good (one line, exit
/// code 1) while the original keeps its tunnel. Once the original is gone, the name is free.
#[tokio::test]
async fn a_live_tpot_name_is_not_taken_over() {
    // Built first: a build later would block this runtime past the server's idle timeout.
    tunneld_integration_tests::process::binary("tunnelc").expect("tunnelc built");
    let s = server().await;
    let port = ws_port(&s);
    let mut ws = tpot_connect(port, "keep").await;
    let greeting = next_bin(&mut ws).await;
    assert!(String::from_utf8_lossy(&greeting).contains("TPoT/1 keep"));
    // The original client keeps reading (and so answers pings), as every WebSocket does,
    // and pings now and then so the server's idle timeout never drops it.
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                _ = tick.tick() => if ws.send(Message::Ping(Vec::new().into())).await.is_err() { break },
            }
        }
        let _ = closed_tx.send(());
    });

    let second = raw(
        port,
        &create_request(port, "?subdomain=keep", Some(&new_header_value(KEY))),
    )
    .await;
    assert!(second.starts_with("HTTP/1.1 409"), "{second}");

    let local = http_echo("takeover").await.to_string();
    let server_url = format!("http://localhost:{port}");
    let dir = temp_dir("ws-takeover");
    let mut p = Proc::spawn(
        "tunnelc",
        &[
            "http",
            &local,
            "--server",
            &server_url,
            "-k",
            KEY,
            "-s",
            "keep",
        ],
        dir.join("stderr"),
    )
    .expect("tunnelc");
    let status = match p.wait().await {
        Ok(s) => s,
        Err(e) => panic!("tunnelc did not give up ({e}): {}", p.stderr()),
    };
    assert!(!status.success(), "refused for good");
    let err = p.stderr();
    assert!(err.contains("held by another session"), "{err}");
    assert!(
        closed_rx.try_recv().is_err(),
        "the original client keeps its WebSocket"
    );
    reader.abort();
    // The original is gone (its socket dropped): the name is free again for the key.
    let (mut q, url) = tunnelc_http(
        &[&local, "--server", &server_url, "-k", KEY, "-s", "keep"],
        "ws-takeover-after",
    )
    .await;
    assert_eq!(url, format!("http://keep.localhost:{port}"));
    q.signal("TERM").expect("stop");
    let _ = q.wait().await;
}

/// The original TPoT client reads conversation ids as signed 16-bit numbers (ids from 32768
/// up hung it): 33,000 conversations through one original-shaped session all get ids in
/// 1..=32767, wrapping back to the low ids, and every visitor is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpot_client_sees_only_ids_it_can_read_over_33000_conversations() {
    const VISITORS: usize = 33_000;
    let s = server().await;
    let port = ws_port(&s);
    let mut ws = tpot_connect(port, "wrap").await;
    assert_eq!(next_bin(&mut ws).await, b"\x11GTPoT/1 wrap".to_vec());
    // The client, as the original: each `H` opens a conversation (its id recorded); the
    // request arrives as `D`, answered with a response and `X`.
    let client = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(VISITORS);
        let mut waiting = std::collections::HashSet::new();
        let mut answered = 0;
        while answered < VISITORS {
            let m = next_bin(&mut ws).await;
            if m.len() >= 4 && m[0] == 0x11 && m[1] == b'H' {
                let id = u16::from_le_bytes([m[2], m[3]]);
                ids.push(id);
                waiting.insert(id);
            } else if m.len() >= 4 && m[0] == 0x12 && m[3] == b'D' {
                let id = u16::from_le_bytes([m[1], m[2]]);
                if waiting.remove(&id) {
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    ws.send(conv(id, b'D', ok)).await.expect("send D");
                    ws.send(conv(id, b'X', b"")).await.expect("send X");
                    answered += 1;
                }
            }
        }
        (ids, ws)
    });
    // 32 visitors at a time from four loopback addresses.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..32u8 {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < VISITORS {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(std::net::SocketAddr::from(([127, 0, 0, 10 + w % 4], 0)))
                    .expect("bind");
                let mut v = sock
                    .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                    .await
                    .expect("visitor");
                v.write_all(
                    format!("GET / HTTP/1.1\r\nHost: wrap.localhost:{port}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write");
                let mut got = Vec::new();
                tokio::time::timeout(WAIT, v.read_to_end(&mut got))
                    .await
                    .expect("answered in time")
                    .expect("read");
                assert!(got.starts_with(b"HTTP/1.1 200 OK"), "{got:?}");
            }
        }));
    }
    for w in workers {
        w.await.expect("visitors");
    }
    let (ids, _ws) = tokio::time::timeout(WAIT, client)
        .await
        .expect("every conversation reached the client")
        .expect("client");
    assert_eq!(ids.len(), VISITORS);
    let max = ids.iter().copied().max().unwrap_or(0);
    assert!(
        max <= 32767,
        "id {max} is past what the original client reads"
    );
    assert!(ids.iter().all(|&i| i >= 1));
    // The ids wrapped: more conversations than ids below 32768.
    let wrapped = ids.windows(2).any(|w| w[1] < w[0]);
    assert!(wrapped, "the ids never wrapped");
}
