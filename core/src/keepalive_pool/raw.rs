//! Requests without a body on kept connections, spoken by the request's own task: its head
//! is written as bytes, the response head read and parsed by the same task, and the body
//! read as the visitor's side polls it; the connection goes back to the pool once the body
//! ended. No client connection task, no channel to it and back, no wake-up of another task
//! per request (hyper's HTTP/1.1 client keeps a task per connection, which a request
//! reaches through a channel). Requests with a body, upgrades and `CONNECT` stay with
//! hyper's client ([`super::LocalPool`] hands the connection over).
//!
//! Responses are read by RFC 9112's rules (section 6.3): no body after `HEAD`, `1xx`, `204`
//! and `304`; chunked when `Transfer-Encoding` ends in chunked (its trailers passed on);
//! `Content-Length` (equal repeated values allowed, any other disagreement refused); else
//! until the connection closes. A connection is kept only when its response said nothing
//! against it (`Connection: close`, HTTP/1.0 without keep-alive, a body read until close,
//! both framings at once, a connection-bound login, bytes after the body).

use super::response_head::{framing, has_token, parse_head, too_large};
use super::{connection_auth, Conn, LocalPool};
use crate::http1::follow::{BodyError, BodyFollower};
use crate::http_forward::{Body, BoxError};
use crate::io::BoxIo;
use crate::session::OpenError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Frame;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// What a read asks room for while a response head is awaited.
const HEAD_READ: usize = 4096;
/// What a read asks room for while a body of unknown length is read.
const BODY_READ: usize = 16 * 1024;
/// The most a read asks room for while a body of known length is read.
const BODY_READ_MAX: usize = 64 * 1024;

/// A kept connection spoken to directly: the stream and the bytes read from it and not yet
/// used (empty whenever the connection is idle).
pub(super) struct RawConn {
    io: BoxIo,
    buf: BytesMut,
}

impl RawConn {
    pub(super) fn new(io: BoxIo) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the other end neither closed it nor
    /// sent anything unasked. Polled once, with a waker that wakes nobody (whoever reads
    /// next registers its own), outside tokio's per-task budget (a task that spent it would
    /// see every connection as alive).
    pub(super) fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut byte);
        let io = &mut self.io;
        let read = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut rb));
        let mut once = std::pin::pin!(tokio::task::unconstrained(read));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        std::future::Future::poll(once.as_mut(), &mut cx).is_pending()
    }

    /// The stream, for hyper's client (a request with a body).
    pub(super) fn into_io(self) -> BoxIo {
        self.io
    }
}

/// Why an exchange failed.
pub(super) enum Failed {
    /// No byte of an answer came: the connection closed or failed first (a request that
    /// is safe to repeat goes on another).
    Unanswered(String),
    /// The answer was unusable, or ended early.
    Refused(OpenError),
}

impl Failed {
    pub(super) fn into_open_error(self) -> OpenError {
        match self {
            Failed::Unanswered(why) => {
                OpenError::LocalRefused(format!("the local service closed the connection: {why}"))
            }
            Failed::Refused(e) => e,
        }
    }
}

/// Whether a request goes as raw bytes: no body (so nothing is sent beside the head, and
/// the task that wrote it can read the answer), no framing header of its own, and not a
/// tunnel or an upgrade (hyper's client hands those over as connections).
pub(super) fn eligible(req: &Request<Body>) -> bool {
    hyper::body::Body::is_end_stream(req.body())
        && *req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// A request ready to go as bytes.
pub(super) struct Prepared {
    /// Its head as HTTP/1.1.
    head: Vec<u8>,
    method: Method,
    /// It says `Connection: close`.
    closes: bool,
}

/// The request (in origin form, with its `Host`) ready to go as bytes.
pub(super) fn prepare(req: &Request<Body>) -> Prepared {
    Prepared {
        head: encode_head(req),
        method: req.method().clone(),
        closes: has_token(req.headers(), &header::CONNECTION, "close"),
    }
}

/// The request head as HTTP/1.1 bytes, its fields as they are (hyper's client adds none to
/// a request without a body either).
fn encode_head(req: &Request<Body>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends the request `req` (without a body) on `conn` and answers the response, its body
/// read from `conn` as it is polled. `back`: the pool and key the connection returns to
/// once the body ended, when nothing said otherwise.
pub(super) async fn send(
    mut conn: RawConn,
    req: &Prepared,
    max_head: usize,
    back: Option<(Arc<LocalPool>, String)>,
) -> Result<Response<Body>, Failed> {
    let unanswered = |e: std::io::Error| Failed::Unanswered(e.to_string());
    // As hyper's client: a head fills a buffer of at least 8 KiB before it is refused.
    let max_head = max_head.max(8191);
    conn.io.write_all(&req.head).await.map_err(unanswered)?;
    conn.io.flush().await.map_err(unanswered)?;
    let mut informational = false;
    let (mut parts, len) = loop {
        if let Some(parsed) = parse_head(&conn.buf, max_head).map_err(Failed::Refused)? {
            // Informational answers (`103 Early Hints`, a stray `100`) come before the one
            // that counts, and are not passed on.
            if parsed.0.status.is_informational()
                && parsed.0.status != StatusCode::SWITCHING_PROTOCOLS
            {
                conn.buf.advance(parsed.1);
                informational = true;
                continue;
            }
            break parsed;
        }
        if conn.buf.len() > max_head {
            return Err(Failed::Refused(too_large(max_head)));
        }
        conn.buf.reserve(HEAD_READ);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if conn.buf.is_empty() && !informational => {
                return Err(Failed::Unanswered("closed before any answer".into()))
            }
            Ok(0) => {
                return Err(Failed::Refused(OpenError::LocalRefused(
                    "the local service closed the connection before its response head ended".into(),
                )))
            }
            Ok(_) => {}
            Err(e) if conn.buf.is_empty() && !informational => return Err(unanswered(e)),
            Err(e) => return Err(Failed::Refused(OpenError::Session(e.to_string()))),
        }
    };
    conn.buf.advance(len);
    let (kind, mut keep) = framing(&req.method, &mut parts).map_err(Failed::Refused)?;
    keep &= !req.closes && parts.status != StatusCode::SWITCHING_PROTOCOLS;
    let mut resp = Response::new(crate::http_forward::empty());
    *resp.status_mut() = parts.status;
    *resp.version_mut() = parts.version;
    *resp.headers_mut() = parts.headers;
    if let Some(reason) = parts.reason {
        resp.extensions_mut().insert(reason);
    }
    keep &= !connection_auth(&resp);
    let back = back.filter(|_| keep);
    let Some(follower) = kind else {
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            give_back(conn, back);
        }
        return Ok(resp);
    };
    let body = RawBody {
        conn: Mutex::new(Some(conn)),
        follower,
        back,
        trailers: None,
    };
    Ok(resp.map(|_| crate::http_forward::boxed(body)))
}

/// Returns an idle connection to its pool (when it has one).
fn give_back(mut conn: RawConn, back: Option<(Arc<LocalPool>, String)>) {
    let Some((pool, key)) = back else { return };
    if !conn.buf.is_empty() {
        // Bytes after the body: the service is not speaking HTTP/1.1 as framed.
        return;
    }
    // An idle connection holds no read buffer.
    conn.buf = BytesMut::new();
    pool.put(key, Conn::Raw(conn));
}

/// A response body read from its connection as it is polled.
struct RawBody {
    /// The connection, until the body ended. The lock makes the body `Sync`, as a forwarded
    /// body must be; polls reach it through `&mut`, without locking.
    conn: Mutex<Option<RawConn>>,
    follower: BodyFollower,
    back: Option<(Arc<LocalPool>, String)>,
    /// Trailers read after the last chunk, given out after the data.
    trailers: Option<HeaderMap>,
}

impl RawBody {
    /// The body ended at the end of the bytes used: the connection goes back.
    fn finish(&mut self) -> Result<(), BoxError> {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let lines = self.follower.take_trailers();
        if !lines.is_empty() {
            self.trailers = Some(trailer_fields(&lines)?);
        }
        if let Some(conn) = conn {
            give_back(conn, self.back.take());
        }
        Ok(())
    }
}

/// Trailer lines (`name: value`) as fields.
fn trailer_fields(lines: &[Vec<u8>]) -> Result<HeaderMap, BoxError> {
    let mut map = HeaderMap::new();
    for line in lines {
        let bad = || -> BoxError {
            format!(
                "a malformed trailer field `{}` from the local service",
                crate::http1::printable(&String::from_utf8_lossy(line))
            )
            .into()
        };
        let colon = line.iter().position(|b| *b == b':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let slot = this.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
            let Some(conn) = slot.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            if !conn.buf.is_empty() {
                let d = match this.follower.decode(&conn.buf) {
                    Ok(d) => d,
                    Err(e) => {
                        *slot = None;
                        return Poll::Ready(Some(Err(body_error(e))));
                    }
                };
                let data = match d.data {
                    Some(r) => {
                        conn.buf.advance(r.start);
                        let data = conn.buf.split_to(r.len()).freeze();
                        conn.buf.advance(d.used - r.end);
                        Some(data)
                    }
                    None => {
                        conn.buf.advance(d.used);
                        None
                    }
                };
                if d.ended {
                    if let Err(e) = this.finish() {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                match data {
                    Some(data) if !data.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    _ => continue,
                }
            }
            let want = match this.follower.remaining() {
                Some(n) => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .clamp(1, BODY_READ_MAX),
                None => BODY_READ,
            };
            conn.buf.reserve(want);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.follower.is_until_close() => {
                    *slot = None;
                }
                Poll::Ready(Ok(0)) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(
                        "the local service closed the connection before the response body ended"
                            .into(),
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    *slot = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let open = self
            .conn
            .lock()
            .map(|c| c.is_some())
            .unwrap_or_else(|p| p.into_inner().is_some());
        !open && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.is_end_stream() {
            return hyper::body::SizeHint::with_exact(0);
        }
        match self.follower.remaining() {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

fn body_error(e: BodyError) -> BoxError {
    format!("the local service's response body: {e}").into()
}
