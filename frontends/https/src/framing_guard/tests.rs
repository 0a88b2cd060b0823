//! Tests of the framing guard.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn through(input: &[u8]) -> (Vec<u8>, Option<String>) {
    let (mut a, b) = tokio::io::duplex(1 << 20);
    a.write_all(input).await.unwrap_or_default();
    a.shutdown().await.unwrap_or_default();
    let mut g = FramingGuard::new(b);
    let mut out = Vec::new();
    g.read_to_end(&mut out).await.unwrap_or_default();
    (out, g.refused().map(str::to_string))
}

#[tokio::test]
async fn clean_keepalive_requests_pass_unchanged() {
    let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
    let (out, refused) = through(input).await;
    assert_eq!(out, input.to_vec());
    assert!(refused.is_none());
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused_whether_complete_or_not() {
    for tail in ["\r\n\r\n", ""] {
        let input = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}{tail}",
            "a".repeat(5000)
        );
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(input.as_bytes()).await.unwrap_or_default();
        a.shutdown().await.unwrap_or_default();
        let mut g = FramingGuard::new(b).max_head(4096);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.unwrap_or_default();
        assert_eq!(g.refused(), Some("request head larger than 4096 bytes"));
        assert!(String::from_utf8_lossy(&out).contains(REFUSED_HEADER));
    }
    // At the limit it passes.
    let input = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4000));
    let (mut a, b) = tokio::io::duplex(1 << 20);
    a.write_all(input.as_bytes()).await.unwrap_or_default();
    a.shutdown().await.unwrap_or_default();
    let mut g = FramingGuard::new(b).max_head(input.len());
    let mut out = Vec::new();
    g.read_to_end(&mut out).await.unwrap_or_default();
    assert!(g.refused().is_none());
    assert_eq!(out, input.as_bytes());
}

#[tokio::test]
async fn a_smuggled_second_request_is_refused() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (out, refused) = through(input).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nhost: refused.invalid\r\nx-tunneld-refused: "), "{out}");
    assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    assert!(!out.contains("POST"), "{out}");
    assert!(refused.is_some_and(|r| r.contains("Transfer-Encoding")));
}

#[tokio::test]
async fn duplicate_lengths_are_refused_and_bodies_are_not_heads() {
    let (_, refused) =
        through(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
            .await;
    assert!(refused.is_some());
    // A body that looks like a bad head is data, not a request.
    let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    let (out, refused) = through(input).await;
    assert!(refused.is_none());
    assert_eq!(out, input.to_vec());
}

#[tokio::test]
async fn what_the_guard_cannot_follow_is_refused_not_passed() {
    // A malformed head: refused, nothing after it reaches the server.
    let (out, refused) =
        through(b"GET / HTTP/1.1\r\nBad Header\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n").await;
    assert!(refused.is_some_and(|r| r.starts_with("malformed request head")));
    assert!(!String::from_utf8_lossy(&out).contains("smuggled"));
    // A chunk line over the limit, or a bad one: input ends inside the body.
    for body in [
        format!("{}\r\nGET /smuggled HTTP/1.1\r\n\r\n", "1".repeat(5000)),
        "zz\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_string(),
        "-1\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_string(),
    ] {
        let input =
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (out, refused) = through(input.as_bytes()).await;
        assert!(refused.is_some(), "{body:.20} passed");
        assert!(!String::from_utf8_lossy(&out).contains("smuggled"));
    }
}

#[tokio::test]
async fn many_pipelined_heads_take_linear_time() {
    // 30,000 tiny pipelined requests in one stream (870 KB): a guard that copies the
    // rest of its buffer per head moves about 13 GB.
    let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let input = one.repeat(30_000);
    let started = std::time::Instant::now();
    let (out, refused) = through(&input).await;
    assert!(refused.is_none());
    assert_eq!(out.len(), input.len());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_still_passes() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\nX: y\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    let (mut a, b) = tokio::io::duplex(1);
    let writer = tokio::spawn(async move {
        for byte in input {
            a.write_all(&[*byte]).await.unwrap_or_default();
        }
        a.shutdown().await.unwrap_or_default();
    });
    let mut g = FramingGuard::new(b);
    let mut out = Vec::new();
    g.read_to_end(&mut out).await.unwrap_or_default();
    writer.await.unwrap_or_default();
    assert!(g.refused().is_none());
    assert_eq!(out, input.to_vec());
}

#[tokio::test]
async fn trailer_and_chunk_lines_need_crlf() {
    // A bare LF inside the trailers: where two parsers could disagree.
    let input = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let (out, refused) = through(input).await;
    assert!(refused.is_some_and(|r| r.contains("CRLF")));
    assert!(!String::from_utf8_lossy(&out).contains("POST /x"));
    let input =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
    let (_, refused) = through(input).await;
    assert!(refused.is_some(), "a bare LF after a chunk size");
}
