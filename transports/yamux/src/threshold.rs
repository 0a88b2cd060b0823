//! The threshold / koding-tunnel dialect of the yamux transport, so their unmodified clients
//! can connect (opt-in per transport: `threshold:` in its config).
//!
//! Wire (see `docs/transports.md`): after TLS the client sends
//! `CONNECT /_controlPath/ HTTP/1.1` with `X-Threshold-ClientId` or `X-KTunnel-Identifier`;
//! tunneld answers exactly `HTTP/1.1 200 Connected to Tunnel\n\n` and becomes the yamux
//! server. The client opens stream 1 and writes `controlHandshake`; tunneld answers
//! `controlOk` and from then on writes one JSON line per visitor: threshold's
//! `{"action":1,"service":"<name>"}`, or, to a client that identified itself with koding's
//! `X-KTunnel-Identifier`, koding's `{"action":1,"transportProtocol":2,"localPort":<port>}`
//! (TCP, and the public port the visitor came in on, which koding clients map to a local
//! address). The client opens one stream per line, in its control loop, in order.
//!
//! Pairing: the original server let each visitor goroutine accept "the next stream", so two
//! concurrent visitors could swap streams. Here every visitor takes a slot in one FIFO queue
//! per session, and the slot is queued and its line written under one lock, so queue order
//! equals line order. The client opens streams in line order on one ordered connection, so
//! the n-th stream it opens belongs to the n-th slot. A visitor that gives up leaves its slot
//! in place (its stream is closed on arrival), which keeps the order intact. A client that
//! does not open a stream within `pair_timeout` of the oldest slot is broken, and its session
//! is ended (it reconnects).

use async_trait::async_trait;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tunneld_core::auth::Identity;
use tunneld_core::duration::serde_human;
use tunneld_core::futures_io::FuturesIoExt;
use tunneld_core::io::BoxIo;
use tunneld_core::proxy_protocol;
use tunneld_core::session::{OpenError, OpenStream, StreamHeader};
use yamux::Stream;

/// What the client writes on stream 1.
pub const HANDSHAKE_REQUEST: &[u8; 16] = b"controlHandshake";
/// What tunneld answers.
pub const HANDSHAKE_RESPONSE: &[u8; 9] = b"controlOk";
/// The exact success answer to the CONNECT (LF only, as the original).
pub const CONNECTED: &[u8] = b"HTTP/1.1 200 Connected to Tunnel\n\n";
/// The path of the control CONNECT.
pub const CONTROL_PATH: &str = "/_controlPath/";
/// The most a CONNECT request head may take.
pub const MAX_HEAD: usize = 8 * 1024;

/// `threshold:` in a yamux transport's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Client certificates must name `<id>@<domain>` as their common name.
    pub domain: String,
    /// Without a client certificate, take the id from the identity header. Only for
    /// deployments where the network already authenticates clients.
    #[serde(default)]
    pub header_identity: bool,
    /// How long the client may take to open the stream for a visitor.
    #[serde(default = "default_pair_timeout", with = "serde_human")]
    pub pair_timeout: Duration,
    /// Visitors that may wait for their stream at once, per client.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Answer threshold's management API (`PUT /tunnels`, `GET /clients`, ...) on this port
    /// for callers with a valid client certificate of the domain, as threshold did (its
    /// `/liveconfig` forwards there). Any such client may then replace every mapping.
    #[serde(default)]
    pub management_api: bool,
    /// A second listener for threshold / koding clients over plain TCP (threshold's
    /// `UseTls: false`). Requires `header_identity` (there is no certificate): only for
    /// networks that already authenticate and encrypt (a VPN, a private link).
    #[serde(default)]
    pub plain_listen: Option<std::net::SocketAddr>,
}

impl ThresholdConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let d = self.domain.trim();
        if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
            return Err(("domain", format!("`{}` is not a domain name", self.domain)));
        }
        if self.pair_timeout.is_zero() || self.pair_timeout > Duration::from_secs(300) {
            return Err((
                "pair_timeout",
                format!("{:?} is outside 1ms..=5m", self.pair_timeout),
            ));
        }
        if !(1..=65536).contains(&self.max_pending) {
            return Err((
                "max_pending",
                format!("{} is outside 1..=65536", self.max_pending),
            ));
        }
        if self.plain_listen.is_some() && !self.header_identity {
            return Err((
                "plain_listen",
                "needs header_identity: true (plain TCP carries no client certificate)".into(),
            ));
        }
        Ok(())
    }
}

fn default_pair_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_pending() -> usize {
    256
}

/// A refused CONNECT: the status line and the plain-text reason sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub outcome: &'static str,
    pub message: String,
}

fn refusal(status: u16, outcome: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        outcome,
        message: message.into(),
    }
}

impl Refusal {
    /// The connection closed before a request (nothing to answer).
    pub fn closed() -> Self {
        refusal(0, "closed", "closed before the request")
    }

    /// Not a CONNECT (plain listener): 405.
    pub fn not_connect() -> Self {
        refusal(
            405,
            "bad_magic",
            "only CONNECT /_controlPath/ is accepted here",
        )
    }

    /// The HTTP response for the refusal.
    pub fn response(&self) -> Vec<u8> {
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        let body = format!("{}\n", self.message);
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// Reads the rest of a request head whose first bytes (`start`) were already read. Accepts
/// CRLF or bare LF line ends.
pub async fn read_head<R: AsyncRead + Unpin>(io: &mut R, start: &[u8]) -> Result<String, Refusal> {
    let mut head = start.to_vec();
    let mut byte = [0u8; 1];
    loop {
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() >= MAX_HEAD {
            return Err(refusal(
                400,
                "head_too_large",
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        // Byte by byte: nothing after the head may be consumed (yamux follows). Heads are
        // small and this happens once per session.
        match io.read(&mut byte).await {
            Ok(0) | Err(_) => {
                return Err(refusal(
                    400,
                    "closed",
                    "connection closed in the request head",
                ))
            }
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8(head).map_err(|_| refusal(400, "bad_request", "request head is not UTF-8"))
}

/// The client id a CONNECT head asks for, checked against the client certificate.
pub fn identify(
    head: &str,
    cert_cn: Option<&str>,
    cfg: &ThresholdConfig,
) -> Result<Identity, Refusal> {
    let mut lines = head.lines();
    let request = lines.next().unwrap_or("");
    let mut parts = request.split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    if method != Some("CONNECT") {
        return Err(refusal(405, "bad_request", "only CONNECT is accepted here"));
    }
    if !matches!(version.map(str::trim), Some("HTTP/1.1" | "HTTP/1.0")) || parts.next().is_some() {
        return Err(refusal(400, "bad_request", "malformed request line"));
    }
    if path != Some(CONTROL_PATH) {
        return Err(refusal(
            404,
            "bad_request",
            format!("unknown path; the control path is {CONTROL_PATH}"),
        ));
    }
    let mut header_id = None;
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(refusal(400, "bad_request", "malformed header line"));
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("X-Threshold-ClientId")
            || name.eq_ignore_ascii_case("X-KTunnel-Identifier")
        {
            header_id = Some(value.trim().to_string());
        }
    }
    let (client_id, method) = match cert_cn {
        Some(cn) => {
            let id = match cn.rsplit_once('@') {
                Some((id, domain)) if domain.eq_ignore_ascii_case(&cfg.domain) => id,
                _ => {
                    return Err(refusal(
                        403,
                        "bad_certificate",
                        format!(
                            "client certificate common name `{cn}` is not `<id>@{}`",
                            cfg.domain
                        ),
                    ))
                }
            };
            if let Some(h) = &header_id {
                if h != id {
                    return Err(refusal(
                        403,
                        "bad_request",
                        format!("identity header `{h}` does not match the certificate's `{id}`"),
                    ));
                }
            }
            (id.to_string(), "certificate")
        }
        None if cfg.header_identity => match header_id {
            Some(h) => (h, "header"),
            None => {
                return Err(refusal(
                    401,
                    "missing_credentials",
                    "send X-Threshold-ClientId or X-KTunnel-Identifier",
                ))
            }
        },
        None => {
            return Err(refusal(
                401,
                "missing_credentials",
                "a client certificate is required",
            ))
        }
    };
    let valid = !client_id.is_empty()
        && client_id.len() <= 63
        && client_id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !valid {
        return Err(refusal(
            400,
            "bad_request",
            format!(
                "client id `{client_id}` is invalid: use 1-63 letters, digits, `-`, `_` or `.`"
            ),
        ));
    }
    Ok(Identity::new(client_id, method, None))
}

/// Whether the first bytes after TLS start an HTTP request to the management API.
pub fn is_management(first: &[u8]) -> bool {
    [&b"GET /"[..], b"PUT /", b"POST /", b"HEAD /", b"DELETE /"]
        .iter()
        .any(|m| first.starts_with(m))
}

/// The client id of a certificate common name `<id>@<domain>`.
pub fn cert_id<'a>(cn: &'a str, cfg: &ThresholdConfig) -> Option<&'a str> {
    cn.rsplit_once('@')
        .filter(|(id, d)| d.eq_ignore_ascii_case(&cfg.domain) && !id.is_empty())
        .map(|(id, _)| id)
}

/// Whether a CONNECT head comes from a koding-tunnel client (it names itself with
/// `X-KTunnel-Identifier` and not threshold's header): it gets koding's control messages.
pub fn is_koding(head: &str) -> bool {
    let has = |name: &str| {
        head.lines().skip(1).any(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
    };
    has("X-KTunnel-Identifier") && !has("X-Threshold-ClientId")
}

/// Who connected with the threshold dialect.
pub(crate) struct Caller {
    pub identity: Identity,
    /// koding-tunnel's client: it gets koding's control messages.
    pub koding: bool,
}

/// koding's `transportProtocol` for a TCP stream.
const KODING_TCP: u8 = 2;

/// The visitors waiting for streams, oldest first.
pub(crate) struct Pairs {
    queue: Mutex<VecDeque<(Instant, oneshot::Sender<Stream>)>>,
    pending: prometheus::IntGauge,
}

impl Pairs {
    pub(crate) fn new(pending: prometheus::IntGauge) -> Self {
        Self {
            queue: Mutex::default(),
            pending,
        }
    }

    fn push(&self, tx: oneshot::Sender<Stream>) {
        self.lock().push_back((Instant::now(), tx));
        self.pending.inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, oneshot::Sender<Stream>)>> {
        tunneld_core::sync::lock(&self.queue)
    }

    /// Hands a client-opened stream to the oldest waiting visitor. `false` when nobody waits
    /// (the client opened a stream it was not asked for).
    pub(crate) fn deliver(&self, stream: Stream) -> bool {
        let slot = self.lock().pop_front();
        if slot.is_some() {
            self.pending.dec();
        }
        match slot {
            // A visitor that gave up drops the stream here, which closes it.
            Some((_, tx)) => {
                let _ = tx.send(stream);
                true
            }
            None => false,
        }
    }

    /// How long the oldest slot has waited.
    pub(crate) fn oldest(&self) -> Option<Duration> {
        self.lock().front().map(|(t, _)| t.elapsed())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn clear(&self) -> usize {
        let mut q = self.lock();
        let n = q.len();
        q.clear();
        self.pending.sub(n as i64);
        n
    }
}

/// Opens visitor streams on a threshold session: a control line, then the client's stream.
pub(crate) struct ThresholdOpener {
    pub(crate) pairs: Arc<Pairs>,
    /// Serialises "queue a slot + write its line" so both orders agree.
    pub(crate) order: tokio::sync::Mutex<mpsc::Sender<Vec<u8>>>,
    pub(crate) max_pending: usize,
    /// Visitor streams this session may have open (`yamux.max_streams`): the client opens
    /// one per line, so the cap is taken before the line is written.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// koding's control messages instead of threshold's.
    pub(crate) koding: bool,
}

#[async_trait]
impl OpenStream for ThresholdOpener {
    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let service = header
            .target
            .clone()
            .unwrap_or_else(|| header.tunnel.clone());
        let message = if self.koding {
            serde_json::json!({
                "action": 1,
                "transportProtocol": KODING_TCP,
                "localPort": header.public.port(),
            })
        } else {
            serde_json::json!({ "action": 1, "service": service })
        };
        let mut line =
            serde_json::to_vec(&message).map_err(|e| OpenError::Session(e.to_string()))?;
        line.push(b'\n');
        let slot = crate::limit::acquire(&self.slots)?;
        let (tx, rx) = oneshot::channel();
        {
            let writer = self.order.lock().await;
            if self.pairs.len() >= self.max_pending {
                return Err(OpenError::TooManyStreams);
            }
            self.pairs.push(tx);
            if writer.send(line).await.is_err() {
                return Err(OpenError::Offline);
            }
        }
        // The session's watchdog bounds this wait; the frontend bounds it too.
        let stream = rx.await.map_err(|_| OpenError::Offline)?;
        let mut io = stream.tokio_io();
        if let Some(v) = header.proxy_protocol {
            // The original server wrote the PROXY line itself; the client passes it on.
            io.write_all(&proxy_protocol::encode(v, header.visitor, header.public))
                .await
                .map_err(|e| OpenError::Session(e.to_string()))?;
        }
        Ok(Box::new(crate::limit::Counted::new(io, slot)))
    }
}

/// Serves the control stream: the handshake, then writes each visitor's line. Ends when the
/// stream fails or the client closes it.
pub(crate) async fn run_control<S>(mut stream: S, mut lines: mpsc::Receiver<Vec<u8>>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut hs)).await {
        Ok(Ok(_)) if &hs == HANDSHAKE_REQUEST => {}
        Ok(Ok(_)) => return "bad control handshake".into(),
        Ok(Err(e)) => return format!("control stream: {e}"),
        Err(_) => return "no control handshake in time".into(),
    }
    if let Err(e) = async {
        stream.write_all(HANDSHAKE_RESPONSE).await?;
        stream.flush().await
    }
    .await
    {
        return format!("control stream: {e}");
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return "session closing".into() };
                if let Err(e) = async { stream.write_all(&line).await?; stream.flush().await }.await {
                    return format!("control stream: {e}");
                }
            }
            // The client never writes after the handshake; reading notices it going away.
            r = stream.read(&mut scratch) => match r {
                Ok(0) => return "client closed the control stream".into(),
                Ok(_) => {}
                Err(e) => return format!("control stream: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests;
