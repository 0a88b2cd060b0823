//! Answers to visitors: complete HTTP/1.1 responses with a length, so a client can reuse the
//! connection after a challenge.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tunneld_core::io::BoxIo;

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// One response. `extra` are header lines without CRLF.
pub(crate) fn response(
    code: u16,
    extra: &[String],
    content_type: &str,
    body: &str,
    close: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    ));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// How long a closing answer keeps reading what the client still sends, and how much.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: usize = 16 << 20;

/// Writes a response and, when `close`, ends the connection politely: stop writing, then
/// discard what the client still sends for a moment, so it reads the answer instead of a reset.
pub(crate) async fn send(io: &mut BoxIo, bytes: &[u8], close: bool) {
    if io.write_all(bytes).await.is_err() || io.flush().await.is_err() {
        return;
    }
    if close {
        let _ = io.shutdown().await;
        let _ = tokio::time::timeout(LINGER, drain(io, LINGER_BYTES)).await;
    }
}

async fn drain<R: AsyncRead + Unpin + ?Sized>(r: &mut R, max: usize) {
    // On the heap: as an array it made every rendezvous connection's task 8 KiB larger for the
    // connection's whole life (a task is as large as its largest state).
    let mut chunk = vec![0u8; 8192];
    let mut seen = 0;
    while seen < max {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen += n,
        }
    }
}

/// Reads and discards a body of `len` bytes, `buf` holding its first bytes. False when the
/// connection ended first.
pub(crate) async fn skip_body<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    io: &mut S,
    buf: &mut Vec<u8>,
    len: u64,
) -> bool {
    let have = (buf.len() as u64).min(len) as usize;
    buf.drain(..have);
    let mut left = len - have as u64;
    let mut chunk = vec![0u8; left.min(8192) as usize];
    while left > 0 {
        let want = chunk.len().min(left as usize);
        match io.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n as u64,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answering_holds_no_read_buffer_in_the_connection_task() {
        // These futures are part of every rendezvous connection's task, for its whole life.
        let mut io: BoxIo = Box::new(tokio::io::duplex(64).0);
        let send = send(&mut io, b"", true);
        assert!(
            std::mem::size_of_val(&send) < 1024,
            "send: {} bytes",
            std::mem::size_of_val(&send)
        );
        drop(send);
        let mut buf = Vec::new();
        let skip = skip_body(&mut io, &mut buf, 10);
        assert!(
            std::mem::size_of_val(&skip) < 512,
            "skip_body: {} bytes",
            std::mem::size_of_val(&skip)
        );
    }
}
