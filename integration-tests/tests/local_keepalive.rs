//! tunnelc keeps connections to local HTTP services alive between visitor requests (the
//! h2-reverse transport): twenty visitors one after another reach the service over one
//! connection; a tunnel that writes a PROXY header, or sets `reuse_connections: false`, gets
//! a connection per visitor; a service that closes after each answer still serves every
//! visitor; each tunnel keeps its own; idle kept connections are closed after a few seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::{TestClient, TestServer, ALICE_TOKEN};

/// Connections a [`counting`] service accepted, and those its client closed.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// An HTTP/1.1 service answering `tag` to every GET, counting connections; with `close`, it
/// answers `Connection: close` and closes after each answer.
async fn counting(tag: &'static str, close: bool) -> (SocketAddr, Arc<Counts>) {
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
async fn visit(s: &TestServer, name: &str) -> String {
    let port = s.web().port();
    let host = format!("{name}.localhost");
    let ca = s.ca_file().display().to_string();
    let (st, body) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &format!("https://{host}:{port}/"),
    ])
    .await
    .expect("curl");
    assert!(st.success(), "{name}: {st} {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_share_kept_connections_to_the_local_service() {
    let s = TestServer::start_web("").await.expect("server");
    let (kept, kept_n) = counting("kept", false).await;
    let (proxied, proxied_n) = counting("proxied", false).await;
    let (closing, closing_n) = counting("closing", true).await;
    let (own, own_n) = counting("own", false).await;
    let tunnels = format!(
        "  kept:\n    type: http\n    local: \"{kept}\"\n    subdomain: kept\n  proxied:\n    type: http\n    local: \"{proxied}\"\n    subdomain: proxied\n    proxy_protocol: v1\n  closing:\n    type: http\n    local: \"{closing}\"\n    subdomain: closing\n  own:\n    type: http\n    local: \"{own}\"\n    subdomain: own\n    reuse_connections: false\n"
    );
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &tunnels).expect("cfg"));
    alice.connected().await.expect("alice");

    for _ in 0..20 {
        assert_eq!(visit(&s, "kept").await, "kept");
    }
    let n = kept_n.accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "20 visitors one after another took {n} connections to the service"
    );
    // A PROXY header is per visitor: never shared.
    for _ in 0..5 {
        assert_eq!(visit(&s, "proxied").await, "proxied");
    }
    assert_eq!(proxied_n.accepted.load(Ordering::SeqCst), 5);
    // A service that closes after each answer: every visitor is still served.
    for _ in 0..5 {
        assert_eq!(visit(&s, "closing").await, "closing");
    }
    assert_eq!(closing_n.accepted.load(Ordering::SeqCst), 5);
    // Opted out: a connection per request.
    for _ in 0..3 {
        assert_eq!(visit(&s, "own").await, "own");
    }
    assert_eq!(own_n.accepted.load(Ordering::SeqCst), 3);
    // The first tunnel's kept connection still serves it, untouched by its neighbours.
    assert_eq!(visit(&s, "kept").await, "kept");
    assert!(kept_n.accepted.load(Ordering::SeqCst) <= 2);
    // Idle, it is closed a few seconds later (tunnelc keeps idle connections 4 s).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while kept_n.closed.load(Ordering::SeqCst) < kept_n.accepted.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle kept connection stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    alice.shutdown().await.expect("alice stops");
}
