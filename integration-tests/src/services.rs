//! Local services that tunnels expose in tests.

use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

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

/// A minimal HTTP/1.1 server: answers `hello <path> host=<Host>` to every request, with
/// keep-alive. Counts nothing, trusts nothing.
pub async fn http() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut request_line = String::new();
                    if r.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .to_string();
                    let mut host = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("host:") {
                            host = v.trim().to_string();
                        }
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let text = format!("hello {path} host={host} body={}\n", body.len());
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if w.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
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
    use anyhow::Context;
    let fut = async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .context("connect")?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut tag = String::new();
        r.read_line(&mut tag).await.context("read tag")?;
        anyhow::ensure!(
            tag.ends_with('\n'),
            "connection closed before the tag ({tag:?})"
        );
        let data = crate::pattern(len, seed);
        w.write_all(&data).await.context("write")?;
        let mut back = vec![0u8; len];
        r.read_exact(&mut back).await.context("read echo")?;
        anyhow::ensure!(back == data, "echo differs");
        Ok(tag.trim_end().to_string())
    };
    tokio::time::timeout(crate::WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("visitor timed out"))?
}
