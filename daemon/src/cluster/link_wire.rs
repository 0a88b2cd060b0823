//! One visitor stream on a link: the asking node writes a [`LinkRequest`] line, the holding
//! node answers a [`LinkReply`] line, then the stream carries the visitor's bytes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tunneld_core::session::{OpenError, StreamHeader};

/// Longest request or reply line.
pub const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The route's key in the shared table, or `park:<id>` for a connection parked for a
    /// rendezvous id.
    pub route: String,
    /// The visitor's stream header (routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<StreamHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// HTTP mode: after the reply the stream carries HTTP/1.1 requests, each forwarded by the
    /// holding node with its target's `request` (an HTTP-only session, such as a 2ptth
    /// upstream, has no byte streams to splice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
}

/// The response header of an HTTP-mode stream that carries the holding node's refusal (a
/// [`LinkReply`] as JSON) instead of the service's answer.
pub const HTTP_ERROR_HEADER: &str = "tunneld-link-error";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkReply {
    /// `ok`, or an [`OpenError::reason`] label.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl LinkReply {
    pub fn ok() -> Self {
        Self {
            result: "ok".into(),
            message: String::new(),
        }
    }

    pub fn of(e: &OpenError) -> Self {
        let message = match e {
            OpenError::Session(m) | OpenError::LocalRefused(m) => m.clone(),
            _ => String::new(),
        };
        Self {
            result: e.reason().into(),
            message,
        }
    }

    /// The error the asking node reports: the holder's, as near as the label allows.
    pub fn into_result(self) -> Result<(), OpenError> {
        Err(match self.result.as_str() {
            "ok" => return Ok(()),
            "offline" => OpenError::Offline,
            "local_refused" => OpenError::LocalRefused(self.message),
            "timeout" => OpenError::Timeout,
            "too_many_streams" => OpenError::TooManyStreams,
            "stream_cap" => OpenError::Capped("at the node holding the tunnel"),
            "no_route" => OpenError::NoRoute(None),
            other => OpenError::Session(format!(
                "the node holding the tunnel: {other} {}",
                self.message
            )),
        })
    }
}

/// Writes `v` as one JSON line.
pub async fn write_line<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes, byte by byte (what follows it is the
/// visitor's data and stays in the stream).
pub async fn read_line<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<T> {
    let mut line = Vec::with_capacity(256);
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("link line longer than {MAX_LINE} bytes"),
            ));
        }
        line.push(b);
    }
    serde_json::from_slice(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed link line: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_round_trip_and_bad_ones_are_named() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        write_line(&mut a, &LinkReply::ok()).await.expect("write");
        a.write_all(b"data").await.expect("write");
        let r: LinkReply = read_line(&mut b).await.expect("read");
        assert!(r.into_result().is_ok());
        let mut rest = [0u8; 4];
        b.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"data");
        a.write_all(b"{nope\n").await.expect("write");
        let e = read_line::<_, LinkReply>(&mut b).await.expect_err("bad");
        assert!(e.to_string().contains("malformed link line"), "{e}");
        a.write_all(&vec![b'x'; MAX_LINE + 1]).await.expect("write");
        let e = read_line::<_, LinkReply>(&mut b).await.expect_err("long");
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = LinkReply::of(&OpenError::LocalRefused("refused".into())).into_result();
        assert!(matches!(e, Err(OpenError::LocalRefused(m)) if m == "refused"));
    }
}
