//! The hidden-server side of a rendezvous: `CONNECT uuid:<ID>?response=<TOTP> HTTP/1.1`,
//! answered exactly as node-rendezvous did, then the socket waits in the registry until a
//! visitor takes it.
//!
//! Answers: `HTTP/1.1 200\r\n\r\n` (no reason phrase) on success; on error a raw
//! `HTTP/1.1 <code>\r\n\r\n` and `{"error":{"permanent":false,"diagnostic":"..."}}`, then the
//! socket closes. 403: the target is not `uuid:`; 407: no `response`; 409: bytes sent before
//! the answer; 401: unknown id, wrong or reused code; 429: too many failed attempts; 503: a
//! token-parking client already has `max_parked_per_id` connections parked from its address.
//!
//! tunnelc may instead send `Proxy-Authorization: Bearer <token>` (or present a client
//! certificate) for an id whose `client` is its own: TOTP codes are single-use, which would
//! allow only a few parked connections per step.

use crate::ids::IdEntry;
use crate::registry::{CodeRefusal, Handoff, Registry, Ticket};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::Authenticator;
use tunneld_core::http1::RequestHead;
use tunneld_core::io::BoxIo;
pub use tunneld_core::parking::{error_answer, Parker, Parking};

/// How long a connection parked with a TOTP code waits after the `200` before a visitor may
/// take it (see [`serve`]).
pub const PARK_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a parked connection checks that its id still exists with the same secret.
pub const REVALIDATE: std::time::Duration = std::time::Duration::from_secs(30);

/// The success answer, byte for byte.
pub const PARKED: &[u8] = b"HTTP/1.1 200\r\n\r\n";

/// Splits `uuid:<ID>?response=<CODE>` into the id and the code.
pub fn parse_target(target: &str) -> Option<(&str, Option<&str>)> {
    // The original matched `uuid:` in any case.
    let rest = target
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("uuid:"))
        .map(|_| &target[5..])?;
    let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
    let code = query.split('&').find_map(|kv| kv.strip_prefix("response="));
    Some((id, code))
}

async fn refuse(reg: &Registry, io: &mut BoxIo, code: u16, outcome: &str, diagnostic: &str) {
    reg.metrics_park(outcome);
    tracing::debug!(code, outcome, diagnostic, "rendezvous park refused");
    let _ = io.write_all(&error_answer(code, diagnostic)).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

/// Why a park request is refused: the status, the metric outcome and the diagnostic.
struct Refusal(u16, &'static str, String);

/// Answers one hidden-server CONNECT and, when it parks, holds the socket until a visitor
/// takes it, the peer closes, a newer connection evicts it, or `shutdown` fires.
pub async fn serve(
    reg: Arc<Registry>,
    auth: &std::sync::Arc<Authenticator>,
    mut io: BoxIo,
    head: RequestHead,
    surplus: Vec<u8>,
    who: Parker,
    shutdown: CancellationToken,
) {
    let Some((id, code)) = parse_target(&head.target) else {
        return refuse(
            &reg,
            &mut io,
            403,
            "forbidden_target",
            "request-target must be uuid:<ID>",
        )
        .await;
    };
    if !surplus.is_empty() {
        return refuse(
            &reg,
            &mut io,
            409,
            "early_data",
            "data sent before the answer to CONNECT",
        )
        .await;
    }
    let entry = match reg.ids.lookup_strict(id).await {
        Ok(e) => e,
        Err(e) => {
            let msg = format!("rendezvous ids cannot be read now: {e}");
            return refuse(&reg, &mut io, 503, "store_error", &msg).await;
        }
    };
    let bearer = head
        .header("proxy-authorization")
        .and_then(|v| tunneld_core::auth::scheme_param(v, "Bearer"));
    let by_client = bearer.is_some() || (code.is_none() && who.cert_cn.is_some());
    let allowed = if by_client {
        authorize_client(&reg, auth, id, entry.as_ref(), bearer, &who).await
    } else {
        authorize_code(&reg, id, entry.as_ref(), code, &who).await
    };
    if let Err(Refusal(status, outcome, msg)) = allowed {
        return refuse(&reg, &mut io, status, outcome, &msg).await;
    }
    // A client's connection is parked before its `200`, checked and queued at once: tunnelc
    // asking for more than the server keeps would evict its own connections forever, so it
    // is told instead (an original hidden server evicts its oldest, as before).
    let early = match (&entry, by_client) {
        (Some(e), true) => match reg.park_unless_full(id, e, who.peer) {
            Some(parked) => Some(parked),
            None => {
                let msg = format!(
                    "id `{id}` already has {} connections parked from {} (rendezvous.max_parked_per_id); lower `parked` in tunnelc's config",
                    reg.max_parked(),
                    who.peer
                );
                return refuse(&reg, &mut io, 503, "full", &msg).await;
            }
        },
        _ => None,
    };
    if io.write_all(PARKED).await.is_err() || io.flush().await.is_err() {
        return;
    }
    reg.metrics_park("ok");
    tracing::debug!(%id, peer = %who.peer, "hidden server parked");
    if !by_client && !settle(&reg, &mut io, &shutdown).await {
        return;
    }
    let Some(entry) = entry else {
        return;
    };
    let parked = match early {
        Some(p) => p,
        None => reg.park(id, &entry, who.peer),
    };
    hold(&reg, io, id, &entry, parked, &shutdown).await;
}

/// A hidden server parking with its tunnel client's credentials (a token, or a client
/// certificate) for an id whose `client` is that client.
async fn authorize_client(
    reg: &Registry,
    auth: &Authenticator,
    id: &str,
    entry: Option<&IdEntry>,
    bearer: Option<&str>,
    who: &Parker,
) -> Result<(), Refusal> {
    if let Err(wait) = reg.throttle.check(who.peer) {
        let msg = tunneld_core::hub::throttled_reason(who.peer, wait);
        return Err(Refusal(429, "throttled", msg));
    }
    let identity = match auth
        .authenticate_async(bearer, who.cert_cn.as_deref())
        .await
    {
        Ok(i) => i,
        Err(e @ tunneld_core::auth::AuthError::Unavailable(_)) => {
            return Err(Refusal(503, "store_error", e.to_string()));
        }
        Err(e) => {
            if e.is_guess() {
                reg.throttle.failed(who.peer);
            }
            return Err(Refusal(401, "unauthorized", e.to_string()));
        }
    };
    match entry {
        Some(e) if e.client.as_deref() == Some(identity.client_id.as_str()) => Ok(()),
        _ => Err(Refusal(
            401,
            "unauthorized",
            format!(
                "client `{}` may not park for id `{id}` (the id is unknown or belongs to another client)",
                identity.client_id
            ),
        )),
    }
}

/// A hidden server parking with a TOTP code, as node-rendezvous's did.
async fn authorize_code(
    reg: &Registry,
    id: &str,
    entry: Option<&IdEntry>,
    code: Option<&str>,
    who: &Parker,
) -> Result<(), Refusal> {
    let Some(code) = code else {
        return Err(Refusal(
            407,
            "missing_response",
            "the response parameter (TOTP code) is missing".into(),
        ));
    };
    let checked = reg.check_code(id, entry, code, who.peer);
    if let Ok(Some(counter)) = checked {
        reg.ids.remember_code(id, counter, who.peer).await;
    }
    let Err(r) = checked else {
        return Ok(());
    };
    let (status, msg) = match r {
        CodeRefusal::Replayed => (
            401,
            "this code was already used; wait for the next one".to_string(),
        ),
        CodeRefusal::LockedOut {
            retry_after,
            by_address,
        } => (
            429,
            if by_address {
                format!(
                    "too many failed attempts from {}; retry in {} s",
                    who.peer,
                    retry_after.as_secs().max(1)
                )
            } else {
                format!(
                    "too many failed attempts for id `{id}`; retry in {} s",
                    retry_after.as_secs().max(1)
                )
            },
        ),
        _ => (401, "unknown id or wrong code".to_string()),
    };
    Err(Refusal(status, r.reason(), msg))
}

/// node-rendezvous's hidden server reads the answer with Node's CONNECT client, which hands
/// bytes that arrive with the `200` to a `head` argument the original ignores: a visitor's
/// request written right behind the answer would never be read. So a code-parked
/// connection takes visitors only after a moment, as the original server's did (its
/// visitors always came later). tunnelc reads both. False when the connection ended.
async fn settle(reg: &Registry, io: &mut BoxIo, shutdown: &CancellationToken) -> bool {
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(PARK_SETTLE) => true,
        r = io.read(&mut probe) => {
            let reason = match r {
                Ok(0) | Err(_) => "closed",
                Ok(_) => "early_data",
            };
            reg.metrics_dropped(reason);
            false
        }
        _ = shutdown.cancelled() => false,
    }
}

/// Holds a parked connection until a visitor takes it, or it is dropped (closed, evicted,
/// early data, shutdown, or its id removed or rotated).
async fn hold(
    reg: &Arc<Registry>,
    mut io: BoxIo,
    id: &str,
    entry: &IdEntry,
    (ticket, handoff): (Ticket, oneshot::Receiver<Handoff>),
    shutdown: &CancellationToken,
) {
    let mut probe = [0u8; 1];
    // A parked connection ends when its id is removed or its secret changes (checked every
    // REVALIDATE; visitors never take a stale one meanwhile, they check at each take), so
    // `rendezvous remove` and `rotate` close what the old id parked.
    let revoked = async {
        loop {
            tokio::time::sleep(REVALIDATE).await;
            match reg.ids.lookup_strict(id).await {
                Ok(Some(now)) if now.secret == entry.secret => {}
                // A store that cannot be read says nothing about the id: keep the connection
                // (a visitor checks the id again before it takes it).
                Err(_) => {}
                Ok(_) => return,
            }
        }
    };
    let reason = tokio::select! {
        h = handoff => match h {
            Ok(back) => {
                drop(ticket);
                let _ = back.send(io);
                return;
            }
            Err(_) => "evicted",
        },
        r = io.read(&mut probe) => match r {
            Ok(0) | Err(_) => "closed",
            Ok(_) => "early_data",
        },
        _ = shutdown.cancelled() => "shutdown",
        _ = revoked => "revoked",
    };
    drop(ticket);
    if reason != "evicted" {
        reg.metrics_dropped(reason);
    }
    tracing::debug!(%id, reason, "parked connection dropped");
}

/// The registry as the `connect` transport sees it.
#[async_trait]
impl Parking for Registry {
    async fn serve_parking(
        self: Arc<Self>,
        auth: &Arc<Authenticator>,
        io: BoxIo,
        head: RequestHead,
        surplus: Vec<u8>,
        who: Parker,
        shutdown: CancellationToken,
    ) {
        serve(self, auth, io, head, surplus, who, shutdown).await
    }
}

impl Registry {
    pub(crate) fn metrics_park(&self, outcome: &str) {
        self.metrics()
            .rendezvous_park_requests_total
            .with_label_values(&[outcome])
            .inc();
    }

    pub(crate) fn metrics_dropped(&self, reason: &str) {
        self.own
            .rendezvous_parked_dropped_total
            .with_label_values(&[reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_answers() {
        assert_eq!(
            parse_target("uuid:abc?response=123456"),
            Some(("abc", Some("123456")))
        );
        assert_eq!(
            parse_target("uuid:abc?x=1&response=12"),
            Some(("abc", Some("12")))
        );
        assert_eq!(parse_target("uuid:abc"), Some(("abc", None)));
        assert_eq!(
            parse_target("UUID:abc?response=1"),
            Some(("abc", Some("1")))
        );
        assert_eq!(parse_target("uuid"), None);
        assert_eq!(parse_target("uuidé:x"), None);
        assert_eq!(parse_target("example.com:443"), None);
        assert_eq!(
            error_answer(403, "no"),
            b"HTTP/1.1 403\r\n\r\n{\"error\":{\"permanent\":false,\"diagnostic\":\"no\"}}".to_vec()
        );
    }
}
