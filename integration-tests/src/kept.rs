//! Helpers of the kept-alive stream tests: a counting HTTP service and a visitor through the
//! web frontend (curl).

use crate::process::curl;
use crate::TestServer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections a [`counting`] service accepted, and those its client closed.
#[derive(Default)]
pub struct Counts {
    pub accepted: AtomicUsize,
    pub closed: AtomicUsize,
}

/// An HTTP/1.1 service answering `tag` to every GET, counting connections; with `close`, it
/// answers `Connection: close` and closes after each answer.
pub async fn counting(tag: &'static str, close: bool) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let n = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.accepted.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if next_head(&mut s, &mut buf).await.is_none() {
                        n.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let conn = if close { "close" } else { "keep-alive" };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// One visitor request to `name.localhost` through the web frontend: the body.
pub async fn visit(s: &TestServer, name: &str) -> String {
    visit_with(s, name, &[]).await
}

/// [`visit`] with more curl arguments (headers).
pub async fn visit_with(s: &TestServer, name: &str, extra: &[&str]) -> String {
    let port = s.web().port();
    let host = format!("{name}.localhost");
    let ca = s.ca_file().display().to_string();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    let (st, body) = curl(&args).await.expect("curl");
    assert!(st.success(), "{name}: {st} {body}");
    body
}

/// An HTTP/1.1 service that answers by path, most of them badly: `/ext` a chunked body of
/// one-byte chunks with 4000-byte extensions, without end; `/head` a head that never ends;
/// `/bad` a malformed chunk size; `/trickle` a chunk every 10 ms, without end; anything else
/// `ok` with its length, on a connection that stays open for the next request.
pub async fn hostile() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut s, &mut buf).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                    match path.as_str() {
                        "/ext" => {
                            let _ = s.write_all(chunked).await;
                            let piece = format!("1;{}\r\nx\r\n", "e".repeat(4000));
                            return endless(&mut s, piece.as_bytes(), 0).await;
                        }
                        "/head" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                            return endless(&mut s, b"X-Again: and again\r\n", 0).await;
                        }
                        "/bad" => {
                            let _ = s.write_all(chunked).await;
                            let _ = s.write_all(b"zz\r\nxx\r\n").await;
                        }
                        "/trickle" => {
                            let _ = s.write_all(chunked).await;
                            return endless(&mut s, b"1\r\nx\r\n", 10).await;
                        }
                        _ => {
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Writes `piece` again and again, `pause_ms` apart, until the other end goes.
async fn endless(s: &mut tokio::net::TcpStream, piece: &[u8], pause_ms: u64) {
    while s.write_all(piece).await.is_ok() {
        if pause_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        }
    }
}

/// Reads the next request head of a connection (bytes after it stay in `buf`): its text, or
/// `None` once the connection ends.
pub async fn next_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at + 4]).into_owned();
            buf.drain(..at + 4);
            return Some(head);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}
