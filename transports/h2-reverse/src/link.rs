//! The tunneld end of a reversed HTTP/2 connection: tunnelc (or a 2ptth initiator) dialled
//! and runs the HTTP/2 server; tunneld is the HTTP/2 client and opens `CONNECT` streams for
//! raw bytes and for visitor requests on kept-alive streams, and sends a visitor request that
//! may not be kept (and every request of a 2ptth initiator) as an HTTP/2 request.
//!
//! Used by this transport's sessions and, through [`H2ReverseLinks`] (core's
//! [`ReverseHttpLinks`], which the daemon passes in), by the `https-subdomain` frontend's
//! 2ptth mode.

use async_trait::async_trait;
use http::{HeaderValue, Method, Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::home::Home;
use tunneld_core::http2::H2Tuning;
use tunneld_core::http_forward::{boxed, empty, Body};
use tunneld_core::io::BoxIo;
use tunneld_core::limits::DataLimits;
use tunneld_core::reverse_http::{HttpUpstream, ReverseHttpLinks};
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};

use crate::stream_cap::HeldBody;
use tokio::sync::Semaphore;
use tunneld_core::stream_slots::{acquire, Counted};

pub use tunneld_core::reverse_http::LinkDriver;

/// ALPN id of tunneld's own reversed-HTTP/2 transport.
pub const ALPN: &[u8] = b"tunneld-h2";
/// ALPN id of the original 2ptth initiators.
pub const ALPN_2PTTH: &[u8] = b"2ptth";
/// Request header carrying the JSON [`StreamHeader`] of each stream tunneld opens.
pub const STREAM_HEADER: &str = "tunneld-stream";
/// Response header tunnelc sets when it, not the local service, answers (the local service
/// refused or could not be reached). Its value is the reason.
pub const ERROR_HEADER: &str = "tunneld-error";
/// Path of the control requests tunneld sends to tunnelc (mapping changes).
pub const CONTROL_PATH: &str = "/.well-known/tunneld/control";
/// `:authority` of CONNECT streams: the real target travels in [`STREAM_HEADER`].
pub const CONNECT_AUTHORITY: &str = "tunnel.invalid:443";

/// hyper's executor for a link: its tasks (at tunneld the HTTP/2 connection's own, CONNECT
/// upgrade pipes, request bodies; at tunnelc each stream's service and each CONNECT
/// stream's send pipe) run at the session's home when it has one ([`tunneld_core::home`]; once the home is closed, and for 2ptth
/// links, on tasks of their own).
pub use tunneld_core::home::HomeExecutor as LinkExecutor;

/// Opens streams on a reversed HTTP/2 connection.
pub struct H2Opener {
    send: SendRequest<Body>,
    /// A 2ptth initiator: plain requests only, no tunneld headers.
    legacy: bool,
    /// A permit per visitor stream open now, of the most allowed ([`crate::stream_cap`]).
    streams: Arc<Semaphore>,
    cap: usize,
}

/// Runs the HTTP/2 client handshake over `io` (the TLS stream after any hello exchange),
/// with `tuning` made fit for a link ([`H2Tuning::for_link`]). tunneld opens at most
/// `tuning.max_concurrent_streams` visitor streams at once (the window is sized for them),
/// or `peer_max` when the peer said it serves fewer. The connection's tasks run at `home`
/// when given ([`tunneld_core::home`]).
pub async fn connect(
    io: BoxIo,
    tuning: &H2Tuning,
    limits: &DataLimits,
    keepalive: Duration,
    (legacy, home): (bool, Option<Home>),
    peer_max: Option<u32>,
) -> Result<(Arc<H2Opener>, LinkDriver), hyper::Error> {
    let (send, conn) = tuning
        .for_link(limits)
        .client_on(LinkExecutor { home }, keepalive)
        .handshake::<_, Body>(TokioIo::new(io))
        .await?;
    let cap = stream_cap(tuning, peer_max);
    Ok((
        Arc::new(H2Opener {
            send,
            legacy,
            streams: Arc::new(Semaphore::new(cap)),
            cap,
        }),
        Box::pin(conn),
    ))
}

/// The most visitor streams tunneld opens at once on a link: `tuning.max_concurrent_streams`,
/// or `peer_max` when the peer said it serves fewer.
pub fn stream_cap(tuning: &H2Tuning, peer_max: Option<u32>) -> usize {
    let cap = peer_max.map_or(tuning.max_concurrent_streams, |p| {
        p.min(tuning.max_concurrent_streams)
    });
    (cap as usize).clamp(1, Semaphore::MAX_PERMITS)
}

fn send_error(e: hyper::Error) -> OpenError {
    if e.is_closed() || e.is_canceled() {
        OpenError::Offline
    } else {
        OpenError::Session(e.to_string())
    }
}

fn refused<B>(resp: &Response<B>) -> OpenError {
    let why = resp
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no reason given")
        .to_string();
    OpenError::LocalRefused(why)
}

impl H2Opener {
    /// The most visitor streams open at once.
    pub fn stream_cap(&self) -> usize {
        self.cap
    }

    /// Whether the connection can still carry requests.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Sends a control message (JSON) to tunnelc.
    pub async fn control(&self, json: Vec<u8>) -> Result<(), OpenError> {
        let req = Request::post(format!("https://tunnel.invalid{CONTROL_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(tunneld_core::http_forward::full(json))
            .map_err(|e| OpenError::Session(e.to_string()))?;
        let resp = self
            .send
            .clone()
            .send_request(req)
            .await
            .map_err(send_error)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(OpenError::Session(format!(
                "control message refused with {}",
                resp.status()
            )))
        }
    }

    /// Whether the peer answers a request within `deadline` (any answer counts: a 2ptth
    /// initiator answers a control request with an error status, and that is an answer).
    pub async fn probe(&self, deadline: Duration) -> bool {
        if self.send.is_closed() {
            return false;
        }
        let ping =
            serde_json::to_vec(&tunneld_core::proto::Control::Ping { seq: 0 }).unwrap_or_default();
        let req = match Request::post(format!("https://tunnel.invalid{CONTROL_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(tunneld_core::http_forward::full(ping))
        {
            Ok(r) => r,
            Err(_) => return false,
        };
        matches!(
            tokio::time::timeout(deadline, self.send.clone().send_request(req)).await,
            Ok(Ok(_))
        )
    }

    fn header_value(header: &StreamHeader) -> Result<HeaderValue, OpenError> {
        let json = serde_json::to_string(header).map_err(|e| OpenError::Session(e.to_string()))?;
        HeaderValue::from_str(&json).map_err(|e| OpenError::Session(e.to_string()))
    }
}

#[async_trait]
impl OpenStream for H2Opener {
    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        if self.legacy {
            return Err(OpenError::Session(
                "a 2ptth upstream carries HTTP requests only".into(),
            ));
        }
        let slot = acquire(&self.streams)?;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(CONNECT_AUTHORITY)
            .header(STREAM_HEADER, Self::header_value(&header)?)
            .body(empty())
            .map_err(|e| OpenError::Session(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + tunneld_core::session::OPEN_REPLY_DEADLINE;
        let mut resp = tokio::time::timeout_at(deadline, self.send.clone().send_request(req))
            .await
            .map_err(|_| OpenError::Timeout)?
            .map_err(send_error)?;
        if !resp.status().is_success() {
            return Err(refused(&resp));
        }
        let up = tokio::time::timeout_at(deadline, hyper::upgrade::on(&mut resp))
            .await
            .map_err(|_| OpenError::Timeout)?
            .map_err(|e| OpenError::Session(format!("CONNECT stream: {e}")))?;
        Ok(Box::new(Counted::new(TokioIo::new(up), slot)))
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: Request<Body>,
    ) -> Result<Response<Body>, OpenError> {
        // Held by the request body and the response body both: the stream lives until
        // hyper has sent the one and the caller has read or dropped the other.
        let slot = Arc::new(acquire(&self.streams)?);
        let (mut parts, body) = req.into_parts();
        let body = boxed(HeldBody {
            body,
            slot: Some(slot.clone()),
        });
        parts.headers.remove(http::header::HOST);
        parts.version = http::Version::HTTP_2;
        if !self.legacy {
            parts
                .headers
                .insert(STREAM_HEADER, Self::header_value(&header)?);
        }
        let resp = self
            .send
            .clone()
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(send_error)?;
        if !self.legacy && resp.headers().contains_key(ERROR_HEADER) {
            return Err(refused(&resp));
        }
        Ok(resp.map(|body| {
            boxed(HeldBody {
                body: boxed(body),
                slot: Some(slot),
            })
        }))
    }

    fn stream_cap(&self) -> Option<usize> {
        Some(self.cap)
    }

    fn is_full(&self) -> bool {
        self.streams.available_permits() == 0
    }
}

impl HttpUpstream for H2Opener {
    fn is_closed(&self) -> bool {
        H2Opener::is_closed(self)
    }
}

/// Reversed HTTP/2 links for frontends: core's [`ReverseHttpLinks`], made here and passed to
/// the `https-subdomain` frontend by the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct H2ReverseLinks;

#[async_trait]
impl ReverseHttpLinks for H2ReverseLinks {
    fn alpn_2ptth(&self) -> &'static [u8] {
        ALPN_2PTTH
    }

    async fn connect_2ptth(
        &self,
        io: BoxIo,
        tuning: &H2Tuning,
        limits: &DataLimits,
        keepalive: Duration,
    ) -> Result<(Arc<dyn HttpUpstream>, LinkDriver), hyper::Error> {
        let (opener, driver) = connect(io, tuning, limits, keepalive, (true, None), None).await?;
        Ok((opener, driver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// hyper's tasks go home while the home takes them, and run on tasks of their own once
    /// the session's home is gone.
    #[tokio::test]
    async fn the_link_executor_runs_tasks_at_home_then_on_their_own() {
        let (home, hearth) = tunneld_core::home::home();
        let exec = LinkExecutor {
            home: Some(home.clone()),
        };
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        hyper::rt::Executor::execute(&exec, async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        let finished =
            tokio::time::timeout(Duration::from_secs(5), tokio::spawn(hearth.finish())).await;
        assert!(matches!(finished, Ok(Ok(()))), "the hearth finished");
        assert_eq!(done.load(Ordering::SeqCst), 1, "the task ran at home");
        let d = done.clone();
        hyper::rt::Executor::execute(&exec, async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        let ran = tokio::time::timeout(Duration::from_secs(5), async {
            while done.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(ran.is_ok(), "a task sent after the end ran on its own");
    }
}
