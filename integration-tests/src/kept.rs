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
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                n.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    buf.drain(..end);
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
