//! Helpers the websocket tests share: tunneld with the `web` frontend and a websocket
//! transport, TPoT's create requests and conversation frames, `tunnelc http` and its visitors,
//! and Debian's nginx.

pub(crate) use anyhow::{anyhow, Result};
pub(crate) use futures::{SinkExt, StreamExt};
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::Path;
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tokio::net::TcpStream;
pub(crate) use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub(crate) use tokio_tungstenite::tungstenite::Message;
pub(crate) use tunneld_integration_tests::process::{curl, Proc};
pub(crate) use tunneld_integration_tests::services::http_echo;
pub(crate) use tunneld_integration_tests::{
    pattern, server_pki, sha256_hex, temp_dir, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT,
};
pub(crate) use tunneld_transport_websocket::tpot_auth::{header_value, new_header_value};

pub(crate) const KEY: &str = "an-example-tpot-key-of-40-characters-xyz";

/// A server with the `web` frontend and a websocket transport `ws` (domain `localhost`)
/// trusting proxies on 127.0.0.1.
pub(crate) async fn server() -> TestServer {
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

pub(crate) fn ws_port(s: &TestServer) -> u16 {
    s.running.transports["ws"].port()
}

/// Sends a raw request and returns the whole answer.
pub(crate) async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn create_request(port: u16, query: &str, auth: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET /create-tpot{query} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(a) = auth {
        r.push_str(&format!("Authorization: {a}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// An original TPoT client's upgrade: no subprotocol, the TPoT-1 header.
pub(crate) async fn tpot_connect(port: u16, subdomain: &str) -> Ws {
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
pub(crate) async fn next_bin(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message: {other:?}"),
        }
    }
}

pub(crate) fn conv(id: u16, cmd: u8, data: &[u8]) -> Message {
    let mut m = vec![0x12];
    m.extend_from_slice(&id.to_le_bytes());
    m.push(cmd);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

/// Starts `tunnelc http` and returns it with the public URL it printed.
pub(crate) async fn tunnelc_http(args: &[&str], tag: &str) -> (Proc, String) {
    let dir = temp_dir(tag);
    let mut all = vec!["http"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn("tunnelc", &all, dir.join("stderr")).expect("tunnelc");
    p.line_starting("connected").await.expect("connected");
    let url = p.line_starting("http").await.expect("url");
    (p, url)
}

/// curl `url` resolved to 127.0.0.1; (status, body).
pub(crate) async fn visit(url: &str, extra: &[&str]) -> Result<(u16, String)> {
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
pub(crate) async fn quick_mode_checks(url: &str, local: SocketAddr, ca: Option<&Path>) {
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

pub(crate) fn nginx() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}
