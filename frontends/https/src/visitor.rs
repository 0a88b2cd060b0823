//! Visitor HTTP on a terminated connection: every request is routed by its own Host /
//! `:authority` (never by the connection), forwarded with `X-Forwarded-*`, and streamed both
//! ways. WebSocket (any `Upgrade`) requests go over a raw tunnel stream, and bytes flow raw
//! only after the local service answered `101`.
//!
//! Layout: this module serves a connection and checks each request; `route` finds where a
//! request goes, `forward` sends it there and relays the answer.

mod forward;
mod route;

use crate::framing_guard::{FramingGuard, HEAD_TOO_LARGE, REFUSED_HEADER};
use crate::frontend::HttpsFrontend;
use crate::pages;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::frontend::FrontendContext;
use tunneld_core::home::{self, HomeExecutor};
use tunneld_core::http2::h2_reason;
use tunneld_core::http_forward::{counted, is_upgrade, Body};
use tunneld_core::idle::{tracked_body, Activity, InFlight};
use tunneld_core::io::BoxIo;
use tunneld_core::session::StreamHeader;
use tunneld_core::stream_budget::StallGuard;

/// How long an idle connection asked to close may take before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

struct Conn {
    fe: Arc<HttpsFrontend>,
    /// The drain's tracker: upgraded connections outlive the HTTP connection.
    visitors: tokio_util::task::TaskTracker,
    peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` says it, made once for all its requests.
    peer_ip: Option<HeaderValue>,
    local: SocketAddr,
    /// The server name of the TLS handshake.
    sni: Option<String>,
    h2: bool,
}

pub(crate) async fn serve(
    fe: Arc<HttpsFrontend>,
    io: BoxIo,
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<String>,
    h2: bool,
    cx: &FrontendContext,
) {
    let shutdown = cx.shutdown.clone();
    let conn = Arc::new(Conn {
        fe: fe.clone(),
        visitors: cx.tasks.clone(),
        peer,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        local,
        sni,
        h2,
    });
    let activity = Activity::new();
    let busy = activity.clone();
    // In progress from the head until the response body ends.
    let svc = service_fn(move |req| respond(conn.clone(), busy.begin(), req));
    let io = stall_guarded(&fe, io);
    // Before its first request a connection has the header timeout (an HTTP/2 connection
    // that never sends its preface included); between requests, the idle timeout.
    let idle = activity.idle(fe.cfg.header_timeout, fe.limits.get().http_idle_timeout);
    let idle_closed = fe
        .metrics
        .visitors_idle_closed_total
        .with_label_values(&[&fe.name]);
    // Drives a connection until it ends; on shutdown or idling, asks it to finish (GOAWAY,
    // or close after the response in progress) and, when idling, gives it a moment only.
    macro_rules! drive {
        ($served:expr) => {{
            let served = $served;
            tokio::pin!(served);
            tokio::pin!(idle);
            tokio::select! {
                r = served.as_mut() => r,
                _ = shutdown.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
                _ = idle.as_mut() => {
                    idle_closed.inc();
                    served.as_mut().graceful_shutdown();
                    match tokio::time::timeout(IDLE_CLOSE_GRACE, served).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            }
        }};
    }
    let max_head = fe.limits.get().max_request_head;
    let result = if h2 {
        let mut tuning = fe.cfg.h2;
        tuning.max_header_list_size = u32::try_from(max_head * 2).unwrap_or(u32::MAX);
        // A visitor's own streams never grow their windows (those are for tunnel links):
        // its windows are all it may make tunneld hold.
        tuning.stream_window_max = 0;
        // Each stream's service runs on this connection's task, not a task of its own: a
        // request then wakes no other task, and no other thread, to be answered. The
        // streams are one visitor's, so they share what the visitor's connection has.
        let (home, mut hearth) = home::home();
        let exec = HomeExecutor { home: Some(home) };
        hearth
            .beside(async {
                drive!(tuning
                    .server_on(exec, Duration::from_secs(20))
                    .serve_connection(TokioIo::new(io), svc))
            })
            .await
    } else {
        let guarded = framing_guarded(&fe, io, max_head, peer);
        drive!(hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(fe.cfg.header_timeout)
            // A head that fills the buffer is answered 431: one byte more than the limit.
            .max_buf_size((max_head + 1).max(8192))
            // The framing guard ends input after a refused request; its 400 must still go out.
            .half_close(true)
            .serve_connection(TokioIo::new(guarded), svc)
            .with_upgrades())
    };
    if let Err(e) = result {
        ended_with_error(&fe, peer, &e);
    }
}

/// Serves one request of a connection, `work` in progress until its response body ends;
/// closes the connection after a request the framing guard stopped following at.
fn respond(
    c: Arc<Conn>,
    work: InFlight,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    // The framing guard stops following HTTP/1.1 after CONNECT or an upgrade request;
    // unless the connection really switches, it must close after the answer, so nothing
    // the visitor sent after such a request is ever read as a request. The test is
    // broader than the guard's (any Upgrade header at all).
    let unfollowed = !c.h2
        && (req.method() == http::Method::CONNECT || req.headers().contains_key(header::UPGRADE));
    async move {
        let mut r = c.handle(req).await;
        if unfollowed && r.status() != StatusCode::SWITCHING_PROTOCOLS {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok::<_, Infallible>(r.map(|b| tracked_body(b, work)))
    }
}

/// The visitor's connection under the stall guard: a visitor that stops reading frees its
/// connection (and the streams behind it) after the stall timeout instead of pinning them.
fn stall_guarded(fe: &HttpsFrontend, io: BoxIo) -> StallGuard<BoxIo> {
    StallGuard::new(
        io,
        fe.limits.get().stream_stall_timeout,
        Some(
            fe.metrics
                .streams_stalled_total
                .with_label_values(&[&fe.name]),
        ),
    )
}

/// An HTTP/1.1 connection under the framing guard, following heads up to `max_head`; each
/// refusal is counted and logged.
fn framing_guarded(
    fe: &Arc<HttpsFrontend>,
    io: StallGuard<BoxIo>,
    max_head: usize,
    peer: SocketAddr,
) -> FramingGuard<StallGuard<BoxIo>> {
    let fe2 = fe.clone();
    FramingGuard::new(io)
        .max_head(max_head)
        .on_refuse(move |reason| {
            fe2.count(if reason.starts_with(HEAD_TOO_LARGE) {
                "head_too_large"
            } else {
                "bad_request"
            });
            tracing::debug!(frontend = %fe2.name, %peer, "request refused: {reason}");
        })
}

/// Logs a visitor connection that ended with an error; counts HTTP/2 protocol errors.
fn ended_with_error(fe: &HttpsFrontend, peer: SocketAddr, e: &hyper::Error) {
    tracing::debug!(frontend = %fe.name, %peer, error = %e, "visitor connection ended with an error");
    if let Some(reason) = h2_reason(e) {
        fe.metrics
            .protocol_errors_total
            .with_label_values(&[&fe.name, &format!("h2_{reason}")])
            .inc();
    }
}

/// The size a request's head would have in HTTP/1.1: request line and header lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}

/// The host a request names, without port, lower-cased; and the raw `host[:port]`.
pub fn host_of<B>(req: &Request<B>) -> Option<(String, String)> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })?;
    let host = match raw.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw.as_str(),
    };
    Some((host.trim_end_matches('.').to_ascii_lowercase(), raw.clone()))
}

/// The answer to the framing guard's stand-in for a request it refused, if `req` is one:
/// `431` for a head over the limit, else `400`; the connection closes after it.
fn refused_answer(req: &Request<Incoming>) -> Option<Response<Body>> {
    let reason = req.headers().get(REFUSED_HEADER)?;
    let reason = reason.to_str().unwrap_or("ambiguous framing");
    let mut r = if reason.starts_with(HEAD_TOO_LARGE) {
        pages::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("Request Header Fields Too Large: {reason}"),
        )
    } else {
        pages::text(StatusCode::BAD_REQUEST, &format!("Bad Request: {reason}"))
    };
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// Whether a request's target is what a service may be sent: a path (`/...`, or a query
/// alone, which is the path `/`), `*` for `OPTIONS` only (RFC 9112 3.2.4: `GET *` would
/// otherwise reach the service as its request target), or none (`CONNECT`'s authority).
/// The `http` crate refuses any other start of a path before a request gets here.
fn target_is_path<B>(req: &Request<B>) -> bool {
    match req.uri().path_and_query().map(|p| p.as_str()) {
        None => true,
        Some(p) => {
            p.is_empty()
                || p.starts_with('/')
                || p.starts_with('?')
                || (p == "*" && req.method() == http::Method::OPTIONS)
        }
    }
}

impl Conn {
    /// One visitor request: checked, routed, forwarded, and the answer relayed.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if let Some(r) = refused_answer(&req) {
            return r;
        }
        if !target_is_path(&req) {
            self.fe.count("bad_request");
            return pages::text(
                StatusCode::BAD_REQUEST,
                "Bad Request: the request target is not a path.",
            );
        }
        let (host, raw_host) = match self.checked_host(&req) {
            Ok(h) => h,
            Err(resp) => return *resp,
        };
        let route = match self.route(&host) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        let upgrade = !self.h2 && is_upgrade(&req);
        let mut req = req;
        let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let req = self.forwarded(req, &raw_host, upgrade);
        // Each forwarded request is one stream of the frontend: counted, timed to the
        // service's answer, and its body bytes counted both ways (upgrades count their
        // spliced bytes when they splice).
        let series = &self.fe.per_request;
        series.opened.inc();
        let tunnel = self.fe.metrics.tunnel_stream(&self.fe.name, &host);
        let started = std::time::Instant::now();
        let bytes_in = series.bytes_in.clone();
        let req = req.map(|b| counted(b, bytes_in, tunnel.clone(), true));
        let resp = match self.forward(&host, &route, req, upgrade).await {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        series.open_seconds.observe(started.elapsed().as_secs_f64());
        let out = series.bytes_out.clone();
        let resp = resp.map(|b| counted(b, out, tunnel.clone(), false));
        self.answer(resp, upgrade, visitor_upgrade, tunnel)
    }

    /// The host a request names (lower-cased, and raw) once its head passed the checks: not
    /// over the head limit (HTTP/2), exactly one Host.
    fn checked_host(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(String, String), Box<Response<Body>>> {
        let fe = &self.fe;
        // HTTP/2 heads: h2 itself refuses lists over twice the limit (with REFUSED_STREAM,
        // which clients retry); between the limit and that, a plain 431 here.
        let max = fe.limits.get().max_request_head;
        if self.h2 && head_size(req) > max {
            fe.count("head_too_large");
            return Err(Box::new(pages::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("Request Header Fields Too Large: {HEAD_TOO_LARGE} {max} bytes"),
            )));
        }
        let Some((host, raw_host)) = host_of(req) else {
            fe.count("bad_request");
            return Err(Box::new(pages::text(
                StatusCode::BAD_REQUEST,
                "The request has no Host.",
            )));
        };
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            fe.count("bad_request");
            return Err(Box::new(pages::text(
                StatusCode::BAD_REQUEST,
                "The request has more than one Host.",
            )));
        }
        Ok((host, raw_host))
    }

    /// The stream header of a request from this connection to `tunnel`.
    fn stream_header(
        &self,
        tunnel: &str,
        proxy_protocol: Option<tunneld_core::proxy_protocol::Version>,
    ) -> StreamHeader {
        StreamHeader {
            tunnel: tunnel.to_string(),
            target: None,
            visitor: self.peer,
            public: self.local,
            proxy_protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: http::Uri) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = method.parse().unwrap_or_default();
        *r.uri_mut() = uri;
        r
    }

    #[test]
    fn only_paths_go_to_services() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap_or_default();
        for (method, target, ok) in [
            ("GET", uri("/a?b"), true),
            ("GET", uri("https://app.localhost"), true),
            ("GET", uri("https://app.localhost?q"), true),
            ("CONNECT", uri("app.localhost:443"), true),
            ("OPTIONS", uri("*"), true),
            ("GET", uri("*"), false),
            ("DELETE", uri("*"), false),
        ] {
            let shown = target.to_string();
            assert_eq!(
                target_is_path(&request(method, target)),
                ok,
                "{method} {shown}"
            );
        }
    }
}
