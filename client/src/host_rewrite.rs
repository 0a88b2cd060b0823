//! Rewrites the `Host` header of every HTTP/1.x request written to a stream, following
//! keep-alive request boundaries (Content-Length and chunked bodies), as TPoT's client did.
//! tunnelc wraps the connection to a local service in [`HostRewrite`] when a tunnel asks for
//! it, so a service with name-based virtual hosts answers to its own name.
//!
//! Requests with ambiguous framing (the smuggling vectors) cut the stream with an error that
//! names the problem; after a `CONNECT` or an `Upgrade` request the bytes pass unchanged.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::http1::{self, parse, RequestHead, MAX_HEAD};

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many bytes of it are still due.
    ChunkEnd(u8),
    Trailer,
    /// After CONNECT or an upgrade: no more HTTP.
    Raw,
}

/// Why a request stream could not be followed (the connection is cut rather than guess).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("chunk line longer than {MAX_LINE} bytes")]
    LongChunkLine,
    #[error("request head larger than {MAX_HEAD} bytes")]
    LargeHead,
    #[error("{0}")]
    Head(String),
    #[error(transparent)]
    Framing(#[from] http1::FramingError),
    #[error("chunk data not followed by CRLF")]
    NoCrlf,
    #[error("chunk size is not text")]
    ChunkSizeNotText,
    #[error("chunk size `{0}` is not hexadecimal")]
    ChunkSizeNotHex(String),
}

/// Follows request boundaries in a byte stream and rewrites each head's `Host`.
#[derive(Debug)]
pub struct RequestFollower {
    host: String,
    state: State,
    buf: Vec<u8>,
    requests: u64,
}

impl RequestFollower {
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            state: State::Head,
            buf: Vec::new(),
            requests: 0,
        }
    }

    /// Request heads seen so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn rewrite(&self, head: &RequestHead) -> Vec<u8> {
        let mut head = head.clone();
        head.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        head.headers
            .insert(0, ("Host".to_string(), self.host.as_bytes().to_vec()));
        head.encode_without(&[])
    }

    fn after_head(head: &RequestHead) -> Result<State, RewriteError> {
        if head.method.eq_ignore_ascii_case("CONNECT")
            || (head.has_token("connection", "upgrade") && head.values("upgrade").next().is_some())
        {
            return Ok(State::Raw);
        }
        Ok(match head.framing()? {
            http1::Framing::None | http1::Framing::Length(0) => State::Head,
            http1::Framing::Length(n) => State::Body(n),
            http1::Framing::Chunked => State::ChunkSize,
        })
    }

    /// Takes one line (through `\n`) from `input` into `self.buf`; `None` until complete.
    fn line<'a>(&mut self, input: &'a [u8]) -> Result<(Option<Vec<u8>>, &'a [u8]), RewriteError> {
        match input.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.buf.extend_from_slice(&input[..=i]);
                if self.buf.len() > MAX_LINE {
                    return Err(RewriteError::LongChunkLine);
                }
                Ok((Some(std::mem::take(&mut self.buf)), &input[i + 1..]))
            }
            None => {
                self.buf.extend_from_slice(input);
                if self.buf.len() > MAX_LINE {
                    return Err(RewriteError::LongChunkLine);
                }
                Ok((None, &[]))
            }
        }
    }

    /// Appends what to forward for `data` to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut input: Cow<'_, [u8]> = Cow::Borrowed(data);
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Raw => {
                    out.extend_from_slice(rest);
                    pos = input.len();
                }
                State::Head => {
                    self.buf.extend_from_slice(rest);
                    pos = input.len();
                    match parse(&self.buf) {
                        Ok(Some((head, len))) => {
                            let leftover = self.buf.split_off(len);
                            self.buf.clear();
                            self.state = Self::after_head(&head)?;
                            self.requests += 1;
                            out.extend_from_slice(&self.rewrite(&head));
                            input = Cow::Owned(leftover);
                            pos = 0;
                        }
                        Ok(None) if self.buf.len() > MAX_HEAD => {
                            return Err(RewriteError::LargeHead)
                        }
                        Ok(None) => {}
                        Err(e) => return Err(RewriteError::Head(e.to_string())),
                    }
                }
                State::Body(n) => {
                    let take = (rest.len() as u64).min(n) as usize;
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = match n - take as u64 {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::ChunkData(n) => {
                    let take = (rest.len() as u64).min(n) as usize;
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = match n - take as u64 {
                        0 => State::ChunkEnd(2),
                        left => State::ChunkData(left),
                    };
                }
                State::ChunkEnd(due) => {
                    let take = rest.len().min(due as usize);
                    let expect = &b"\r\n"[2 - due as usize..][..take];
                    if &rest[..take] != expect {
                        return Err(RewriteError::NoCrlf);
                    }
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = match due as usize - take {
                        0 => State::ChunkSize,
                        left => State::ChunkEnd(left as u8),
                    };
                }
                State::ChunkSize => {
                    let before = rest.len();
                    let (line, after) = self.line(rest)?;
                    pos += before - after.len();
                    if let Some(line) = line {
                        out.extend_from_slice(&line);
                        let text = std::str::from_utf8(&line)
                            .map_err(|_| RewriteError::ChunkSizeNotText)?;
                        let size = text.split(';').next().unwrap_or("").trim();
                        let n = u64::from_str_radix(size, 16)
                            .map_err(|_| RewriteError::ChunkSizeNotHex(size.to_string()))?;
                        self.state = if n == 0 {
                            State::Trailer
                        } else {
                            State::ChunkData(n)
                        };
                    }
                }
                State::Trailer => {
                    let before = rest.len();
                    let (line, after) = self.line(rest)?;
                    pos += before - after.len();
                    if let Some(line) = line {
                        out.extend_from_slice(&line);
                        if line == b"\r\n" || line == b"\n" {
                            self.state = State::Head;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A stream whose written requests get their `Host` rewritten (reads pass through).
pub struct HostRewrite<T> {
    inner: T,
    follower: RequestFollower,
    pending: Vec<u8>,
    sent: usize,
}

impl<T> HostRewrite<T> {
    pub fn new(inner: T, host: impl Into<String>) -> Self {
        Self {
            inner,
            follower: RequestFollower::new(host),
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> HostRewrite<T> {
    /// Writes out what an earlier `poll_write` produced.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HostRewrite<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HostRewrite<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        ready!(me.drain(cx))?;
        me.follower
            .feed(buf, &mut me.pending)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Start sending at once; what is left goes out on the next call or flush.
        if let Poll::Ready(Err(e)) = me.drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], split: usize) -> Result<String, String> {
        let mut f = RequestFollower::new("local:8080");
        let mut out = Vec::new();
        for chunk in input.chunks(split) {
            f.feed(chunk, &mut out).map_err(|e| e.to_string())?;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn keep_alive_requests_all_rewritten_at_any_split() {
        let input = b"POST /a HTTP/1.1\r\nHost: x.example\r\nContent-Length: 5\r\n\r\nHost:\
GET /b HTTP/1.1\r\nhost: x.example\r\nTransfer-Encoding: chunked\r\n\r\n\
3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHOST: y\r\n\r\n";
        let want = "POST /a HTTP/1.1\r\nHost: local:8080\r\nContent-Length: 5\r\n\r\nHost:\
GET /b HTTP/1.1\r\nHost: local:8080\r\nTransfer-Encoding: chunked\r\n\r\n\
3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: local:8080\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(run(input, split).expect("valid"), want, "split {split}");
        }
    }

    #[test]
    fn upgrade_passes_raw_and_bad_framing_is_refused() {
        let out = run(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nHost: z\r\n\r\n",
            5,
        )
        .expect("valid");
        assert!(out.ends_with("GET / HTTP/1.1\r\nHost: z\r\n\r\n"));
        let err = run(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            100,
        )
        .expect_err("smuggling");
        assert!(err.contains("both Content-Length and Transfer-Encoding"));
        let err = run(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            100,
        )
        .expect_err("bad chunk");
        assert!(err.contains("not hexadecimal"), "{err}");
    }
}
