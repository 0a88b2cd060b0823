//! HTTP forwarding shared by the subdomain frontend and the HTTP/2 transport: one body type,
//! the hop-by-hop header rules, and HTTP/1.1 spoken over any raw tunnel stream.

use crate::io::BoxIo;
use crate::session::OpenError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every request and response tunneld forwards: streamed, never collected.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Boxes any body whose errors convert to [`BoxError`] (hyper's `Incoming`, for one).
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A body that keeps `keep` (a stream permit) alive until the body is dropped.
pub fn holding<T: Send + Sync + Unpin + 'static>(body: Body, keep: T) -> Body {
    Holding {
        inner: body,
        _keep: keep,
    }
    .boxed()
}

struct Holding<T> {
    inner: Body,
    _keep: T,
}

impl<T: Send + Sync + Unpin + 'static> hyper::body::Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose data bytes are added to `counter` as they pass (a frontend's
/// `tunneld_bytes_total` for a request or response body), and to the per-tunnel series of
/// `tunnel` (`inbound`: a request body), which stays active while the body lives.
pub fn counted(
    body: Body,
    counter: prometheus::IntCounter,
    tunnel: Option<std::sync::Arc<crate::tunnel_metrics::TunnelStream>>,
    inbound: bool,
) -> Body {
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            counter.inc_by(d.len() as u64);
            if let Some(t) = &tunnel {
                t.counter(inbound).inc_by(d.len() as u64);
            }
        }
        f
    })
    .boxed()
}

/// Below this size a DATA chunk is worth merging with the next one.
const COALESCE_BELOW: usize = 16 * 1024;
/// Merged chunks stop growing here.
const COALESCE_MAX: usize = 64 * 1024;

/// How long a small chunk may wait for more data to join it.
const COALESCE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// A body that merges small chunks into larger ones, so HTTP/2 peers get fewer, larger DATA
/// frames: h2 closes a connection that receives too many small frames it has not read yet,
/// and HTTP/1.1 chunked bodies arrive one small chunk at a time. A small chunk waits at most
/// [`COALESCE_WAIT`] for company; large chunks pass at once.
pub fn coalesced(body: Body) -> Body {
    Coalesced {
        inner: body,
        buf: bytes::BytesMut::new(),
        after: None,
        done: false,
        timer: None,
    }
    .boxed()
}

struct Coalesced {
    inner: Body,
    /// Data merged so far.
    buf: bytes::BytesMut,
    /// A frame read behind the merged data (trailers, or an error), given out after it.
    after: Option<Result<hyper::body::Frame<Bytes>, BoxError>>,
    /// The inner body ended.
    done: bool,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Coalesced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        while this.buf.len() < COALESCE_MAX && this.after.is_none() && !this.done {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) if this.buf.is_empty() && d.len() >= COALESCE_BELOW => {
                        return Poll::Ready(Some(Ok(hyper::body::Frame::data(d))));
                    }
                    Ok(d) => this.buf.extend_from_slice(&d),
                    Err(trailers) => this.after = Some(Ok(trailers)),
                },
                Poll::Ready(Some(Err(e))) => this.after = Some(Err(e)),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if this.buf.is_empty() {
                        return Poll::Pending;
                    }
                    if this.buf.len() >= COALESCE_BELOW {
                        break;
                    }
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(COALESCE_WAIT)));
                    if std::future::Future::poll(timer.as_mut(), cx).is_pending() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        this.timer = None;
        if !this.buf.is_empty() {
            let data = this.buf.split().freeze();
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        match this.after.take() {
            Some(f) => Poll::Ready(Some(f)),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buf.is_empty() && self.after.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.inner.size_hint();
        let held = self.buf.len() as u64;
        hint.set_lower(hint.lower().saturating_add(held));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header `Connection` names. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` stay (a WebSocket handshake passing through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present, then a removal of each one found, instead of a
    // lookup of every hop-by-hop name: most requests carry none, most responses one or two
    // (`Connection: keep-alive`). `Connection` names others only when it is there.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    for n in present {
        headers.remove(n);
    }
    if keep_upgrade {
        if let Some(u) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
    }
}

/// Joins repeated `Cookie` fields into one, separated by `"; "`. HTTP/2 clients send each
/// cookie as a field of its own (browsers do, for header compression), and a request passed
/// on as HTTP/1.1 must carry them in one (RFC 9113 §8.2.3): services that join repeated
/// fields with commas (WSGI servers do) would read `a=1, b=2` as one cookie. Fields that are
/// not valid together stay as they are.
pub fn join_cookies(headers: &mut HeaderMap) {
    let cookies = headers.get_all(header::COOKIE);
    if cookies.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in cookies.iter().filter(|v| !v.is_empty()) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Makes the request's URI the absolute `https://{host}{path}` an HTTP/2 upstream needs
/// (the path and query kept; `/` when it has none).
pub fn set_absolute_uri(uri: &mut Uri, host: &str) {
    // From parts: the path and query move over as they are, not formatted and parsed again.
    let pq = match uri.path_and_query() {
        None => PathAndQuery::from_static("/"),
        Some(p) if p.as_str().starts_with('/') => p.clone(),
        // `https://host?q`: an empty path is `/`.
        Some(p) if p.as_str().starts_with('?') => {
            match PathAndQuery::try_from(format!("/{}", p.as_str())) {
                Ok(p) => p,
                Err(_) => return,
            }
        }
        // `*` (`OPTIONS *`) has no place after an authority: left as it is (the https
        // frontend refuses any other target that is not a path).
        Some(_) => return,
    };
    let Ok(authority) = host.parse::<Authority>() else {
        return;
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

/// Turns an absolute-form request into the origin form HTTP/1.1 servers expect, with a
/// `Host` header taken from the URI when the request has none.
pub fn to_origin_form<B>(req: &mut Request<B>) {
    if let Some(auth) = req.uri().authority().cloned() {
        if !req.headers().contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// Sends one request as HTTP/1.1 over `io` (a tunnel stream or a local connection) and
/// returns the response with its body streaming. Upgrades stay possible: call
/// `hyper::upgrade::on` on the response after a `101`. A response head over `max_head` bytes
/// is refused ([`OpenError::LocalRefused`], a `502` for that visitor alone).
pub async fn http1_over(
    io: BoxIo,
    mut req: Request<Body>,
    max_head: usize,
) -> Result<Response<Body>, OpenError> {
    to_origin_form(&mut req);
    let mut send = http1_handshake(io, max_head).await?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| send_error(e, max_head))?;
    Ok(resp.map(boxed))
}

/// An HTTP/1.1 client connection on `io` (its driver spawned, upgrades allowed) that
/// accepts response heads up to `max_head` bytes.
pub async fn http1_handshake(
    io: BoxIo,
    max_head: usize,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, OpenError> {
    Ok(http1_handshake_watched(io, max_head).await?.0)
}

/// [`http1_handshake`], also giving the connection's [`ConnWatch`].
pub async fn http1_handshake_watched(
    io: BoxIo,
    max_head: usize,
) -> Result<(hyper::client::conn::http1::SendRequest<Body>, ConnWatch), OpenError> {
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        // hyper refuses a head that fills its read buffer: one byte more than the limit.
        .max_buf_size((max_head + 1).max(8192))
        .handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(|e| OpenError::Session(e.to_string()))?;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            r = conn.with_upgrades() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "forwarded HTTP/1.1 connection ended");
                }
            }
            // Killed: the connection and its io are dropped as they are, with no graceful
            // shutdown to wait for. (A dropped `kill` disables this branch.)
            Ok(()) = killed => {}
        }
        // The connection (and its io) is gone by now.
        drop(ended_tx);
    });
    Ok((send, ConnWatch { ended, kill }))
}

/// The task of an HTTP/1.1 client connection from [`http1_handshake_watched`]: `ended`
/// resolves once the connection and its io are dropped (a stream slot it held is free
/// again); sending on `kill` drops them at once.
pub struct ConnWatch {
    pub ended: tokio::sync::oneshot::Receiver<()>,
    pub kill: tokio::sync::oneshot::Sender<()>,
}

/// What a failed HTTP/1.1 exchange with a local service means for the visitor.
pub fn send_error(e: hyper::Error, max_head: usize) -> OpenError {
    if e.is_parse_too_large() {
        OpenError::LocalRefused(format!(
            "the local service answered with a response head over the limit ({max_head} bytes, 100 fields)"
        ))
    } else if e.is_incomplete_message() || e.is_closed() {
        OpenError::LocalRefused(format!("the local service closed the connection: {e}"))
    } else {
        OpenError::Session(e.to_string())
    }
}

#[cfg(test)]
mod tests;
