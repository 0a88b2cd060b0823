//! The control protocol between tunnelc and tunneld, shared by the transports that carry it
//! (yamux today). Every message is a frame: a big-endian `u32` length, then that many bytes of
//! JSON. Frames are capped at [`MAX_FRAME`]; a larger length is rejected before any allocation.
//!
//! Connection preamble (client to server, right after TLS): the 8 bytes [`MAGIC`], then one
//! [`Hello`] frame. The server answers one [`ServerHello`] frame. See `docs/protocol.md`.

use crate::proxy_protocol;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes a tunnelc sends: protocol name and version.
pub const MAGIC: &[u8; 8] = b"TUNNELD1";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Version carried in [`Hello`].
pub const VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error(
        "bad preamble: not a tunnelc speaking protocol {}",
        String::from_utf8_lossy(MAGIC)
    )]
    BadMagic,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Closed => "closed",
            FrameError::BadMagic => "bad_magic",
            FrameError::TooLarge(_) => "frame_too_large",
            FrameError::Malformed(_) => "malformed_frame",
            FrameError::Io(_) => "io",
        }
    }
}

/// Reads one frame and decodes it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            FrameError::Malformed(format!("truncated: expected {len} bytes"))
        }
        _ => FrameError::Io(e),
    })?;
    serde_json::from_slice(&buf).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes a frame (length and JSON) into bytes.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes and writes one frame, then flushes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let bytes = encode_frame(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads and checks the 8-byte preamble.
pub async fn read_magic<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<(), FrameError> {
    let mut m = [0u8; 8];
    match r.read_exact(&mut m).await {
        Ok(_) if &m == MAGIC => Ok(()),
        Ok(_) => Err(FrameError::BadMagic),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The kind of traffic a tunnel carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// Raw TCP on an allocated port.
    Tcp,
    /// HTTP(S) at `<name>.<domain>`: tunneld terminates TLS and routes each request by Host.
    Http,
    /// TLS at `<name>.<domain>` passed through by SNI: the visitor's TLS ends at the local
    /// service.
    Tls,
}

impl std::fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelKind::Tcp => "tcp",
            TunnelKind::Http => "http",
            TunnelKind::Tls => "tls",
        })
    }
}

/// One tunnel a client asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TunnelRequest {
    pub name: String,
    pub kind: TunnelKind,
    /// A specific public port; `None` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// A specific frontend by name; `None` for the one that serves `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// The public name asked for (`http`/`tls` tunnels); `None` lets tunneld pick one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
}

/// First frame from tunnelc.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub version: u16,
    /// A bearer token; absent when the client authenticates with a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub tunnels: Vec<TunnelRequest>,
    /// Whether the client accepts mappings defined by tunneld's admin API (their local
    /// targets are chosen by the server).
    #[serde(default)]
    pub accept_server_mappings: bool,
    /// Free text for logs (`tunnelc 0.1.0`), then the capabilities of the client as words
    /// starting with `+` ([`CAP_RETRYING`]).
    #[serde(default)]
    pub agent: String,
    /// The most streams the client's multiplexer accepts at once; tunneld opens no more
    /// than this (nor than its own cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    /// Names one running tunnelc across its reconnects (random, made at start): a session
    /// with the same instance id takes the old one's claims back at once, a different one
    /// never replaces a live session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The capability word of a client that reads [`TunnelStatus::retrying`] (tunnelc before it
/// rejected unknown fields in a status, so it is only sent to clients that say so).
pub const CAP_RETRYING: &str = "+retrying";

/// The capability word of a client that reads [`Control::Handover`] (older tunnelc end the
/// session on a control message they do not know).
pub const CAP_HANDOVER: &str = "+handover";

/// The capability word of a tunnelc that splices each stream to one local connection for as
/// long as both ends keep it open: tunneld may send several HTTP/1.1 requests, one after the
/// other, on one stream of an `http` tunnel (kept-alive streams), except for the tunnels it
/// names in [`NO_KEEPALIVE`] words (`reuse_connections: false`, a PROXY header).
pub const CAP_KEEPALIVE: &str = "+keepalive";

/// The capability word of a tunnelc whose hello `max_streams` is the cap of the transport it
/// runs (tunnelc's `max_conversations` over websocket); before it, tunnelc sent yamux's cap
/// whatever the transport, so websocket sessions ignore the number without this word.
pub const CAP_MAX_STREAMS: &str = "+max-streams";

/// The capability word of a tunnelc whose hello `max_streams`, over h2-reverse, is the
/// visitor streams its HTTP/2 server takes at once (`h2.max_streams`; it allows a few more
/// for tunneld's control requests). tunnelc with only [`CAP_MAX_STREAMS`] sent yamux's cap
/// there while serving 1024 streams, so h2-reverse links trust the number with this word only.
pub const CAP_H2_MAX_STREAMS: &str = "+h2-max-streams";

/// `+no-keepalive:<tunnel>`: a tunnel whose streams each carry one visitor request.
pub const NO_KEEPALIVE: &str = "+no-keepalive:";

impl Hello {
    /// Whether the client named capability `cap` (a `+word`) in its agent text.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.agent.split_whitespace().any(|w| w == cap)
    }

    /// With [`CAP_KEEPALIVE`]: the tunnels whose streams must not be kept alive.
    pub fn keepalive_off(&self) -> Option<std::collections::BTreeSet<String>> {
        self.has_capability(CAP_KEEPALIVE).then(|| {
            self.agent
                .split_whitespace()
                .filter_map(|w| w.strip_prefix(NO_KEEPALIVE))
                .map(str::to_string)
                .collect()
        })
    }
}

impl std::fmt::Display for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the token.
        write!(
            f,
            "hello v{} from `{}` with {} tunnels",
            self.version,
            self.agent,
            self.tunnels.len()
        )
    }
}

/// The outcome of one requested tunnel. Unknown fields are ignored, so a later tunneld may
/// add some without breaking this tunnelc.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelStatus {
    pub name: String,
    /// The public endpoint, when the tunnel is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Why the tunnel was refused, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The name a subdomain frontend gave the tunnel (asked for or picked by tunneld), so
    /// tunnelc can ask for it again after a reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// The refusal is temporary (the port is held by another program) and tunneld claims
    /// it again on its own while the session lasts; a `tunnels` message tells the outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retrying: bool,
}

impl TunnelStatus {
    /// A tunnel that is up at `endpoint`.
    pub fn up(name: &str, endpoint: String, subdomain: Option<String>) -> Self {
        Self {
            name: name.to_string(),
            endpoint: Some(endpoint),
            error: None,
            subdomain,
            retrying: false,
        }
    }

    /// A tunnel tunneld refused, and why.
    pub fn refused(name: &str, error: String, retrying: bool) -> Self {
        Self {
            name: name.to_string(),
            endpoint: None,
            error: Some(error),
            subdomain: None,
            retrying,
        }
    }
}

/// Answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerHello {
    /// Authenticated. Individual tunnels may still have failed.
    Welcome {
        client_id: String,
        tunnels: Vec<TunnelStatus>,
        /// Seconds between keepalive pings the client should send.
        keepalive_secs: u64,
        /// The largest request and response heads tunneld lets through (`limits:`), so
        /// tunnelc sizes its end of the link and refuses a local service's larger head.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_request_head: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_response_head: Option<u32>,
    },
    /// Refused; the connection closes. `permanent` tells tunnelc not to retry.
    Rejected { reason: String, permanent: bool },
}

/// Messages on the control stream after the handshake, either way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Server to client: the set of tunnels changed (admin mappings added or removed).
    Tunnels {
        tunnels: Vec<TunnelStatus>,
    },
    /// Server to client, only to a tunnelc that named [`CAP_HANDOVER`]: this node is
    /// leaving (a cluster node drained with SIGTERM). The client opens a session to another
    /// server now; this one keeps carrying its open streams until the node closes it.
    Handover {
        reason: String,
    },
    /// Either way: the session is ending on purpose.
    Bye {
        reason: String,
    },
}

/// Answer of tunnelc to a stream header, before any payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a hello over the frame limit: permanent, since the same hello (a token
/// that long) can never pass.
pub fn oversized_hello(e: &FrameError) -> ServerHello {
    ServerHello::Rejected {
        reason: format!("the hello is too large ({e}): is the token right?"),
        permanent: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::StreamHeader;

    #[tokio::test]
    async fn frames_round_trip() {
        let header = StreamHeader {
            tunnel: "ssh".into(),
            target: Some("127.0.0.1:22".into()),
            visitor: "127.0.0.1:5000".parse().expect("addr"),
            public: "[::1]:20000".parse().expect("addr"),
            proxy_protocol: Some(proxy_protocol::Version::V2),
        };
        let bytes = encode_frame(&header).expect("encode");
        let back: StreamHeader = read_frame(&mut &bytes[..]).await.expect("decode");
        assert_eq!(back, header);
        let ctl = Control::Ping { seq: 7 };
        let bytes = encode_frame(&ctl).expect("encode");
        assert_eq!(
            read_frame::<Control, _>(&mut &bytes[..])
                .await
                .expect("decode"),
            ctl
        );
    }

    #[tokio::test]
    async fn rejects_oversized_and_malformed() {
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        let err = read_frame::<Control, _>(&mut &huge[..])
            .await
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"{nope");
        let err = read_frame::<Control, _>(&mut &garbage[..])
            .await
            .expect_err("malformed");
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        let truncated = [0u8, 0, 0, 9, b'{'];
        let err = read_frame::<Control, _>(&mut &truncated[..])
            .await
            .expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = read_magic(&mut &b"GET / HTTP/1.1\r\n"[..])
            .await
            .expect_err("magic");
        assert!(matches!(err, FrameError::BadMagic));
        let err = read_frame::<Control, _>(&mut &b""[..])
            .await
            .expect_err("closed");
        assert!(matches!(err, FrameError::Closed));
    }
}
