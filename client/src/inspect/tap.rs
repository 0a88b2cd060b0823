//! Watches the bytes of one connection to a local service and records each HTTP/1.x request
//! and its response in the inspector's store. The tap only looks: bytes pass unchanged and
//! nothing it sees can fail the connection. What it cannot follow (a malformed head, a
//! framing it does not trust) ends the recording of that connection, with the reason on the
//! exchanges it leaves unfinished.

use super::store::{Body, Response, Store};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::http1::follow::{after_request_head, AfterHead, BodyFollower};
use tunneld_core::http1::{self, Framing, RequestHead, MAX_HEAD, MAX_HEADERS};

enum ReqState {
    Head(Vec<u8>),
    Body {
        id: u64,
        follow: BodyFollower,
        body: Body,
    },
    /// After CONNECT or an upgrade, or once the recording stopped.
    Done,
}

enum RespBody {
    Follow(BodyFollower),
    UntilClose,
}

enum RespState {
    Head(Vec<u8>),
    Body {
        id: u64,
        framing: RespBody,
        response: Response,
    },
    Done,
}

/// The recording state of one connection.
pub struct Recorder {
    store: Arc<Store>,
    tunnel: String,
    local: String,
    proxy_header: Option<Vec<u8>>,
    /// Set on the first exchange only (a replay's connection carries one request).
    replay_of: Option<u64>,
    /// The first exchange recorded.
    first_id: Option<u64>,
    req: ReqState,
    resp: RespState,
    /// Requests waiting for their response, in order: (id, method).
    pending: VecDeque<(u64, String)>,
    /// Responses that ended.
    completed: u64,
}

/// Keeps the first bytes of a body, up to `max_body` and within the store's memory budget
/// for captures in transit (reserved here, given back when the body is stored or dropped).
fn capture(store: &Store, body: &mut Body, bytes: &[u8]) {
    body.wire_len += bytes.len() as u64;
    let mut take = bytes
        .len()
        .min(store.caps().max_body.saturating_sub(body.bytes.len()));
    if take > 0 && (body.truncated || !store.reserve(take)) {
        take = 0;
    }
    body.bytes.extend_from_slice(&bytes[..take]);
    if take < bytes.len() {
        body.truncated = true;
    }
}

/// Appends to a head buffer without passing the head cap.
fn fill_head(buf: &mut Vec<u8>, input: &[u8]) {
    let take = input.len().min(MAX_HEAD.saturating_sub(buf.len()));
    buf.extend_from_slice(&input[..take]);
}

impl Recorder {
    /// `proxy_header`: the PROXY protocol header sent before the first byte tapped.
    pub fn new(
        store: Arc<Store>,
        tunnel: &str,
        local: &str,
        proxy_header: Option<Vec<u8>>,
        replay_of: Option<u64>,
    ) -> Self {
        Self {
            store,
            tunnel: tunnel.to_string(),
            local: local.to_string(),
            proxy_header,
            replay_of,
            first_id: None,
            req: ReqState::Head(Vec::new()),
            resp: RespState::Head(Vec::new()),
            pending: VecDeque::new(),
            completed: 0,
        }
    }

    /// The first exchange recorded on this connection.
    pub fn first_id(&self) -> Option<u64> {
        self.first_id
    }

    /// Responses recorded to their end on this connection.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Stores a request body (whole, or as far as it came) and gives back its reservation.
    fn store_request_body(&self, id: u64, body: Body) {
        let n = body.bytes.len();
        self.store.update(id, |e| e.request_body = body);
        self.store.release(n);
    }

    /// Stops following requests (what came so far stays paired with its responses).
    fn stop_requests(&mut self, why: &str) {
        tracing::debug!(tunnel = %self.tunnel, "inspector stops following requests: {why}");
        if let ReqState::Body { id, body, .. } = std::mem::replace(&mut self.req, ReqState::Done) {
            self.store_request_body(id, body);
        }
    }

    /// Stops recording: every unfinished exchange fails with `why`, with what it captured.
    fn stop(&mut self, why: &str) {
        self.stop_requests(why);
        if let RespState::Body { id, response, .. } =
            std::mem::replace(&mut self.resp, RespState::Done)
        {
            let n = response.body.bytes.len();
            self.store.update(id, |e| e.response = Some(response));
            self.store.release(n);
        }
        for (id, _) in self.pending.drain(..) {
            self.store.fail(id, why);
        }
    }

    /// Bytes written toward the local service.
    pub fn on_write(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match &mut self.req {
                ReqState::Done => return,
                ReqState::Head(buf) => {
                    let old = buf.len();
                    fill_head(buf, input);
                    match http1::parse(buf) {
                        Ok(None) if buf.len() >= MAX_HEAD => {
                            return self
                                .stop_requests(&format!("request head over {MAX_HEAD} bytes"))
                        }
                        // The buffer is not full: it took every byte.
                        Ok(None) => return,
                        Err(e) => return self.stop_requests(&e.to_string()),
                        Ok(Some((head, len))) => {
                            input = &input[len - old..];
                            self.request_head(head);
                        }
                    }
                }
                ReqState::Body { id, follow, body } => match follow.feed(input) {
                    Ok((n, done)) => {
                        capture(&self.store, body, &input[..n]);
                        input = &input[n..];
                        if done {
                            let (id, mut body) = (*id, std::mem::take(body));
                            body.complete = true;
                            self.store_request_body(id, body);
                            self.req = ReqState::Head(Vec::new());
                        }
                    }
                    Err(e) => return self.stop_requests(&format!("request body: {e}")),
                },
            }
        }
    }

    fn request_head(&mut self, head: RequestHead) {
        let after = after_request_head(&head);
        let chunked = matches!(head.framing(), Ok(Framing::Chunked));
        let method = head.method.clone();
        let no_body = matches!(after, Ok(AfterHead::Head | AfterHead::Raw));
        let id = self.store.begin(
            &self.tunnel,
            &self.local,
            self.proxy_header.clone(),
            head,
            self.replay_of.take(),
        );
        if no_body {
            self.store.update(id, |e| e.request_body.complete = true);
        }
        self.first_id.get_or_insert(id);
        self.pending.push_back((id, method));
        self.req = match after {
            Ok(AfterHead::Head) => ReqState::Head(Vec::new()),
            Ok(AfterHead::Body(follow)) => ReqState::Body {
                id,
                follow,
                body: Body {
                    chunked,
                    ..Body::default()
                },
            },
            Ok(AfterHead::Raw) => ReqState::Done,
            Err(e) => return self.stop_requests(&format!("request framing: {e}")),
        };
    }

    /// Bytes read from the local service; empty at its end of stream.
    pub fn on_read(&mut self, mut input: &[u8]) {
        if input.is_empty() {
            return self.on_eof();
        }
        while !input.is_empty() {
            match &mut self.resp {
                RespState::Done => return,
                RespState::Head(buf) => {
                    let old = buf.len();
                    fill_head(buf, input);
                    match parse_response(buf) {
                        Ok(None) if buf.len() >= MAX_HEAD => {
                            return self.stop(&format!("response head over {MAX_HEAD} bytes"))
                        }
                        // The buffer is not full: it took every byte.
                        Ok(None) => return,
                        Err(e) => return self.stop(&format!("malformed response head: {e}")),
                        Ok(Some((response, minor, len))) => {
                            input = &input[len - old..];
                            self.response_head(response, minor);
                        }
                    }
                }
                RespState::Body {
                    framing, response, ..
                } => {
                    let (n, done) = match framing {
                        RespBody::UntilClose => (input.len(), false),
                        RespBody::Follow(f) => match f.feed(input) {
                            Ok(r) => r,
                            Err(e) => return self.stop(&format!("response body: {e}")),
                        },
                    };
                    capture(&self.store, &mut response.body, &input[..n]);
                    input = &input[n..];
                    if done {
                        let ended = std::mem::replace(&mut self.resp, RespState::Head(Vec::new()));
                        if let RespState::Body { id, response, .. } = ended {
                            self.finish(id, response);
                        }
                    }
                }
            }
        }
    }

    /// Stores a response that ended, and gives back its body's reservation.
    fn finish(&mut self, id: u64, mut response: Response) {
        self.pending.pop_front();
        self.completed += 1;
        response.body.complete = true;
        let n = response.body.bytes.len();
        self.store.finish(id, response);
        self.store.release(n);
    }

    fn response_head(&mut self, response: Response, minor: u8) {
        let Some((id, method)) = self.pending.front().cloned() else {
            return self.stop("a response arrived before any request");
        };
        let status = response.status;
        if (100..200).contains(&status) && status != 101 {
            // An interim response (100 Continue): the final one follows.
            self.resp = RespState::Head(Vec::new());
            return;
        }
        let upgraded = status == 101 || (method == "CONNECT" && (200..300).contains(&status));
        let no_body = method == "HEAD" || status == 204 || status == 304;
        if upgraded || no_body {
            self.finish(id, response);
            self.resp = if upgraded {
                self.req = ReqState::Done;
                RespState::Done
            } else {
                RespState::Head(Vec::new())
            };
            return;
        }
        let head = RequestHead {
            method: String::new(),
            target: String::new(),
            minor,
            headers: response.headers.clone(),
        };
        let delimited = head.values("content-length").next().is_some()
            || head.values("transfer-encoding").next().is_some();
        let framing = match head.framing() {
            Err(e) => return self.stop(&format!("response framing: {e}")),
            Ok(_) if !delimited => RespBody::UntilClose,
            Ok(f) => match BodyFollower::new(f) {
                Some(follow) => RespBody::Follow(follow),
                None => {
                    self.finish(id, response);
                    self.resp = RespState::Head(Vec::new());
                    return;
                }
            },
        };
        let mut response = response;
        response.body.chunked = matches!(head.framing(), Ok(Framing::Chunked));
        self.resp = RespState::Body {
            id,
            framing,
            response,
        };
    }

    fn on_eof(&mut self) {
        if let RespState::Body {
            id,
            framing: RespBody::UntilClose,
            response,
        } = std::mem::replace(&mut self.resp, RespState::Done)
        {
            self.finish(id, response);
        }
        self.stop("the local service closed the connection before the response ended");
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let mid_body = matches!(self.req, ReqState::Body { .. })
            || matches!(self.resp, RespState::Body { .. });
        if mid_body || !self.pending.is_empty() {
            self.stop("the connection ended before the response did");
        }
    }
}

/// A response head at the start of `buf`: (response without body, HTTP minor version, head
/// length), or `None` when more bytes are needed.
fn parse_response(buf: &[u8]) -> Result<Option<(Response, u8, usize)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let response = Response {
        status: r.code.unwrap_or(0),
        reason: r.reason.unwrap_or_default().to_string(),
        headers: r
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        body: Body::default(),
    };
    Ok(Some((response, r.version.unwrap_or(1), len)))
}

/// A connection to a local service with a [`Recorder`] on it.
pub struct Tap<T> {
    io: T,
    rec: Recorder,
}

impl<T> Tap<T> {
    pub fn new(io: T, rec: Recorder) -> Self {
        Self { io, rec }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.remaining() > 0 || buf.filled().len() > before {
            this.rec.on_read(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.rec.on_write(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut n = written;
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            this.rec.on_write(&b[..take]);
            n -= take;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
