//! The local services `tunnelc test` runs: HTTP answering `<METHOD> <path>`, the same over
//! TLS with the tunnel's issued certificate, and a TCP echo. Each is bounded: a 16 KiB head,
//! 64 KiB of echo and a 10-second deadline per connection.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;
const MAX_ECHO: u64 = 64 * 1024;

/// What a local echo server speaks.
#[derive(Clone)]
pub enum Echo {
    Http,
    Https(tokio_rustls::TlsAcceptor),
    Tcp,
}

/// Reads a request head and answers `<METHOD> <path>`.
pub async fn answer_http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let body = format!(
        "{} {}\n",
        words.next().unwrap_or("?"),
        words.next().unwrap_or("?")
    );
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

async fn serve_one(echo: Echo, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    match echo {
        Echo::Http => answer_http(tcp).await,
        Echo::Https(acceptor) => answer_http(acceptor.accept(tcp).await?).await,
        Echo::Tcp => {
            let (r, mut w) = tcp.into_split();
            tokio::io::copy(&mut r.take(MAX_ECHO), &mut w).await?;
            w.shutdown().await
        }
    }
}

/// Serves `listener` until `stop`.
pub fn spawn(listener: TcpListener, echo: Echo, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            let echo = echo.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(DEADLINE, serve_one(echo, tcp)).await;
            });
        }
    });
}

/// A TLS acceptor serving `cert.pem` and `key.pem`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let id = tunneld_core::tls::ServerIdentity::load(cert, key)?;
    let cfg = tunneld_core::tls::server_config(
        &id,
        &tunneld_core::tls::ClientAuth::None,
        &[b"http/1.1"],
    )?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
