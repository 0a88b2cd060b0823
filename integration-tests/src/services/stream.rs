//! Byte-stream services: echoes (plain, tagged, WebSocket), a recorder of first bytes and an
//! endless writer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::blocks::block_server;

/// Echoes every byte back; half-closes after the peer does.
pub async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Accepts connections and reports the first bytes of each (up to 256 or the first pause),
/// then echoes the rest. Used to see PROXY protocol headers.
pub async fn recorder() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recorder");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                buf.truncate(n);
                let _ = tx.send(buf.clone());
                let _ = s.write_all(&buf).await;
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

/// Writes `tag` and a newline to each connection, then echoes; shows which backend served.
pub async fn tagged_echo(tag: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tagged echo");
    let addr = l.local_addr().expect("addr");
    let greeting = format!("{tag}\n").into_bytes();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if w.write_all(&greeting).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// One visitor of a tagged echo: reads the tag, echoes `len` bytes, returns the tag.
pub async fn visit_tagged(addr: SocketAddr, len: usize, seed: u64) -> anyhow::Result<String> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    visit_tagged_over(s, b"", b"", len, seed).await
}

/// [`visit_tagged`] over any stream that already reaches a tagged echo (a CONNECT tunnel, a
/// rendezvous visitor). `prelude` is written first; the echo of what the service received of
/// it (`received`: a rendezvous visitor's head loses `Authorization`) follows the tag.
pub async fn visit_tagged_over<S>(
    s: S,
    prelude: &[u8],
    received: &[u8],
    len: usize,
    seed: u64,
) -> anyhow::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use anyhow::Context;
    let fut = async {
        let (r, mut w) = tokio::io::split(s);
        let mut r = BufReader::new(r);
        w.write_all(prelude).await.context("write prelude")?;
        w.flush().await.context("flush")?;
        let mut tag = String::new();
        r.read_line(&mut tag).await.context("read tag")?;
        anyhow::ensure!(
            tag.ends_with('\n'),
            "connection closed before the tag ({tag:?})"
        );
        let mut echoed = vec![0u8; received.len()];
        r.read_exact(&mut echoed)
            .await
            .context("read prelude echo")?;
        anyhow::ensure!(
            echoed == received,
            "the service received {:?}",
            String::from_utf8_lossy(&echoed)
        );
        let data = crate::pattern(len, seed);
        w.write_all(&data).await.context("write")?;
        w.flush().await.context("flush")?;
        let mut back = vec![0u8; len];
        r.read_exact(&mut back).await.context("read echo")?;
        anyhow::ensure!(back == data, "echo differs");
        Ok(tag.trim_end().to_string())
    };
    tokio::time::timeout(crate::WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("visitor timed out"))?
}

/// A WebSocket echo server (text and binary messages come back as sent).
pub async fn websocket_echo() -> SocketAddr {
    use futures::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP service that writes 64 KiB blocks to every connection without end (and discards
/// what it receives). The counter holds the bytes written so far over all connections.
pub async fn endless() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind endless");
    block_server(l, 3, |s, block, written| async move {
        let (mut r, mut w) = s.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
        });
        while w.write_all(&block).await.is_ok() {
            written.fetch_add(block.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Writes `msg` on a kept connection to an echo service and reads it back (bounded).
pub async fn echo_message(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(crate::WAIT, s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    if back != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}
