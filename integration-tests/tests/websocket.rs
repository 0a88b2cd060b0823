//! The websocket transport on loopback: TPoT's framing byte for byte from a hand-written
//! client (as TPoT v0.2.0 speaks it), the create errors, `tunnelc http` with curl visitors,
//! backpressure from a visitor that stops reading, and all of it again behind Debian's nginx.

use anyhow::{anyhow, Result};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tunneld_integration_tests::process::{curl, Proc};
use tunneld_integration_tests::services::http_echo;
use tunneld_integration_tests::{
    pattern, server_pki, sha256_hex, temp_dir, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT,
};
use tunneld_transport_websocket::tpot_auth::{header_value, new_header_value};

const KEY: &str = "an-example-tpot-key-of-40-characters-xyz";

/// A server with the `web` frontend and a websocket transport `ws` (domain `localhost`)
/// trusting proxies on 127.0.0.1.
async fn server() -> TestServer {
    TestServer::start_full(
        tunneld_integration_tests::WEB_FRONTEND,
        &[
            "transports.h2.type=h2-reverse".into(),
            "transports.h2.listen=127.0.0.1:0".into(),
            "transports.ws.type=websocket".into(),
            "transports.ws.listen=127.0.0.1:0".into(),
            "transports.ws.domain=localhost".into(),
            "transports.ws.frontend=web".into(),
            format!("transports.ws.auth_key={KEY}"),
            "transports.ws.trusted_proxies=[127.0.0.1]".into(),
            "transports.ws.max_conversations=200".into(),
        ],
    )
    .await
    .expect("tunneld")
}

fn ws_port(s: &TestServer) -> u16 {
    s.running.transports["ws"].port()
}

/// Sends a raw request and returns the whole answer.
async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn create_request(port: u16, query: &str, auth: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET /create-tpot{query} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(a) = auth {
        r.push_str(&format!("Authorization: {a}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// An original TPoT client's upgrade: no subprotocol, the TPoT-1 header.
async fn tpot_connect(port: u16, subdomain: &str) -> Ws {
    let mut req = format!("ws://localhost:{port}/create-tpot?subdomain={subdomain}")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        new_header_value(KEY).parse().expect("header"),
    );
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("upgrade");
    ws
}

/// The next binary message (pings skipped).
async fn next_bin(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message: {other:?}"),
        }
    }
}

fn conv(id: u16, cmd: u8, data: &[u8]) -> Message {
    let mut m = vec![0x12];
    m.extend_from_slice(&id.to_le_bytes());
    m.push(cmd);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

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

/// Starts `tunnelc http` and returns it with the public URL it printed.
async fn tunnelc_http(args: &[&str], tag: &str) -> (Proc, String) {
    let dir = temp_dir(tag);
    let mut all = vec!["http"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn("tunnelc", &all, dir.join("stderr")).expect("tunnelc");
    p.line_starting("connected").await.expect("connected");
    let url = p.line_starting("http").await.expect("url");
    (p, url)
}

/// curl `url` resolved to 127.0.0.1; (status, body).
async fn visit(url: &str, extra: &[&str]) -> Result<(u16, String)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let resolve = format!("{authority}:127.0.0.1");
    let mut args = vec!["--resolve", &resolve, "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let (status, out) = curl(&args).await?;
    if !status.success() {
        return Err(anyhow!("curl {url}: {status} {out}"));
    }
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    Ok((code.parse().unwrap_or(0), body.to_string()))
}

/// The checks `tunnelc http` must pass, directly or behind nginx: Host rewriting on
/// keep-alive requests, a 16 MiB POST, 100 concurrent visitors, an unknown name.
async fn quick_mode_checks(url: &str, local: SocketAddr, ca: Option<&Path>) {
    let ca_arg = ca.map(|c| c.display().to_string());
    let mut base: Vec<&str> = Vec::new();
    if let Some(c) = &ca_arg {
        base.extend(["--cacert", c.as_str()]);
    }
    // Two requests on one connection: both rewritten to the target.
    let second = format!("{url}/second");
    let mut args = base.clone();
    args.push("--next");
    args.extend(base.iter().copied());
    args.push(&second);
    let (code, body) = visit(&format!("{url}/first"), &args).await.expect("visit");
    assert_eq!(code, 200, "{body}");
    let want = format!("Host: {local}");
    assert_eq!(body.matches(&want).count(), 2, "{body}");
    assert!(
        body.contains("GET /first ") && body.contains("GET /second "),
        "{body}"
    );
    assert_eq!(body.matches("Host: ").count(), 2, "{body}");
    // A 16 MiB POST arrives intact.
    let dir = temp_dir("ws-post");
    let data = pattern(16 << 20, 5);
    let file = dir.join("body");
    std::fs::write(&file, &data).expect("write");
    let at = format!("@{}", file.display());
    let mut args = base.clone();
    args.extend(["--data-binary", at.as_str()]);
    let (code, body) = visit(&format!("{url}/post"), &args).await.expect("post");
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("sha256={} body={}", sha256_hex(&data), data.len())),
        "{body}"
    );
    // 100 visitors at once.
    let mut args = base.clone();
    args.extend([
        "-Z",
        "--parallel-max",
        "100",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
    ]);
    let urls: Vec<String> = (0..100).map(|i| format!("{url}/c{i}")).collect();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let resolve = format!("{rest}:127.0.0.1");
    args.extend(["--resolve", resolve.as_str()]);
    args.extend(urls.iter().map(String::as_str));
    let (status, out) = curl(&args).await.expect("curl");
    assert!(status.success(), "{out}");
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 100, "{out}");
    // An unknown name.
    let (scheme, rest) = url.split_once("://").expect("url");
    let (_, domain) = rest.split_once('.').expect("name.domain");
    let (code, body) = visit(&format!("{scheme}://nobody-here.{domain}/"), &base)
        .await
        .expect("visit");
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn tunnelc_http_quick_mode() {
    let s = server().await;
    let port = ws_port(&s);
    let local = http_echo("quick").await;
    let server_url = format!("http://localhost:{port}");
    let target = local.to_string();
    let (mut p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--token",
            ALICE_TOKEN,
            "-s",
            "quick",
        ],
        "ws-quick",
    )
    .await;
    assert_eq!(url, format!("http://quick.localhost:{port}"));
    quick_mode_checks(&url, local, None).await;
    // The same name over the https-subdomain frontend.
    let web = s.web().port();
    let ca = s.ca_file().display().to_string();
    let (code, body) = visit(
        &format!("https://quick.localhost:{web}/tls"),
        &["--cacert", &ca],
    )
    .await
    .expect("visit");
    assert_eq!(code, 200, "{body}");
    // Quick mode serves the request inspector on its own (4040, or the next free port):
    // it recorded the visit as the local service received it (Host rewritten).
    let inspector = p
        .line_starting("inspector: ")
        .await
        .expect("inspector line");
    let api = format!(
        "{}/api/requests",
        inspector.trim_start_matches("inspector: ")
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, list) = curl(&[&api]).await.expect("curl");
        let list: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        let tls = list["requests"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["target"] == "/tls"));
        if let Some(r) = tls {
            let headers = r["request_headers"].to_string();
            assert!(
                headers.contains(&local.to_string()),
                "Host rewritten: {headers}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {list}");
        tokio::task::yield_now().await;
    }
    // A second client cannot take the name: the error names it.
    let mut other = Proc::spawn(
        "tunnelc",
        &[
            "http",
            &target,
            "--server",
            &server_url,
            "--token",
            BOB_TOKEN,
            "-s",
            "quick",
        ],
        temp_dir("ws-quick-2").join("stderr"),
    )
    .expect("tunnelc");
    // Its only tunnel refused, it says so in one line and stops.
    let status = tokio::time::timeout(WAIT, other.wait())
        .await
        .expect("gives up in time")
        .expect("status");
    assert!(!status.success());
    let err = other.stderr();
    assert!(
        err.contains("refused every tunnel: http: name `quick` is held by another client"),
        "{err}"
    );
    // A random name survives a reconnect: the session is cut, tunnelc comes back with it.
    let (mut r, random_url) = tunnelc_http(
        &[&target, "--server", &server_url, "--auth-key", KEY],
        "ws-quick-random",
    )
    .await;
    let name = random_url
        .strip_prefix("http://")
        .and_then(|u| u.split('.').next())
        .expect("name")
        .to_string();
    assert_eq!(name.len(), 8, "{random_url}");
    let (code, _) = visit(&format!("{random_url}/"), &[]).await.expect("visit");
    assert_eq!(code, 200);
    for sess in s.running.hub.sessions() {
        if sess.info.client_id == format!("tpot:{name}") {
            sess.closed.cancel();
        }
    }
    r.line_starting("connected").await.expect("reconnected");
    let again = r.line_starting("http").await.expect("url");
    assert_eq!(again, random_url);
    p.signal("TERM").expect("term");
    let _ = p.wait().await;
}

#[tokio::test]
async fn a_visitor_that_stops_reading_stalls_the_service_not_memory() {
    let s = server().await;
    let port = ws_port(&s);
    // A local service that streams forever, counting what it managed to write.
    let written = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = l.local_addr().expect("addr");
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = c.read(&mut head).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .await;
                let block = vec![b'z'; 64 << 10];
                while c.write_all(&block).await.is_ok() {
                    w.fetch_add(block.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let target = local.to_string();
    let server_url = format!("http://localhost:{port}");
    let (_p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--token",
            ALICE_TOKEN,
            "-s",
            "stream",
            "--no-host-rewrite",
        ],
        "ws-stall",
    )
    .await;
    assert_eq!(url, format!("http://stream.localhost:{port}"));
    let mut v = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("visitor");
    v.write_all(format!("GET /big HTTP/1.1\r\nHost: stream.localhost:{port}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut first = [0u8; 4096];
    let n = v.read(&mut first).await.expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // The visitor reads no more. Wait until the service is stuck (no progress for 1 s).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = written.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service never stalled ({now} bytes)"
        );
    }
    // Everything in between (socket buffers, conversation buffers, queues) is bounded.
    assert!(
        last < 48 << 20,
        "the service wrote {last} bytes into a stalled tunnel"
    );
    let m = s.metrics().await;
    assert!(m.get("tunneld_ws_pauses_total", &[("transport", "ws")]) >= 1.0);
    // Reading again drains it and the stream goes on.
    let mut more = vec![0u8; 1 << 20];
    v.read_exact(&mut more).await.expect("resumes");
    drop(v);
}

fn nginx() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn behind_nginx_terminating_tls() {
    let Some(nginx) = nginx() else {
        eprintln!("SKIPPED behind_nginx_terminating_tls: nginx is not installed (scripts/test installs it)");
        return;
    };
    let s = server().await;
    let port = ws_port(&s);
    let dir = temp_dir("nginx");
    let (ca, cert, key) = server_pki(
        &dir,
        "edge",
        &["localhost", "proxied.localhost", "nobody-here.localhost"],
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let nport = listen.local_addr().expect("addr").port();
    drop(listen);
    for d in ["tmp", "logs"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{nport} ssl;
    server_name localhost *.localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#,
        d = dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let conf_file = dir.join("nginx.conf");
    std::fs::write(&conf_file, conf).expect("conf");
    let conf_arg = conf_file.display().to_string();
    let prefix = dir.display().to_string();
    let _nginx = Proc::spawn_program(
        &nginx,
        &["-p", &prefix, "-c", &conf_arg],
        dir.join("nginx.stderr"),
    )
    .expect("nginx");
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", nport)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let local = http_echo("nginx").await;
    let target = local.to_string();
    let server_url = format!("https://localhost:{nport}");
    let ca_arg = ca.display().to_string();
    let (_p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--ca",
            &ca_arg,
            "--token",
            ALICE_TOKEN,
            "-s",
            "proxied",
        ],
        "ws-nginx",
    )
    .await;
    // The scheme is the one nginx reports (X-Forwarded-Proto from a trusted proxy).
    assert_eq!(url, format!("https://proxied.localhost:{nport}"));
    quick_mode_checks(&url, local, Some(&ca)).await;
    // The create errors come through the proxy unchanged.
    let (code, body) = visit(
        &format!("https://localhost:{nport}/create-tpot"),
        &[
            "--cacert",
            &ca_arg,
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "--http1.1",
        ],
    )
    .await
    .expect("visit");
    assert_eq!(code, 401, "{body}");
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
