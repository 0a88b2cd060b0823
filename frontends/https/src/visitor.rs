//! Visitor HTTP on a terminated connection: every request is routed by its own Host /
//! `:authority` (never by the connection), forwarded with `X-Forwarded-*`, and streamed both
//! ways. WebSocket (any `Upgrade`) requests go over a raw tunnel stream, and bytes flow raw
//! only after the local service answered `101`.

use crate::framing_guard::{FramingGuard, HEAD_TOO_LARGE, REFUSED_HEADER};
use crate::frontend::HttpsFrontend;
use crate::names::Lookup;
use crate::pages;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::frontend::FrontendContext;
use tunneld_core::h2link::h2_reason;
use tunneld_core::http_forward::{
    boxed, coalesced, http1_over, is_upgrade, strip_hop_by_hop, Body,
};
use tunneld_core::hub::Target;
use tunneld_core::idle::splice_until_idle;
use tunneld_core::idle::{tracked_body, Activity};
use tunneld_core::io::BoxIo;
use tunneld_core::proto::TunnelKind;
use tunneld_core::session::{OpenError, StreamHeader};
use tunneld_core::splice::SpliceCounters;

/// How long an idle connection asked to close may take before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

struct Conn {
    fe: Arc<HttpsFrontend>,
    /// The drain's tracker: upgraded connections outlive the HTTP connection.
    visitors: tokio_util::task::TaskTracker,
    peer: SocketAddr,
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
        local,
        sni,
        h2,
    });
    let activity = Activity::new();
    let busy = activity.clone();
    let svc = service_fn(move |req| {
        let c = conn.clone();
        // In progress from the head until the response body ends.
        let work = busy.begin();
        // The framing guard stops following HTTP/1.1 after CONNECT or an upgrade request;
        // unless the connection really switches, it must close after the answer, so nothing
        // the visitor sent after such a request is ever read as a request. The test is
        // broader than the guard's (any Upgrade header at all).
        let unfollowed = !c.h2
            && (req.method() == http::Method::CONNECT
                || req.headers().contains_key(header::UPGRADE));
        async move {
            let mut r = c.handle(req).await;
            if unfollowed && r.status() != StatusCode::SWITCHING_PROTOCOLS {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(r.map(|b| tracked_body(b, work)))
        }
    });
    // A visitor that stops reading frees its connection (and the streams behind it) after
    // the stall timeout instead of pinning them.
    let io = tunneld_core::stream_budget::StallGuard::new(
        io,
        fe.limits.stream_stall_timeout,
        Some(
            fe.metrics
                .streams_stalled_total
                .with_label_values(&[&fe.name]),
        ),
    );
    // Before its first request a connection has the header timeout (an HTTP/2 connection
    // that never sends its preface included); between requests, the idle timeout.
    let idle = activity.idle(fe.cfg.header_timeout, fe.limits.http_idle_timeout);
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
    let max_head = fe.limits.max_request_head;
    let result = if h2 {
        let mut tuning = fe.cfg.h2;
        tuning.max_header_list_size = u32::try_from(max_head * 2).unwrap_or(u32::MAX);
        drive!(tuning
            .server(Duration::from_secs(20))
            .serve_connection(TokioIo::new(io), svc))
    } else {
        let fe2 = fe.clone();
        let guarded = FramingGuard::new(io)
            .max_head(max_head)
            .on_refuse(move |reason| {
                fe2.count(if reason.starts_with(HEAD_TOO_LARGE) {
                    "head_too_large"
                } else {
                    "bad_request"
                });
                tracing::debug!(frontend = %fe2.name, %peer, "request refused: {reason}");
            });
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
        tracing::debug!(frontend = %fe.name, %peer, error = %e, "visitor connection ended with an error");
        if let Some(reason) = h2_reason(&e) {
            fe.metrics
                .protocol_errors_total
                .with_label_values(&[&fe.name, &format!("h2_{reason}")])
                .inc();
        }
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

enum Route {
    Tunnel {
        tunnel: String,
        target: Arc<dyn Target>,
        proxy_protocol: Option<tunneld_core::proxy_protocol::Version>,
    },
    Upstream2ptth,
}

impl Conn {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let fe = &self.fe;
        if let Some(reason) = req.headers().get(REFUSED_HEADER) {
            // The framing guard's stand-in for a request it refused.
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
            return r;
        }
        // HTTP/2 heads: h2 itself refuses lists over twice the limit (with REFUSED_STREAM,
        // which clients retry); between the limit and that, a plain 431 here.
        let max = fe.limits.max_request_head;
        if self.h2 && head_size(&req) > max {
            fe.count("head_too_large");
            return pages::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("Request Header Fields Too Large: {HEAD_TOO_LARGE} {max} bytes"),
            );
        }
        let Some((host, raw_host)) = host_of(&req) else {
            fe.count("bad_request");
            return pages::text(StatusCode::BAD_REQUEST, "The request has no Host.");
        };
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            fe.count("bad_request");
            return pages::text(
                StatusCode::BAD_REQUEST,
                "The request has more than one Host.",
            );
        }
        let route = match self.route(&host) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        let header = |tunnel: &str, pp| StreamHeader {
            tunnel: tunnel.to_string(),
            target: None,
            visitor: self.peer,
            public: self.local,
            proxy_protocol: pp,
        };
        let upgrade = !self.h2 && is_upgrade(&req);
        let mut req = req;
        let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let req = self.forwarded(req, &raw_host, upgrade);
        let timeout = fe.cfg.open_timeout;
        let result = match &route {
            Route::Upstream2ptth => {
                let up = fe
                    .upstream_2ptth
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                match up {
                    // As the original 2ptth answered.
                    None => {
                        fe.count("offline");
                        return pages::text(
                            StatusCode::BAD_GATEWAY,
                            "There is no upstream available",
                        );
                    }
                    Some(o) => {
                        with_timeout(
                            timeout,
                            tunneld_core::session::OpenStream::request(
                                &*o,
                                header("2ptth", None),
                                req,
                            ),
                        )
                        .await
                    }
                }
            }
            Route::Tunnel {
                tunnel,
                target,
                proxy_protocol,
            } => {
                let h = header(tunnel, *proxy_protocol);
                if upgrade {
                    match with_timeout(timeout, target.open(h, None)).await {
                        Ok(io) => {
                            let max = fe.limits.max_response_head;
                            with_timeout(timeout, http1_over(io, req, max)).await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    with_timeout(timeout, target.request(h, req)).await
                }
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => return self.failed(&host, e),
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        match (switching, visitor_upgrade) {
            (true, Some(visitor_up)) => {
                let backend_up = hyper::upgrade::on(&mut resp);
                let fe2 = fe.clone();
                self.visitors.spawn(async move {
                    let (Ok(v), Ok(b)) = tokio::join!(visitor_up, backend_up) else {
                        return;
                    };
                    let m = &fe2.metrics;
                    let counters = SpliceCounters {
                        a_to_b: Some(m.bytes_total.with_label_values(&[&fe2.name, "in"])),
                        b_to_a: Some(m.bytes_total.with_label_values(&[&fe2.name, "out"])),
                    };
                    let active = m.streams_active.with_label_values(&[&fe2.name]);
                    active.inc();
                    let (mut v, mut b) = (TokioIo::new(v), TokioIo::new(b));
                    let idled = m.visitors_idle_closed_total.with_label_values(&[&fe2.name]);
                    let idle = fe2.limits.idle_timeout;
                    let _ = splice_until_idle(&mut v, &mut b, counters, idle, &idled).await;
                    active.dec();
                });
                fe.count("upgraded");
            }
            (true, None) => {
                // A 101 the visitor did not ask for cannot be honoured.
                fe.count("session");
                return pages::text(
                    StatusCode::BAD_GATEWAY,
                    "The local service switched protocols without being asked.",
                );
            }
            _ => fe.count("forwarded"),
        }
        resp.map(coalesced)
    }

    fn route(&self, host: &str) -> Result<Route, Box<Response<Body>>> {
        let fe = &self.fe;
        if fe
            .cfg
            .compat_2ptth
            .as_ref()
            .is_some_and(|c| c.hostname == host)
        {
            return Ok(Route::Upstream2ptth);
        }
        let misdirected = || {
            fe.count("misdirected");
            pages::misdirected(host, self.sni.as_deref())
        };
        let Some(rest) = host
            .strip_suffix(fe.cfg.domain.as_str())
            .and_then(|s| s.strip_suffix('.'))
        else {
            return Err(Box::new(misdirected()));
        };
        if !fe.resolver.covers(self.sni.as_deref(), host) {
            return Err(Box::new(misdirected()));
        }
        match fe.names.lookup_host(rest, true) {
            (_, Lookup::Unknown) => {
                fe.count("not_found");
                Err(Box::new(pages::not_found(host)))
            }
            (_, Lookup::Reserved) => {
                fe.count("offline");
                Err(Box::new(pages::offline(host)))
            }
            (_, Lookup::Active { kind, .. }) if kind != TunnelKind::Http => {
                Err(Box::new(misdirected()))
            }
            (_, Lookup::Active { members, .. }) => {
                let m = members
                    .iter()
                    .find(|m| m.target.online())
                    .or(members.first())
                    .cloned();
                match m {
                    Some(m) => Ok(Route::Tunnel {
                        tunnel: m.tunnel,
                        target: m.target,
                        proxy_protocol: m.proxy_protocol,
                    }),
                    None => {
                        fe.count("offline");
                        Err(Box::new(pages::offline(host)))
                    }
                }
            }
        }
    }

    /// The request as the tunnel client sees it: absolute URI, Host, no hop-by-hop headers,
    /// `X-Forwarded-*` set by tunneld (never taken from the visitor).
    fn forwarded(&self, req: Request<Incoming>, raw_host: &str, upgrade: bool) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        for h in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
        ] {
            parts.headers.remove(h);
        }
        let hv = |s: &str| HeaderValue::from_str(s).ok();
        if let Some(v) = hv(&self.peer.ip().to_string()) {
            parts.headers.insert("x-forwarded-for", v);
        }
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        if let Some(v) = hv(raw_host) {
            parts.headers.insert("x-forwarded-host", v.clone());
            parts.headers.insert(header::HOST, v);
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        if let Ok(u) = format!("https://{raw_host}{pq}").parse() {
            parts.uri = u;
        }
        Request::from_parts(parts, coalesced(boxed(body)))
    }

    fn failed(&self, host: &str, e: OpenError) -> Response<Body> {
        let fe = &self.fe;
        fe.metrics
            .stream_open_failures_total
            .with_label_values(&[&fe.name, e.reason()])
            .inc();
        match e {
            OpenError::Offline => {
                fe.count("offline");
                pages::offline(host)
            }
            OpenError::LocalRefused(why) => {
                fe.count("local_refused");
                pages::local_refused(host, &why)
            }
            OpenError::Timeout => {
                fe.count("timeout");
                pages::timeout(host)
            }
            OpenError::Capped(why) => {
                fe.count("stream_cap");
                pages::busy(host, &format!("too many open streams {why}"))
            }
            OpenError::TooManyStreams => {
                fe.count("stream_cap");
                pages::busy(host, "too many open streams")
            }
            e => {
                fe.count("session");
                tracing::debug!(frontend = %fe.name, %host, error = %e, "forwarding failed");
                pages::offline(host)
            }
        }
    }
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, OpenError>>,
) -> Result<T, OpenError> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(OpenError::Timeout))
}
