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
use tunneld_core::http1::follow::{after_request_head, AfterHead, BodyError, BodyFollower};
use tunneld_core::http1::{self, parse, RequestHead, MAX_HEAD};

#[derive(Debug)]
enum State {
    Head,
    /// A body, followed by core's framing follower.
    Body(BodyFollower),
    /// After CONNECT or an upgrade: no more HTTP.
    Raw,
}

/// Why a request stream could not be followed (the connection is cut rather than guess).
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    LargeHead,
    #[error(transparent)]
    Head(#[from] http1::HeadError),
    #[error(transparent)]
    Framing(#[from] http1::FramingError),
    #[error(transparent)]
    Body(#[from] BodyError),
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

    /// Appends what to forward for `data` to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut input: Cow<'_, [u8]> = Cow::Borrowed(data);
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match &mut self.state {
                State::Raw => {
                    out.extend_from_slice(rest);
                    pos = input.len();
                }
                State::Body(body) => {
                    let (n, done) = body.feed(rest)?;
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    if done {
                        self.state = State::Head;
                    }
                }
                State::Head => {
                    self.buf.extend_from_slice(rest);
                    pos = input.len();
                    match parse(&self.buf)? {
                        Some((head, len)) => {
                            let leftover = self.buf.split_off(len);
                            self.buf.clear();
                            self.state = match after_request_head(&head)? {
                                AfterHead::Head => State::Head,
                                AfterHead::Body(body) => State::Body(body),
                                AfterHead::Raw => State::Raw,
                            };
                            self.requests += 1;
                            out.extend_from_slice(&self.rewrite(&head));
                            input = Cow::Owned(leftover);
                            pos = 0;
                        }
                        None if self.buf.len() > MAX_HEAD => return Err(RewriteError::LargeHead),
                        None => {}
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
