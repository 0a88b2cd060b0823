//! Replay: an inspected request sent again to the local service that answered it, as it was
//! or edited, over a new connection with the inspector's tap on it, so the replay is an
//! exchange of its own (`replay_of` names the original).

use super::store::Exchange;
use super::tap::{Recorder, Tap};
use super::Inspector;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_core::http1::RequestHead;

/// The longest a replay waits for the local service, connect to last byte.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request as the edit form sent it.
#[derive(Debug, Default)]
pub struct Edit {
    pub method: String,
    pub target: String,
    /// `Name: value` lines.
    pub headers: String,
    /// `None`: the original body, byte for byte (a binary one cannot be edited as text).
    pub body: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the request body was cut at {0} bytes (inspect.max_body), and a replay needs all of it: edit the request to send a body")]
    Truncated(usize),
    #[error("the request body never arrived whole (the connection ended, or the request is still arriving): edit the request to send a body")]
    Incomplete,
    #[error("an upgrade (WebSocket) or CONNECT request cannot be replayed")]
    Upgrade,
    #[error("method {0:?} is not an HTTP method token")]
    Method(String),
    #[error(
        "target {0:?}: a request target is one word of printable characters, such as /path?query"
    )]
    Target(String),
    #[error(
        "header line {0:?}: expected `Name: value` with a token name and no control characters"
    )]
    Header(String),
    #[error("cannot connect to {local}: {error}")]
    Connect {
        local: String,
        error: std::io::Error,
    },
    #[error("{local}: {error}")]
    Io {
        local: String,
        error: std::io::Error,
    },
    #[error("{0} did not answer within {REPLAY_TIMEOUT:?}")]
    Timeout(String),
}

impl ReplayError {
    /// Whether the local service (not the request) is why: a 502 rather than a 400.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            ReplayError::Connect { .. } | ReplayError::Io { .. } | ReplayError::Timeout(_)
        )
    }
}

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The bytes of `original` sent again: its head with `Connection: close`, and its body as it
/// crossed the wire.
fn as_it_was(original: &Exchange) -> Result<Vec<u8>, ReplayError> {
    let req = &original.request;
    if req.method.eq_ignore_ascii_case("CONNECT") || req.values("upgrade").next().is_some() {
        return Err(ReplayError::Upgrade);
    }
    if original.request_body.truncated {
        return Err(ReplayError::Truncated(original.request_body.bytes.len()));
    }
    if !original.request_body.complete {
        return Err(ReplayError::Incomplete);
    }
    let mut out = closing(req);
    out.extend_from_slice(&original.request_body.bytes);
    Ok(out)
}

/// `head` encoded with `Connection: close` in place of its connection fields.
fn closing(head: &RequestHead) -> Vec<u8> {
    let mut out = head.encode_without(&["connection", "keep-alive"]);
    out.truncate(out.len().saturating_sub(2));
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// The bytes of an edited request: framing fields are tunnelc's (Content-Length from the
/// body), every other field as typed.
fn edited(e: &Edit, original: &Exchange) -> Result<Vec<u8>, ReplayError> {
    let method = e.method.trim();
    if !token(method) {
        return Err(ReplayError::Method(method.to_string()));
    }
    let target = e.target.trim();
    if target.is_empty() || target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ReplayError::Target(target.to_string()));
    }
    let mut headers = Vec::new();
    for line in e
        .headers
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
    {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReplayError::Header(line.to_string()));
        };
        let value = value.trim();
        if !token(name) || value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ReplayError::Header(line.to_string()));
        }
        let framing = [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
        ];
        if !framing.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            headers.push((name.to_string(), value.as_bytes().to_vec()));
        }
    }
    let kept;
    let body = match &e.body {
        Some(text) => text.as_bytes(),
        None if original.request_body.truncated => {
            return Err(ReplayError::Truncated(original.request_body.bytes.len()))
        }
        None if !original.request_body.complete => return Err(ReplayError::Incomplete),
        None => {
            kept = super::view::payload(&original.request_body);
            &kept
        }
    };
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        headers.push(("Content-Length".into(), body.len().to_string().into_bytes()));
    }
    let head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor: 1,
        headers,
    };
    let mut out = closing(&head);
    out.extend_from_slice(body);
    Ok(out)
}

/// Sends `original` (or its edit) again to its local service; the new exchange's id.
pub async fn replay(
    inspector: &Inspector,
    original: &Exchange,
    edit: Option<&Edit>,
) -> Result<u64, ReplayError> {
    let bytes = match edit {
        None => as_it_was(original)?,
        Some(e) => edited(e, original)?,
    };
    let local = original.local.clone();
    let work = async {
        let mut s = TcpStream::connect(&local)
            .await
            .map_err(|error| ReplayError::Connect {
                local: local.clone(),
                error,
            })?;
        let _ = s.set_nodelay(true);
        let io_err = |error| ReplayError::Io {
            local: local.clone(),
            error,
        };
        if let Some(proxy) = &original.proxy_header {
            s.write_all(proxy).await.map_err(io_err)?;
        }
        let store = inspector.store.clone();
        let proxy = original.proxy_header.clone();
        let rec = Recorder::new(store, &original.tunnel, &local, proxy, Some(original.id));
        let mut tap = Tap::new(s, rec);
        tap.write_all(&bytes).await.map_err(io_err)?;
        let mut buf = vec![0u8; 16 * 1024];
        // Until the response ended (or the service closed: `Connection: close`).
        while tap.recorder().completed() == 0 {
            if tap.read(&mut buf).await.map_err(io_err)? == 0 {
                break;
            }
        }
        Ok(tap.recorder().first_id())
    };
    match tokio::time::timeout(REPLAY_TIMEOUT, work).await {
        Ok(Ok(Some(id))) => Ok(id),
        Ok(Ok(None)) => Err(ReplayError::Io {
            local,
            error: std::io::Error::other("the request was not recorded"),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReplayError::Timeout(local)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::store::{Body, Caps, Store};
    use std::sync::Arc;

    /// A recorded POST with `body` (complete or not).
    fn original(body: &[u8], complete: bool) -> Arc<Exchange> {
        let s = Store::new(Caps {
            max_requests: 4,
            max_body: 1024,
            max_memory: 1 << 20,
        });
        let head = RequestHead {
            method: "POST".into(),
            target: "/in".into(),
            minor: 1,
            headers: vec![
                ("Host".into(), b"app".to_vec()),
                ("Content-Length".into(), body.len().to_string().into_bytes()),
                ("Connection".into(), b"keep-alive".to_vec()),
            ],
        };
        let id = s.begin("web", "127.0.0.1:1", None, head, None);
        let body = Body {
            bytes: body.to_vec(),
            wire_len: body.len() as u64,
            complete,
            ..Body::default()
        };
        s.update(id, |e| e.request_body = body);
        s.get(id).expect("kept")
    }

    #[test]
    fn an_edit_gets_its_own_framing_and_bad_lines_are_named() {
        let orig = original(b"\x00\x01", true);
        let e = Edit {
            method: "POST".into(),
            target: "/hook?x=1".into(),
            headers: "Host: app\nContent-Length: 99\nX-Trace: a b\n".into(),
            body: Some("{}\r\n".into()),
        };
        let out = String::from_utf8(edited(&e, &orig).expect("valid")).expect("text");
        assert_eq!(
            out,
            "POST /hook?x=1 HTTP/1.1\r\nHost: app\r\nX-Trace: a b\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{}\r\n"
        );
        // No body field: the original bytes, binary as they were.
        let keep = Edit { body: None, ..e };
        assert!(edited(&keep, &orig)
            .expect("valid")
            .ends_with(b"Content-Length: 2\r\nConnection: close\r\n\r\n\x00\x01"));
        let bad = Edit {
            headers: "Host app".into(),
            ..keep
        };
        assert!(matches!(edited(&bad, &orig), Err(ReplayError::Header(l)) if l == "Host app"));
        let bad = Edit {
            method: "GE T".into(),
            target: "/".into(),
            ..Edit::default()
        };
        assert!(matches!(edited(&bad, &orig), Err(ReplayError::Method(_))));
    }

    #[test]
    fn a_body_that_never_arrived_whole_is_not_replayed_as_it_was() {
        let whole = original(b"abc", true);
        let sent = as_it_was(&whole).expect("whole");
        assert!(
            sent.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"),
            "{sent:?}"
        );
        let partial = original(b"ab", false);
        assert!(matches!(as_it_was(&partial), Err(ReplayError::Incomplete)));
        let keep = Edit {
            method: "POST".into(),
            target: "/".into(),
            ..Edit::default()
        };
        assert!(matches!(
            edited(&keep, &partial),
            Err(ReplayError::Incomplete)
        ));
    }
}
