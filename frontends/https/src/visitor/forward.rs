//! Sending a visitor request to its route, and relaying the answer: raw both ways after an
//! upgrade.

use super::route::Route;
use super::Conn;
use crate::frontend::HttpsFrontend;
use crate::pages;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::http_forward::{
    boxed, coalesced, http1_over, join_cookies, strip_hop_by_hop, Body,
};
use tunneld_core::idle::splice_until_idle;
use tunneld_core::session::OpenError;
use tunneld_core::splice::SpliceCounters;
use tunneld_core::tunnel_metrics::TunnelStream;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What a visitor may not say about itself: tunneld sets the first three, drops the others.
static FORWARDING: [HeaderName; 6] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

impl Conn {
    /// The request as the tunnel client sees it: absolute URI, Host, no hop-by-hop headers,
    /// `X-Forwarded-*` set by tunneld (never taken from the visitor).
    pub(super) fn forwarded(
        &self,
        req: Request<Incoming>,
        raw_host: &str,
        upgrade: bool,
    ) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        join_cookies(&mut parts.headers);
        // One pass over the names present (a visitor rarely sends any of these) instead of
        // a lookup of each.
        if parts.headers.keys().any(|k| FORWARDING.contains(k)) {
            for h in &FORWARDING {
                parts.headers.remove(h);
            }
        }
        if let Some(v) = &self.peer_ip {
            parts.headers.insert(X_FORWARDED_FOR, v.clone());
        }
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        if let Ok(v) = HeaderValue::from_str(raw_host) {
            parts.headers.insert(X_FORWARDED_HOST, v.clone());
            parts.headers.insert(header::HOST, v);
        }
        tunneld_core::http_forward::set_absolute_uri(&mut parts.uri, raw_host);
        Request::from_parts(parts, coalesced(boxed(body)))
    }

    /// Sends a request along its route within the open timeout (an upgrade as HTTP/1.1 on a
    /// raw tunnel stream); the service's answer, or the answer to a failure.
    pub(super) async fn forward(
        &self,
        host: &str,
        route: &Route,
        req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Body>, Box<Response<Body>>> {
        let fe = &self.fe;
        let timeout = fe.cfg.open_timeout;
        let result = match route {
            Route::Upstream2ptth => {
                let up = tunneld_core::sync::lock(&fe.upstream_2ptth).clone();
                match up {
                    // As the original 2ptth answered.
                    None => {
                        fe.count("offline");
                        return Err(Box::new(pages::text(
                            StatusCode::BAD_GATEWAY,
                            "There is no upstream available",
                        )));
                    }
                    Some(o) => {
                        with_timeout(
                            timeout,
                            tunneld_core::session::OpenStream::request(
                                &*o,
                                self.stream_header("2ptth", None),
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
                let h = self.stream_header(tunnel, *proxy_protocol);
                if upgrade {
                    // Boxed: the upgrade's futures are large, and every request's future
                    // (moved and boxed per request) would otherwise carry their room.
                    Box::pin(async {
                        let io = with_timeout(timeout, target.open(h, None)).await?;
                        let max = fe.limits.get().max_response_head;
                        with_timeout(timeout, http1_over(io, req, max)).await
                    })
                    .await
                } else {
                    with_timeout(timeout, target.request(h, req)).await
                }
            }
        };
        result.map_err(|e| Box::new(self.failed(host, e)))
    }

    /// The service's answer as the visitor gets it, without hop-by-hop headers; on `101` to
    /// the visitor's upgrade, both upgraded connections are spliced in a task of their own.
    pub(super) fn answer(
        &self,
        mut resp: Response<Body>,
        upgrade: bool,
        visitor_upgrade: Option<OnUpgrade>,
        tunnel: Option<Arc<TunnelStream>>,
    ) -> Response<Body> {
        let fe = &self.fe;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        match (switching, visitor_upgrade) {
            (true, Some(visitor_up)) => {
                let backend_up = hyper::upgrade::on(&mut resp);
                self.visitors.spawn(splice_upgraded(
                    fe.clone(),
                    (visitor_up, backend_up),
                    tunnel,
                ));
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

    /// The answer when a request could not be forwarded; counted by reason.
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

/// Once both sides upgraded, splices the visitor and the service until either ends or the
/// idle timeout passes, counted as an active stream.
async fn splice_upgraded(
    fe: Arc<HttpsFrontend>,
    (visitor_up, backend_up): (OnUpgrade, OnUpgrade),
    tunnel: Option<Arc<TunnelStream>>,
) {
    let (Ok(v), Ok(b)) = tokio::join!(visitor_up, backend_up) else {
        return;
    };
    let m = &fe.metrics;
    let counters = SpliceCounters {
        a_to_b: Some(m.bytes_total.with_label_values(&[&fe.name, "in"])),
        b_to_a: Some(m.bytes_total.with_label_values(&[&fe.name, "out"])),
        tunnel,
    };
    let active = m.streams_active.with_label_values(&[&fe.name]);
    active.inc();
    let (mut v, mut b) = (TokioIo::new(v), TokioIo::new(b));
    let idled = m.visitors_idle_closed_total.with_label_values(&[&fe.name]);
    let idle = fe.limits.get().idle_timeout;
    let _ = splice_until_idle(&mut v, &mut b, counters, idle, &idled).await;
    active.dec();
}

/// `f`, or [`OpenError::Timeout`] after `d`.
async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, OpenError>>,
) -> Result<T, OpenError> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(OpenError::Timeout))
}
