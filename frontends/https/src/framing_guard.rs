//! A reader that sits under an HTTP/1.1 server and refuses ambiguous message framing before
//! the server sees it. HTTP libraries quietly resolve `Content-Length` plus
//! `Transfer-Encoding`, or repeated `Content-Length`; a proxy in front of other servers must
//! reject them (request smuggling). The guard follows message boundaries (lengths and
//! chunks) so it checks every request of a keep-alive connection, holds each head back until
//! it is whole and checked. A bad head is replaced by a stand-in request carrying
//! [`REFUSED_HEADER`] and `Connection: close`, after which input ends: the server answers the
//! stand-in with `400` in order (after any earlier pipelined responses) and closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::http1::follow::{after_request_head, AfterHead, BodyFollower};
use tunneld_core::http1::{parse, MAX_HEAD};

/// Header of the stand-in request that replaces a refused one; its value is the reason. A
/// visitor who sends it only earns a `400` for itself.
pub const REFUSED_HEADER: &str = "x-tunneld-refused";

/// How the reason of a refusal for a head over the limit starts (the server answers it with
/// `431`, not `400`).
pub const HEAD_TOO_LARGE: &str = "request head larger than";

enum State {
    /// Collecting a request head.
    Head,
    /// Inside a body (length, or chunks and trailers).
    Body(BodyFollower),
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
        let printable = tunneld_core::http1::printable(&reason);
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

    /// Ends input without a stand-in: for a problem inside a body, where the server is
    /// reading body bytes and sees a truncated message (it answers `400` and closes).
    fn end_input(&mut self, reason: String) {
        if let Some(f) = self.on_refuse.take() {
            f(&reason);
        }
        self.refused = Some(reason);
        self.pending.clear();
    }

    /// Parses the complete head at the start of `buf`: queues it for the server and moves
    /// to its body; its length, or `None` when it was refused.
    fn take_head(&mut self, buf: &[u8]) -> Option<usize> {
        match parse(buf) {
            Ok(Some((_, len))) if len > self.max_head => {
                let max = self.max_head;
                self.refuse(format!("{HEAD_TOO_LARGE} {max} bytes"));
                None
            }
            Ok(Some((head, len))) => match after_request_head(&head) {
                Err(reason) => {
                    self.refuse(reason.to_string());
                    None
                }
                Ok(next) => {
                    self.ready.extend_from_slice(&buf[..len]);
                    // The server answers an upgrade it refuses with `Connection: close` (the
                    // https frontend does), so what follows an upgrade is never read as HTTP.
                    self.state = match next {
                        AfterHead::Head => State::Head,
                        AfterHead::Body(body) => State::Body(body),
                        AfterHead::Raw => State::Raw,
                    };
                    Some(len)
                }
            },
            // A terminator was seen but the head is not whole: keep collecting.
            Ok(None) => Some(0),
            // Anything the guard cannot follow is refused: it never stops checking.
            Err(e) => {
                self.refuse(format!("malformed request head: {e}"));
                None
            }
        }
    }

    /// Runs the state machine over newly read bytes. Linear: every byte is copied at most
    /// twice (into `pending` while a head or line is incomplete, then out of it once), and a
    /// head collected in `pending` is parsed again only when a read may have completed it.
    fn feed(&mut self, mut buf: Vec<u8>) {
        let mut pos = 0;
        while pos < buf.len() && self.refused.is_none() {
            let step = match self.state {
                State::Raw => {
                    self.ready.extend_from_slice(&buf[pos..]);
                    return;
                }
                State::Head => self.feed_head(&buf, pos),
                State::Body(ref mut body) => match body.feed(&buf[pos..]) {
                    Ok((n, done)) => {
                        self.ready.extend_from_slice(&buf[pos..pos + n]);
                        if done {
                            self.state = State::Head;
                        }
                        Step::At(pos + n)
                    }
                    Err(e) => {
                        self.end_input(e.to_string());
                        Step::Stop
                    }
                },
            };
            match step {
                Step::Stop => return,
                Step::At(at) => pos = at,
                Step::Collected(head, len) => {
                    buf = head;
                    pos = len;
                }
            }
        }
    }

    /// Follows a request head at `pos`: passes blank lines before it, takes it when whole,
    /// or collects it in `pending` (refused once longer than the head limit).
    fn feed_head(&mut self, buf: &[u8], mut pos: usize) -> Step {
        if self.pending.is_empty() {
            // Empty lines before a request are allowed (RFC 9112 section 2.2).
            let skip = buf[pos..]
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.ready.extend_from_slice(&buf[pos..pos + skip]);
            pos += skip;
            if pos == buf.len() {
                return Step::Stop;
            }
            // Parsing stops at the end of the first head, so this costs the
            // head, not the rest of the buffer.
            match self.take_head(&buf[pos..]) {
                None => return Step::Stop,
                Some(0) => {}
                Some(len) => return Step::At(pos + len),
            }
            self.pending.extend_from_slice(&buf[pos..]);
        } else {
            let seen = self.pending.len();
            self.pending.extend_from_slice(&buf[pos..]);
            // Only the new bytes (and the three before them) can end the head.
            if has_blank_line(&self.pending[seen.saturating_sub(3)..]) {
                let head = std::mem::take(&mut self.pending);
                match self.take_head(&head) {
                    None => return Step::Stop,
                    Some(0) => self.pending = head,
                    Some(len) => return Step::Collected(head, len),
                }
            }
        }
        if self.pending.len() > self.max_head {
            let max = self.max_head;
            self.refuse(format!("{HEAD_TOO_LARGE} {max} bytes"));
        }
        Step::Stop
    }
}

/// What `feed` does after one step of the state machine.
enum Step {
    /// Nothing more to follow in this read (or input ended).
    Stop,
    /// Go on at this position of the buffer.
    At(usize),
    /// A head collected over several reads was taken: go on in it, after its first `usize`
    /// bytes (the rest of the last read).
    Collected(Vec<u8>, usize),
}

/// Whether `b` holds the blank line that ends a head (`\n\r\n` or `\n\n`).
fn has_blank_line(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
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
            // Uninitialised: TLS streams copy into it, so no 16 KiB memset per read.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut rb = ReadBuf::uninit(&mut chunk);
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
            self.feed(got);
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
mod tests;
