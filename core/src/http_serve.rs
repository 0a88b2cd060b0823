//! The small HTTP/1.1 servers of tunneld and tunnelc (admin API, provisioning API, plain web
//! port, the dashboard, tunnelc's inspector): one accept loop with a connection cap, a head
//! deadline, optional TLS, and the reply helpers they share.

use crate::tls_listener::{accept_loop, Tasks};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A reply body: whole (`respond`) or streamed (the dashboard's server-sent events).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub type Resp = Response<Body>;

/// Answers one request; gets the peer's address.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> Pin<Box<dyn Future<Output = Resp> + Send>>
        + Send
        + Sync,
>;

/// Limits of one listener.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `listener` in the background until the process ends.
pub fn serve(
    what: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    handler: Handler,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let forever = tokio_util::sync::CancellationToken::new();
        let admit = |_peer| {
            let permit = slots.clone().try_acquire_owned().ok();
            if permit.is_none() {
                tracing::warn!("{what}: too many connections, closing one");
            }
            permit
        };
        let serve = |tcp, peer, permit| {
            let (handler, tls) = (handler.clone(), tls.clone());
            async move {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => serve_io(what, s, peer, limits, handler).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "{what}: TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "{what}: TLS handshake timed out");
                            }
                        }
                    }
                    None => serve_io(what, tcp, peer, limits, handler).await,
                }
                drop(permit);
            }
        };
        accept_loop(&listener, &forever, what, Tasks::Untracked, admit, serve).await;
    });
}

/// Serves HTTP/1.1 on one connection until it ends (keep-alive, a head deadline).
pub async fn serve_io<I>(what: &str, io: I, peer: SocketAddr, limits: Limits, handler: Handler)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "{what}: connection ended with an error");
    }
}

pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, "application/json", format!("{v}\n"))
}

/// `429` for an address over its failed-authentication budget, with `Retry-After`.
pub fn throttled(ip: std::net::IpAddr, wait: std::time::Duration) -> Resp {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        crate::hub::throttled_reason(ip, wait),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    json_resp(status, &json!({ "error": message.to_string() }))
}

/// Reads a request body of at most `max` bytes within `deadline`.
pub async fn read_body(
    req: Request<Incoming>,
    max: usize,
    deadline: Duration,
) -> Result<Bytes, Resp> {
    match tokio::time::timeout(deadline, Limited::new(req.into_body(), max).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes"),
        )),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {}",
                crate::duration::format(deadline)
            ),
        )),
    }
}

/// The bearer token of a request.
pub fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::auth::scheme_param(v, "Bearer"))
}
