//! One HTTP/1.1 exchange written by hand (`Connection: close`), for tests that need exact
//! control of the request: its headers, and the address it comes from.

use anyhow::{anyhow, Result};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Sends `req` (a whole request) to `addr` from `from` (any loopback address; 127.0.0.1 when
/// `None`); answers (status, head, body).
pub async fn exchange_from(
    addr: SocketAddr,
    from: Option<IpAddr>,
    req: &str,
) -> Result<(u16, String, String)> {
    let work = async {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut s = socket.connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(crate::WAIT, work).await??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

/// [`exchange_from`] 127.0.0.1.
pub async fn exchange(addr: SocketAddr, req: &str) -> Result<(u16, String, String)> {
    exchange_from(addr, None, req).await
}
