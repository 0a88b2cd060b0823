//! A TLS service with its own certificate, for SNI passthrough.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TLS server with its own certificate that answers one line, `tls-local <tag>`, to
/// anything sent, as an HTTP/1.1 response; for SNI passthrough.
pub async fn tls_local(cert: &std::path::Path, key: &std::path::Path, tag: &str) -> SocketAddr {
    let id = tunneld_core::tls::ServerIdentity::load(cert, key).expect("local cert");
    let cfg =
        tunneld_core::tls::server_config(&id, &tunneld_core::tls::ClientAuth::None, &[b"http/1.1"])
            .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
    let addr = l.local_addr().expect("addr");
    let tag = tag.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, tag) = (acceptor.clone(), tag.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                if tls.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let body = format!("tls-local {tag}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}
