//! A reader that sits under an HTTP/1.1 server and refuses ambiguous message framing before
//! the server sees it. HTTP libraries quietly resolve `Content-Length` plus
//! `Transfer-Encoding`, or repeated `Content-Length`; a proxy in front of other servers must
//! reject them (request smuggling). The guard follows message boundaries (lengths and
//! chunks) so it checks every request of a keep-alive connection, holds each head back until
//! it is whole and checked. A bad head is replaced by a stand-in request carrying
//! [`REFUSED_HEADER`] and `Connection: close`, after which input ends: the server answers the
//! stand-in with `400` in order (after any earlier pipelined responses) and closes.

use crate::http1::{parse, Framing, MAX_HEAD};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header of the stand-in request that replaces a refused one; its value is the reason. A
/// visitor who sends it only earns a `400` for itself.
pub const REFUSED_HEADER: &str = "x-tunneld-refused";

/// How the reason of a refusal for a head over the limit starts (the server answers it with
/// `431`, not `400`).
pub const HEAD_TOO_LARGE: &str = "request head larger than";

enum State {
    /// Collecting a request head.
    Head,
    /// Inside a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Inside chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Not HTTP/1 messages any more (after an upgrade or CONNECT, or a head the server
    /// will refuse itself).
    Raw,
}

/// Told the reason when a request is refused.
type OnRefuse = Box<dyn FnOnce(&str) + Send>;

pub struct FramingGuard<T> {
    inner: T,
    state: State,
    /// Bytes of an incomplete head or line.
    pending: Vec<u8>,
    /// Checked bytes waiting for the server.
    ready: Vec<u8>,
    /// The reason, once a head was refused.
    refused: Option<String>,
    /// Told the reason when a head is refused (metrics, logs).
    on_refuse: Option<OnRefuse>,
    /// Heads longer than this are refused (the server answers 431).
    max_head: usize,
    /// After a refusal: what is left of the lingering close (see `poll_shutdown`).
    linger: Option<Linger>,
}

/// Reading and dropping what a refused visitor still sends, after our write side is shut, so
/// the answer is not lost to a reset when the socket closes with unread data (a lingering
/// close, as web servers do). Bounded in bytes and time.
struct Linger {
    shut: bool,
    left: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// At most this many bytes and this long are spent on a lingering close.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl<T> FramingGuard<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            state: State::Head,
            pending: Vec::new(),
            ready: Vec::new(),
            refused: None,
            on_refuse: None,
            max_head: MAX_HEAD,
            linger: None,
        }
    }

    /// Follows heads up to `n` bytes (the server's own head limit).
    pub fn max_head(mut self, n: usize) -> Self {
        self.max_head = n;
        self
    }

    /// Calls `f` with the reason when a request is refused.
    pub fn on_refuse(mut self, f: impl FnOnce(&str) + Send + 'static) -> Self {
        self.on_refuse = Some(Box::new(f));
        self
    }

    /// Why a request was refused, if one was.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    fn refuse(&mut self, reason: String) {
        let printable: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        self.ready.extend_from_slice(
            format!(
                "GET / HTTP/1.1\r\nhost: refused.invalid\r\n{REFUSED_HEADER}: {printable}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        if let Some(f) = self.on_refuse.take() {
            f(&reason);
        }
        self.refused = Some(reason);
        self.pending.clear();
    }

    /// Runs the state machine over newly read bytes.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.refused.is_none() {
            match self.state {
                State::Raw => {
                    self.ready.extend_from_slice(data);
                    return;
                }
                State::Head => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    // Empty lines before a request are allowed (RFC 9112 section 2.2).
                    let skip = self
                        .pending
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    if skip > 0 {
                        self.ready.extend(self.pending.drain(..skip));
                    }
                    match parse(&self.pending) {
                        Ok(None) if self.pending.len() <= self.max_head => {}
                        Ok(None) => {
                            let max = self.max_head;
                            self.refuse(format!("{HEAD_TOO_LARGE} {max} bytes"));
                            return;
                        }
                        Ok(Some((_, len))) if len > self.max_head => {
                            let max = self.max_head;
                            self.refuse(format!("{HEAD_TOO_LARGE} {max} bytes"));
                            return;
                        }
                        Err(_) => {
                            // Too large or malformed: the server answers that itself.
                            self.ready.append(&mut self.pending);
                            self.state = State::Raw;
                        }
                        Ok(Some((head, len))) => {
                            let rest = self.pending.split_off(len);
                            match head.framing() {
                                Err(reason) => {
                                    self.refuse(reason);
                                    return;
                                }
                                Ok(framing) => {
                                    self.ready.append(&mut self.pending);
                                    let upgrade = head.method.eq_ignore_ascii_case("CONNECT")
                                        || (head.has_token("connection", "upgrade")
                                            && head.header("upgrade").is_some());
                                    self.state = match framing {
                                        _ if upgrade => State::Raw,
                                        Framing::None => State::Head,
                                        Framing::Length(0) => State::Head,
                                        Framing::Length(n) => State::Body(n),
                                        Framing::Chunked => State::ChunkSize,
                                    };
                                    self.feed(&rest);
                                    return;
                                }
                            }
                        }
                    }
                }
                State::Body(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    self.ready.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.pending.extend_from_slice(data);
                        self.ready.extend_from_slice(data);
                        if self.pending.len() > 4096 {
                            self.state = State::Raw;
                        }
                        return;
                    };
                    self.pending.extend_from_slice(&data[..=nl]);
                    self.ready.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.pending);
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\r', '\n']);
                    if matches!(self.state, State::Trailers) {
                        if line.is_empty() {
                            self.state = State::Head;
                        }
                        continue;
                    }
                    let size = line.split(';').next().unwrap_or("").trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => self.state = State::Trailers,
                        // The data and its CRLF.
                        Ok(n) => self.state = State::ChunkData(n.saturating_add(2)),
                        // A bad chunk line: the server rejects it; stop following.
                        Err(_) => self.state = State::Raw,
                    }
                }
                State::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    self.ready.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkData(left)
                    };
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.ready.is_empty() {
                let n = self.ready.len().min(buf.remaining());
                buf.put_slice(&self.ready[..n]);
                self.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if self.refused.is_some() {
                // End of input: the server finishes what it has and shuts down.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                // EOF: hand over whatever part of a head there was.
                let rest = std::mem::take(&mut self.pending);
                if matches!(self.state, State::Head) && !rest.is_empty() {
                    self.ready = rest;
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let got = got.to_vec();
            self.feed(&got);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refused.is_none() {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        let this = &mut *self;
        let linger = this.linger.get_or_insert_with(|| Linger {
            shut: false,
            left: LINGER_BYTES,
            deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
        });
        if !linger.shut {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            linger.shut = true;
        }
        let mut chunk = [0u8; 8192];
        while linger.left > 0 {
            if linger.deadline.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    linger.left = linger.left.saturating_sub(rb.filled().len());
                }
                // EOF or an error: nothing more will come.
                Poll::Ready(_) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
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
        let (_, refused) = through(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert!(refused.is_some());
        // A body that looks like a bad head is data, not a request.
        let input = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let (out, refused) = through(input).await;
        assert!(refused.is_none());
        assert_eq!(out, input.to_vec());
    }
}
