//! tunnelc side of the h2-reverse transport: after the hello exchange, tunnelc is the HTTP/2
//! server on its own connection. Each request from tunneld carries a stream header naming
//! the tunnel: `CONNECT` becomes a raw stream to the local target, any other method is
//! forwarded to the local HTTP service.

use crate::link::{CONTROL_PATH, ERROR_HEADER, STREAM_HEADER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
pub use tunneld_core::dial::{DialError, DialTarget};
use tunneld_core::home::Home;
use tunneld_core::http2::H2Tuning;
use tunneld_core::http_forward::{boxed, coalesced, empty, full, join_cookies, Body};
use tunneld_core::limits::DataLimits;
use tunneld_core::proto::{Control, Hello, TunnelStatus};
use tunneld_core::session::{ClientSession, LocalConnector, SessionNews, StreamHeader};
use tunneld_core::splice::splice_at_home;

/// How to reach tunneld. The link's HTTP/2 settings follow from what tunneld announces
/// ([`H2Tuning::tunnelc`]).
#[derive(Clone)]
pub struct DialOptions {
    pub target: DialTarget,
    /// Streams served at once (SETTINGS_MAX_CONCURRENT_STREAMS; the hello says the same).
    pub max_streams: u32,
}

/// An accepted session, ready to run ([`ClientSession::run`]).
pub struct Connected {
    pub client_id: String,
    pub tunnels: Vec<TunnelStatus>,
    pub keepalive: Duration,
    io: TlsStream<TcpStream>,
    tuning: H2Tuning,
    limits: DataLimits,
}

/// Connects, sends `hello`, and waits for tunneld's answer.
pub async fn dial(opts: &DialOptions, hello: &Hello) -> Result<Connected, DialError> {
    let w = tunneld_core::dial::dial(&opts.target, hello).await?;
    Ok(Connected {
        client_id: w.client_id,
        tunnels: w.tunnels,
        keepalive: w.keepalive,
        io: w.io,
        tuning: H2Tuning::tunnelc(&w.limits, opts.max_streams),
        limits: w.limits,
    })
}

struct Ctx {
    connector: Arc<dyn LocalConnector>,
    /// Kept-alive connections to local HTTP services (the session's own).
    pool: Arc<tunneld_core::keepalive_pool::LocalPool>,
    limits: DataLimits,
    updates: mpsc::UnboundedSender<SessionNews>,
    streams: CancellationToken,
    /// The session's task, where its streams run while they carry small exchanges.
    home: Home,
}

fn answer(status: StatusCode, error: Option<&str>) -> Response<Body> {
    let mut r = Response::new(match error {
        Some(e) => full(format!("{e}\n")),
        None => empty(),
    });
    *r.status_mut() = status;
    if let Some(e) = error {
        // Header values cannot hold control characters; keep the reason printable.
        let clean = tunneld_core::http1::printable(e);
        if let Ok(v) = http::HeaderValue::from_str(&clean) {
            r.headers_mut().insert(ERROR_HEADER, v);
        }
    }
    r
}

#[async_trait::async_trait]
impl ClientSession for Connected {
    fn welcome(&self) -> (String, Vec<TunnelStatus>) {
        (self.client_id.clone(), self.tunnels.clone())
    }

    async fn run(
        self: Box<Self>,
        connector: Arc<dyn LocalConnector>,
        updates: mpsc::UnboundedSender<SessionNews>,
        stop: CancellationToken,
    ) -> String {
        let this = *self;
        let streams = CancellationToken::new();
        let _streams_guard = streams.clone().drop_guard();
        // The connection, each stream's service and CONNECT send pipe (hyper's executor) and
        // each CONNECT stream's relay run on this task, as over yamux: no hop between tasks
        // per request. A relay that starts moving bulk data goes on a task of its own; what
        // it sends towards tunneld still passes through hyper's send pipe here.
        let (home, mut hearth) = tunneld_core::home::home();
        let exec = crate::link::LinkExecutor {
            home: Some(home.clone()),
        };
        let ctx = Arc::new(Ctx {
            connector,
            pool: tunneld_core::keepalive_pool::LocalPool::new(),
            limits: this.limits,
            updates,
            streams,
            home,
        });
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(req, ctx).await) }
        });
        let conn = this
            .tuning
            .server_on(exec, this.keepalive)
            .serve_connection(TokioIo::new(this.io), svc);
        // In this order: the connection, then the streams it just fed, in the same poll and
        // with a budget of their own (as at tunneld).
        tokio::select! {
            biased;
            _ = stop.cancelled() => "stopped".to_string(),
            r = conn => match r {
                Ok(()) => "tunneld closed the connection".to_string(),
                Err(e) => format!("connection failed: {e}"),
            },
            _ = tokio::task::unconstrained(hearth.run()) => "the streams' relays ended".to_string(),
        }
    }
}

async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<Body> {
    let Some(raw) = req.headers_mut().remove(STREAM_HEADER) else {
        if req.method() == Method::POST && req.uri().path() == CONTROL_PATH {
            return control(req, &ctx).await;
        }
        return answer(StatusCode::BAD_REQUEST, Some("no stream header"));
    };
    let header: StreamHeader = match serde_json::from_slice(raw.as_bytes()) {
        Ok(h) => h,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                Some(&format!("bad stream header: {e}")),
            )
        }
    };
    if req.method() == Method::CONNECT {
        let local = match local_connection(&ctx, &header).await {
            Ok(l) => l,
            Err(refused) => return refused,
        };
        let relay = relay(req, local, header, ctx.streams.clone());
        if let Err(relay) = ctx.home.run(Box::pin(relay)) {
            tokio::spawn(relay);
        }
        return answer(StatusCode::OK, None);
    }
    // It leaves HTTP/2 here: one Cookie line (RFC 9113 §8.2.3; tunneld joins them already).
    join_cookies(req.headers_mut());
    // A request goes on a kept-alive connection to its service when one is idle.
    let max = ctx.limits.max_response_head;
    let key = ctx.connector.pool_key(&header);
    let req = match &key {
        Some(k) => match ctx.pool.send_pooled(k, req.map(boxed), max).await {
            Ok(Ok(resp)) => return resp.map(coalesced),
            Ok(Err(e)) => return answer(StatusCode::BAD_GATEWAY, Some(&e.to_string())),
            Err(req) => req,
        },
        None => req.map(boxed),
    };
    let local = match local_connection(&ctx, &header).await {
        Ok(l) => l,
        Err(refused) => return refused,
    };
    match ctx.pool.send_new(key.as_deref(), local, req, max).await {
        Ok(resp) => resp.map(coalesced),
        Err(e) => answer(StatusCode::BAD_GATEWAY, Some(&e.to_string())),
    }
}

/// A CONNECT stream's bytes to and from `local`: at the session's home until bulk data flows,
/// then on a task of its own until `cancel`.
async fn relay(
    req: Request<Incoming>,
    local: tunneld_core::io::BoxIo,
    header: StreamHeader,
    cancel: CancellationToken,
) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT stream never opened");
            return;
        }
    };
    splice_at_home(TokioIo::new(upgraded), local, cancel, move |e| {
        tracing::debug!(tunnel = %header.tunnel, error = %e, "stream ended with an error");
    })
    .await;
}

/// A new connection to the local service of `header`, or the 502 that says why not.
async fn local_connection(
    ctx: &Ctx,
    header: &StreamHeader,
) -> Result<tunneld_core::io::BoxIo, Response<Body>> {
    ctx.connector.connect(header).await.map_err(|e| {
        let reason = e.to_string();
        tracing::warn!(tunnel = %header.tunnel, visitor = %header.visitor, "cannot reach the local service: {reason}");
        answer(StatusCode::BAD_GATEWAY, Some(&reason))
    })
}

async fn control(req: Request<Incoming>, ctx: &Ctx) -> Response<Body> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("control message too big"),
            )
        }
    };
    match serde_json::from_slice::<Control>(&body) {
        Ok(Control::Tunnels { tunnels }) => {
            let _ = ctx.updates.send(SessionNews::Tunnels(tunnels));
            answer(StatusCode::NO_CONTENT, None)
        }
        Ok(Control::Handover { reason }) => {
            let _ = ctx.updates.send(SessionNews::Handover(reason));
            answer(StatusCode::NO_CONTENT, None)
        }
        Ok(_) => answer(StatusCode::NO_CONTENT, None),
        Err(e) => answer(
            StatusCode::BAD_REQUEST,
            Some(&format!("bad control message: {e}")),
        ),
    }
}
