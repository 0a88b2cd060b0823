//! node-rendezvous visitors: the request's Digest or Basic username (or `?rendezvous=<ID>` on
//! a WebSocket upgrade) names the id; the request goes to a parked connection intact, minus
//! `Authorization`, with whatever body bytes already arrived, and then the two connections
//! are spliced (the original lost bodies it had read).

use crate::frontend::Inner;
use crate::respond::{response, send, skip_body};
use crate::visitor_auth::{parse_authorization, Credentials, NonceError};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tunneld_core::http1::{Framing, RequestHead};
use tunneld_core::idle::splice_until_idle;
use tunneld_core::io::BoxIo;
use tunneld_core::splice::SpliceCounters;

/// Largest body skipped to keep a connection open after a refusal.
/// A refused request's body up to this size is read and discarded so the connection stays
/// usable: clients such as Python's urllib send the whole body before they read the `401`
/// and then send it again with credentials.
const MAX_SKIP: u64 = 16 << 20;
/// How long discarding such a body may take.
const SKIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) enum Next {
    /// Answered; read the next request on this connection.
    Request,
    /// Answered; the connection is finished.
    Done,
    /// Matched: splice with this parked connection after writing the prelude.
    /// The parked connection, the request to replay to it, and the rendezvous id.
    Splice(BoxIo, Vec<u8>, String),
}

/// The id in `?rendezvous=<ID>` of a WebSocket upgrade.
pub fn query_id(head: &RequestHead) -> Option<String> {
    if !head.has_token("upgrade", "websocket") {
        return None;
    }
    let (_, query) = head.target.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("rendezvous="))
        .map(str::to_string)
}

/// A refusal to send.
struct Answer<'a> {
    code: u16,
    extra: Vec<String>,
    content_type: &'a str,
    body: &'a str,
}

fn text(code: u16, extra: Vec<String>, body: &str) -> Answer<'_> {
    Answer {
        code,
        extra,
        content_type: "text/plain",
        body,
    }
}

fn not_registered() -> Answer<'static> {
    Answer {
        code: 404,
        extra: Vec::new(),
        content_type: "application/json",
        body: NOT_REGISTERED,
    }
}

const NOT_REGISTERED: &str = r#"{"error":{"permanent":false,"diagnostic":"UUID not registered"}}"#;

/// Answers a refused request; keeps the connection when its body (if any) can be skipped.
async fn refuse(
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    framing: Framing,
    a: Answer<'_>,
) -> Next {
    let Answer {
        code,
        extra,
        content_type,
        body,
    } = a;
    let extra = &extra[..];
    let keep = !head.closes()
        && match framing {
            Framing::None => true,
            Framing::Length(n) => n <= MAX_SKIP,
            Framing::Chunked => false,
        };
    send(io, &response(code, extra, content_type, body, !keep), !keep).await;
    if !keep {
        return Next::Done;
    }
    if let Framing::Length(n) = framing {
        let skipped = tokio::time::timeout(SKIP_TIMEOUT, skip_body(io, buf, n)).await;
        if !matches!(skipped, Ok(true)) {
            return Next::Done;
        }
    }
    Next::Request
}

pub(crate) async fn serve(
    inner: &Inner,
    io: &mut BoxIo,
    head: RequestHead,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
) -> Next {
    let framing = match head.framing() {
        Ok(f) => f,
        Err(e) => {
            inner.visitor_outcome("bad_framing");
            let body = format!("{e}\n");
            send(io, &response(400, &[], "text/plain", &body, true), true).await;
            return Next::Done;
        }
    };
    let challenge = |stale: bool| {
        vec![format!(
            "WWW-Authenticate: {}",
            inner.nonces.challenge(stale)
        )]
    };
    let id = match (query_id(&head), head.header("authorization")) {
        (Some(id), _) => id,
        (None, None) => {
            inner.visitor_outcome("challenged");
            return refuse(
                io,
                buf,
                &head,
                framing,
                text(
                    401,
                    challenge(false),
                    "credentials needed: the username is the rendezvous id\n",
                ),
            )
            .await;
        }
        (None, Some(value)) => match parse_authorization(value) {
            Err(e) => {
                inner.visitor_outcome("bad_credentials");
                let body = format!("{e}\n");
                return refuse(io, buf, &head, framing, text(401, challenge(false), &body)).await;
            }
            Ok(Credentials::Digest {
                username,
                nonce,
                nc,
                opaque,
            }) => match inner.nonces.check(&nonce, nc, opaque.as_deref()) {
                Ok(()) => username,
                Err(e) => {
                    inner.visitor_outcome(e.reason());
                    let stale = e == NonceError::Stale;
                    let body = format!("nonce refused: {}\n", e.reason());
                    return refuse(io, buf, &head, framing, text(401, challenge(stale), &body))
                        .await;
                }
            },
            Ok(Credentials::Basic { username }) => username,
        },
    };
    let entry = match inner.registry.ids.lookup_strict(&id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            inner.visitor_outcome("unknown_id");
            return refuse(io, buf, &head, framing, not_registered()).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read rendezvous ids");
            inner.visitor_outcome("store_error");
            let body = "rendezvous ids cannot be read now; try again\n";
            return refuse(io, buf, &head, framing, text(503, Vec::new(), body)).await;
        }
    };
    let Some(parked) = inner
        .registry
        .take(&id, &entry, inner.cfg.visitor_wait)
        .await
    else {
        inner.visitor_outcome("nothing_parked");
        return refuse(io, buf, &head, framing, not_registered()).await;
    };
    inner.visitor_outcome("matched");
    tracing::debug!(frontend = %inner.name, %id, %peer, "visitor matched a parked connection");
    let mut prelude = head.encode_without(&["authorization"]);
    prelude.append(buf);
    Next::Splice(parked, prelude, id.to_string())
}

/// Writes the visitor's request to the parked connection and splices the two.
pub(crate) async fn splice_to(
    inner: &Inner,
    mut visitor: BoxIo,
    mut parked: BoxIo,
    prelude: Vec<u8>,
    id: &str,
) {
    let m = &inner.metrics;
    let active = m.streams_active.with_label_values(&[&inner.name]);
    m.streams_opened_total
        .with_label_values(&[&inner.name])
        .inc();
    if parked.write_all(&prelude).await.is_err() {
        return;
    }
    let prelude_len = prelude.len() as u64;
    // Not held while the visitor is spliced.
    drop(prelude);
    let counters = SpliceCounters {
        a_to_b: Some(m.bytes_total.with_label_values(&[&inner.name, "in"])),
        b_to_a: Some(m.bytes_total.with_label_values(&[&inner.name, "out"])),
        tunnel: m.tunnel_stream(&inner.name, id),
    };
    counters.count_in(prelude_len);
    active.inc();
    let idled = m
        .visitors_idle_closed_total
        .with_label_values(&[&inner.name]);
    let idle = inner.limits.get().idle_timeout;
    if let Err(e) = splice_until_idle(&mut visitor, &mut parked, counters, idle, &idled).await {
        tracing::debug!(frontend = %inner.name, error = %e, "rendezvous splice ended with an error");
    }
    active.dec();
}
