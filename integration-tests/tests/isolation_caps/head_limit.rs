//! The websocket port and the https frontend agree on the 64 KiB head limit.

use crate::common::*;

/// `GET /` for `host` with one `X-Big` header whose value makes the head `total` bytes.
fn head_of_size(host: &str, total: usize) -> Vec<u8> {
    let start = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: ");
    let end = "\r\nConnection: close\r\n\r\n";
    let pad = total - start.len() - end.len();
    let head = format!("{start}{}{end}", "a".repeat(pad));
    assert_eq!(head.len(), total);
    head.into_bytes()
}

/// Bound of a visitor's wait for a status line in the head-limit test.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// Finding 8: the websocket transport's plain port and the https frontend (HTTP/1.1 over
/// TLS) both pass a 60,000-byte head to the tunnel and answer a 70,000-byte one with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_head_limit_is_431() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = server(true, &[]).await?;
    let local = services::http().await;
    let (mut alice, _) = attack::alice(&s, Via::Websocket, &http_tunnel("big", local)).await?;
    let port = attack::ws_port(&s);
    let want_431 = "HTTP/1.1 431 Request Header Fields Too Large";
    let mut problems = Vec::new();

    // Below the limit, at it, and above it by a byte, a little and a lot.
    let sizes = [
        (60_000, "HTTP/1.1 200 "),
        (65_536, "HTTP/1.1 200 "),
        (65_537, want_431),
        (70_000, want_431),
        (100_000, want_431),
    ];
    let ws_host = format!("big.localhost:{port}");
    for (size, want) in sizes {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let line = status_line(tcp, head_of_size(&ws_host, size), STATUS_WAIT).await;
        match &line {
            Ok(l) if l.starts_with(want) => {}
            _ => problems.push(format!(
                "websocket port, a {size}-byte head: want `{want}`, got {line:?}"
            )),
        }
    }
    let web_host = format!("big.localhost:{}", s.web().port());
    for (size, want) in sizes {
        let tls = tls_from(&s, "big.localhost", b"http/1.1", None).await?;
        let line = status_line(tls, head_of_size(&web_host, size), STATUS_WAIT).await;
        match &line {
            Ok(l) if l.starts_with(want) => {}
            _ => problems.push(format!(
                "https frontend (HTTP/1.1), a {size}-byte head: want `{want}`, got {line:?}"
            )),
        }
    }
    // Both frontends still serve an ordinary request, on the same session.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let line = status_line(tcp, head_of_size(&ws_host, 200), STATUS_WAIT).await;
    if !matches!(&line, Ok(l) if l.starts_with("HTTP/1.1 200 ")) {
        problems.push(format!("websocket port afterwards: {line:?}"));
    }
    note(&mut problems, assert_no_reconnect(&mut alice));
    alice.shutdown().await.ok();
    verdict(problems)
}
