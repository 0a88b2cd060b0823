//! The local service every system under test exposes. The visitor's first byte picks the
//! mode, so one tunnel carries every measurement:
//!
//! - `S` + u64 BE length + that many bytes: a sink; answers one byte `K` when all arrived.
//! - `D` + u64 BE length: a source; sends that many bytes, then waits for the visitor to
//!   close (a download).
//! - `L`: answers one byte `l` at once (time to first byte of a fresh connection).
//! - `I`: holds the connection open and idle, counted in `idle`, until the visitor closes.
//! - `G` (an HTTP request line): a keep-alive HTTP/1.1 server answering every request with
//!   a fixed 13-byte body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n";

pub struct Service {
    pub addr: SocketAddr,
    pub idle: Arc<AtomicUsize>,
}

pub async fn start() -> anyhow::Result<Service> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let idle = Arc::new(AtomicUsize::new(0));
    let counter = idle.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let _ = serve(s, &counter).await;
            });
        }
    });
    Ok(Service { addr, idle })
}

async fn serve(mut s: TcpStream, idle: &AtomicUsize) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    match mode[0] {
        b'S' => {
            let len = s.read_u64().await?;
            let mut left = len;
            let mut buf = vec![0u8; 256 * 1024];
            while left > 0 {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                left = left.saturating_sub(n as u64);
            }
            s.write_all(b"K").await
        }
        b'D' => {
            let len = s.read_u64().await?;
            send_bytes(&mut s, len, 0xa5).await?;
            // The visitor closes once it has every byte; closing first could reset them.
            let mut rest = [0u8; 64];
            while s.read(&mut rest).await? > 0 {}
            Ok(())
        }
        b'L' => s.write_all(b"l").await,
        b'I' => {
            idle.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            let r = async {
                while s.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(())
            }
            .await;
            idle.fetch_sub(1, Ordering::SeqCst);
            r
        }
        b'G' => {
            // Count complete request heads; answer each.
            let mut buf = vec![0u8; 16 * 1024];
            let mut pending: Vec<u8> = b"G".to_vec();
            loop {
                let mut answers = 0;
                while let Some(end) = find(&pending, b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    answers += 1;
                }
                if answers > 0 {
                    let out = HTTP_RESPONSE.repeat(answers);
                    s.write_all(&out).await?;
                }
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                pending.extend_from_slice(&buf[..n]);
            }
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` bytes of `fill` in 256 KiB writes (a throughput run's data, either way).
pub async fn send_bytes<W>(w: &mut W, bytes: u64, fill: u8) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let chunk = vec![fill; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
