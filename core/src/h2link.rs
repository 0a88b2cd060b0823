//! The tunneld end of a reversed HTTP/2 connection: tunnelc (or a 2ptth initiator) dialled
//! and runs the HTTP/2 server; tunneld is the HTTP/2 client and sends visitor requests as
//! HTTP/2 requests and raw byte streams as `CONNECT` streams.
//!
//! Shared by the `h2-reverse` transport and the `https-subdomain` frontend's 2ptth mode.

use crate::http_forward::{boxed, empty, Body};
use crate::io::BoxIo;
use crate::session::{OpenError, OpenStream, StreamHeader};
use async_trait::async_trait;
use http::{HeaderValue, Method, Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

/// HTTP/2 settings of a reversed connection. Every limit is finite. Windows are per stream
/// first: the connection window is never smaller than `stream_window` times
/// `max_concurrent_streams`, so streams whose visitors stopped reading can hold at most their
/// own windows and never freeze the rest of the connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct H2Tuning {
    /// Receive window per stream, bytes.
    pub stream_window: u32,
    /// Receive window of the whole connection, bytes; raised to at least
    /// `stream_window * (max_concurrent_streams + 1)` (capped at 2^31 - 1).
    pub connection_window: u32,
    /// Largest DATA frame payload accepted, bytes (16 KiB to 16 MiB).
    pub max_frame_size: u32,
    /// Streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list, bytes; also bounds CONTINUATION frames per block. On a
    /// tunnel link it is raised to carry any head below `limits.max_request_head`.
    pub max_header_list_size: u32,
    /// Bytes buffered per stream for sending.
    pub max_send_buf_size: usize,
    /// Streams reset by the peer before they were handled, before GOAWAY.
    pub max_pending_reset_streams: usize,
    /// Streams tunneld must reset because the peer broke the protocol, before GOAWAY.
    pub max_local_error_resets: usize,
}

impl Default for H2Tuning {
    fn default() -> Self {
        Self {
            stream_window: 256 << 10,
            connection_window: 256 << 20,
            max_frame_size: 256 << 10,
            max_concurrent_streams: 1024,
            max_header_list_size: 128 << 10,
            max_send_buf_size: 1 << 20,
            max_pending_reset_streams: 20,
            max_local_error_resets: 256,
        }
    }
}

impl H2Tuning {
    /// tunnelc's side of a link: it trusts its own tunneld, which forwards every visitor's
    /// cancellation, so bursts of resets must never end the connection (h2's rapid-reset
    /// guard is for strangers); heads up to `max_head` pass.
    pub fn tunnelc(limits: &crate::limits::DataLimits) -> Self {
        Self {
            max_pending_reset_streams: 1 << 16,
            max_local_error_resets: 1 << 16,
            ..Self::default()
        }
        .for_link(limits)
    }

    /// These settings for a tunnel link, which carries many visitors at once: the connection
    /// window raised to `stream_window * (max_concurrent_streams + 1)` (capped at 2^31 - 1),
    /// so the streams of visitors that stopped reading can never exhaust it, and the header
    /// list raised to carry any head within `limits`. (A visitor's own HTTP/2 connection keeps
    /// its configured window: it only hurts itself.)
    pub fn for_link(self, limits: &crate::limits::DataLimits) -> Self {
        let fair = u64::from(self.stream_window) * (u64::from(self.max_concurrent_streams) + 1);
        let w = u64::from(self.connection_window).max(fair);
        Self {
            connection_window: u32::try_from(w.min(i32::MAX as u64)).unwrap_or(i32::MAX as u32),
            max_header_list_size: self.max_header_list_size.max(limits.link_header_list()),
            // Every visitor that gives up cancels its stream while the other end may still be
            // sending on it; the frames that cross the cancellation are answered with resets
            // h2 counts as protocol errors. On a link they are routine, so they must never
            // add up to a GOAWAY (which would end every tunnel of the client).
            max_local_error_resets: self.max_local_error_resets.max(1 << 16),
            ..self
        }
    }

    /// Checks the values against what HTTP/2 allows.
    pub fn validate(&self) -> Result<(), String> {
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err("max_frame_size must be between 16384 and 16777215".into());
        }
        if self.stream_window < 65_535 || self.connection_window < 65_535 {
            return Err("windows must be at least 65535 bytes".into());
        }
        if self.stream_window > i32::MAX as u32 || self.connection_window > i32::MAX as u32 {
            return Err("windows must be below 2^31".into());
        }
        if self.max_concurrent_streams == 0 || self.max_header_list_size < 4096 {
            return Err(
                "max_concurrent_streams must be positive and max_header_list_size at least 4096"
                    .into(),
            );
        }
        Ok(())
    }

    /// A client builder with these settings (tunneld's side of a reversed connection).
    pub fn client(
        &self,
        keepalive: Duration,
    ) -> hyper::client::conn::http2::Builder<TokioExecutor> {
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buf_size(self.max_send_buf_size)
            // Remember every stream cancelled recently, so late frames on it are dropped
            // quietly instead of being answered as errors.
            .max_concurrent_reset_streams(self.max_concurrent_streams as usize)
            .max_pending_accept_reset_streams(self.max_pending_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_resets)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive * 3)
            .keep_alive_while_idle(true);
        b
    }

    /// A server builder with these settings (tunnelc's side, and the public listener).
    pub fn server(
        &self,
        keepalive: Duration,
    ) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buf_size(self.max_send_buf_size)
            .max_pending_accept_reset_streams(self.max_pending_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_resets)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive * 3);
        b
    }
}

/// The HTTP/2 error code inside a hyper error (a GOAWAY or RST_STREAM either side sent),
/// lower-cased for metric labels: `enhance_your_calm`, `protocol_error`, ...
pub fn h2_reason(e: &hyper::Error) -> Option<&'static str> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.reason().map(reason_name);
        }
        src = s.source();
    }
    None
}

/// The name of an HTTP/2 error code from a fixed set (RFC 9113 section 7); a peer's
/// unknown codes are all `unknown`, so no peer can mint metric series.
pub fn reason_name(r: h2::Reason) -> &'static str {
    const NAMES: [&str; 14] = [
        "no_error",
        "protocol_error",
        "internal_error",
        "flow_control_error",
        "settings_timeout",
        "stream_closed",
        "frame_size_error",
        "refused_stream",
        "cancel",
        "compression_error",
        "connect_error",
        "enhance_your_calm",
        "inadequate_security",
        "http_1_1_required",
    ];
    usize::try_from(u32::from(r))
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("unknown")
}

/// The connection task of a reversed link: runs until the connection ends.
pub type LinkDriver = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Opens streams on a reversed HTTP/2 connection.
pub struct H2Opener {
    send: SendRequest<Body>,
    /// A 2ptth initiator: plain requests only, no tunneld headers.
    legacy: bool,
}

/// Runs the HTTP/2 client handshake over `io` (the TLS stream after any hello exchange),
/// with `tuning` made fit for a link ([`H2Tuning::for_link`]).
pub async fn connect(
    io: BoxIo,
    tuning: &H2Tuning,
    limits: &crate::limits::DataLimits,
    keepalive: Duration,
    legacy: bool,
) -> Result<(Arc<H2Opener>, LinkDriver), hyper::Error> {
    let (send, conn) = tuning
        .for_link(limits)
        .client(keepalive)
        .handshake::<_, Body>(TokioIo::new(io))
        .await?;
    Ok((Arc::new(H2Opener { send, legacy }), Box::pin(conn)))
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
    /// Whether the connection can still carry requests.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Sends a control message (JSON) to tunnelc.
    pub async fn control(&self, json: Vec<u8>) -> Result<(), OpenError> {
        let req = Request::post(format!("https://tunnel.invalid{CONTROL_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(crate::http_forward::full(json))
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
        let ping = serde_json::to_vec(&crate::proto::Control::Ping { seq: 0 }).unwrap_or_default();
        let req = match Request::post(format!("https://tunnel.invalid{CONTROL_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(crate::http_forward::full(ping))
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
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(CONNECT_AUTHORITY)
            .header(STREAM_HEADER, Self::header_value(&header)?)
            .body(empty())
            .map_err(|e| OpenError::Session(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + crate::session::OPEN_REPLY_DEADLINE;
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
        Ok(Box::new(TokioIo::new(up)))
    }

    async fn request(
        &self,
        header: StreamHeader,
        req: Request<Body>,
    ) -> Result<Response<Body>, OpenError> {
        let (mut parts, body) = req.into_parts();
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
        Ok(resp.map(boxed))
    }
}

#[cfg(test)]
mod reason_tests {
    #[test]
    fn reason_names_come_from_a_fixed_set() {
        assert_eq!(
            super::reason_name(h2::Reason::ENHANCE_YOUR_CALM),
            "enhance_your_calm"
        );
        assert_eq!(super::reason_name(h2::Reason::NO_ERROR), "no_error");
        assert_eq!(super::reason_name(h2::Reason::from(0xdead_beef)), "unknown");
        assert_eq!(super::reason_name(h2::Reason::from(14)), "unknown");
    }
}
