//! HTTP/1.1 services: answers that describe the request, chunked echoes, bodies of a given
//! size, streams, downloads, a huge response head and slow answers.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::blocks::{block_server, write_blocks};

/// A minimal HTTP/1.1 server: answers `hello <path> host=<Host> body=<len>` to every
/// request, with keep-alive. Counts nothing, trusts nothing.
pub async fn http() -> SocketAddr {
    http_server(false, None).await
}

/// Requests a [`http_logged`] service received: `METHOD target` lines, in order.
pub type RequestLog = Arc<std::sync::Mutex<Vec<String>>>;

/// [`http_inspect`], answering JSON (`{"text": ...}`), that also logs each request line.
pub async fn http_logged() -> (SocketAddr, RequestLog) {
    let log = RequestLog::default();
    (http_server(true, Some(log.clone())).await, log)
}

/// [`http`], and each answer also tells the body's SHA-256 and whether an `Authorization`
/// header arrived: `... sha256=<hex> authorization=<yes|no>`.
pub async fn http_inspect() -> SocketAddr {
    http_server(true, None).await
}

async fn http_server(detail: bool, log: Option<RequestLog>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut request_line = String::new();
                    if r.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(log) = &log {
                        let line: Vec<&str> = request_line.split_whitespace().take(2).collect();
                        log.lock().expect("request log").push(line.join(" "));
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .to_string();
                    let mut host = String::new();
                    let mut len = 0usize;
                    let mut authorization = false;
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
                        if lower.starts_with("authorization:") {
                            authorization = true;
                        }
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let text = if detail {
                        format!(
                            "hello {path} host={host} body={} sha256={} authorization={}\n",
                            body.len(),
                            crate::sha256_hex(&body),
                            if authorization { "yes" } else { "no" }
                        )
                    } else {
                        format!("hello {path} host={host} body={}\n", body.len())
                    };
                    let (kind, text) = match log {
                        Some(_) => (
                            "application/json",
                            serde_json::json!({ "text": text }).to_string(),
                        ),
                        None => ("text/plain", text),
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{text}",
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

/// An HTTP/1.1 server with keep-alive that answers every request with a chunked body: the
/// line `tag=<tag>`, a line `sha256=<hex> body=<len>` for the request body (Content-Length or
/// chunked), then the request head as it arrived, in several chunks.
pub async fn http_echo(tag: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = l.local_addr().expect("addr");
    let tag = tag.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tag = tag.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut head = String::new();
                    let (mut len, mut chunked) = (0usize, false);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                            chunked = true;
                        }
                        head.push_str(&line);
                    }
                    let mut body = Vec::new();
                    if chunked {
                        loop {
                            let mut size = String::new();
                            if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let n = usize::from_str_radix(
                                size.trim().split(';').next().unwrap_or(""),
                                16,
                            )
                            .unwrap_or(0);
                            let mut chunk = vec![0u8; n + 2];
                            if r.read_exact(&mut chunk).await.is_err() {
                                return;
                            }
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                    } else {
                        body.resize(len, 0);
                        if r.read_exact(&mut body).await.is_err() {
                            return;
                        }
                    }
                    let text = format!(
                        "tag={tag}\nsha256={} body={}\n{head}",
                        crate::sha256_hex(&body),
                        body.len()
                    );
                    let mut out = String::from(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Served-By: ",
                    );
                    out.push_str(&tag);
                    out.push_str("\r\n\r\n");
                    for part in text.as_bytes().chunks(64) {
                        out.push_str(&format!("{:x}\r\n", part.len()));
                        out.push_str(&String::from_utf8_lossy(part));
                        out.push_str("\r\n");
                    }
                    out.push_str("0\r\n\r\n");
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one request head (up to the blank line, at most 1 MiB) and discards a
/// Content-Length body; false when the connection ended first.
async fn skip_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> bool {
    let mut total = 0usize;
    let mut len = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => total += n,
        }
        if total > 1 << 20 {
            return false;
        }
        if line == "\r\n" {
            if first {
                continue;
            }
            break;
        }
        first = false;
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = r.take(len as u64);
    tokio::io::copy(&mut body, &mut tokio::io::sink())
        .await
        .ok()
        == Some(len as u64)
}

/// An HTTP/1.1 server with keep-alive that answers every request with `len` bytes of
/// [`crate::pattern`] (seed 1) and a Content-Length: a small neighbour whose whole body a
/// probe can count.
pub async fn http_body(len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = l.local_addr().expect("addr");
    let body = Arc::new(crate::pattern(len, 1));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                while skip_request(&mut r).await {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if w.write_all(head.as_bytes()).await.is_err()
                        || w.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1.1 server that answers each request with a `total`-byte body (Content-Length),
/// written in 64 KiB blocks as fast as the peer takes them, then closes. The counter holds
/// the body bytes written so far over all connections.
pub async fn http_stream(total: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    block_server(l, 2, move |s, block, written| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        if !skip_request(&mut r).await {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        );
        if w.write_all(head.as_bytes()).await.is_err()
            || !write_blocks(&mut w, &block, total, &written).await
        {
            return;
        }
        let _ = w.shutdown().await;
    })
}

/// A web service: `GET /` and `GET /big` answer `size` bytes (Content-Length, 64 KiB blocks,
/// as fast as the peer takes them); any other path answers `ok`. One request per connection.
/// Its sockets have a 64 KiB send buffer, so a download that is not read stalls the service
/// after a little, as a real server's would, instead of filling MiBs of kernel buffer per
/// connection (which on loopback costs this process's CPU, not tunneld's). The counter holds
/// the body bytes written over all connections.
pub async fn download(size: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(64 << 10).expect("SO_SNDBUF");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let l = socket.listen(1024).expect("listen");
    block_server(l, 9, move |mut c, block, written| async move {
        let mut head = Vec::new();
        if !read_head(&mut c, &mut head).await {
            return;
        }
        if head.starts_with(b"GET /big ") || head.starts_with(b"GET / ") {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            );
            if c.write_all(h.as_bytes()).await.is_err()
                || !write_blocks(&mut c, &block, size, &written).await
            {
                return;
            }
        } else {
            let _ = c
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
        let _ = c.shutdown().await;
    })
}

/// An HTTP service whose every answer has a 300,000-byte header (one request per connection).
pub async fn big_response_head() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut c, &mut Vec::new()).await {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    "b".repeat(300_000)
                );
                let _ = c.write_all(answer.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP service with keep-alive that answers each request (`200`, body `ok`) only after
/// `delay`, so a visitor's cancel finds the stream still open on the tunnel.
pub async fn slow_http(delay: std::time::Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                for _ in 0..1000 {
                    if !read_head(&mut c, &mut head).await {
                        return;
                    }
                    let end = head
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(0, |i| i + 4);
                    head.drain(..end);
                    tokio::time::sleep(delay).await;
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if c.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads into `head` until it holds a blank line (the end of a request head); false when the
/// connection ended first or the head grew past 1 MiB.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R, head: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 1 << 20 {
            return false;
        }
    }
    true
}
