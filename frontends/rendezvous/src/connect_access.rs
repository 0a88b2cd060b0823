//! `CONNECT <tunnel>:<port>`: a raw byte stream to a tunnel that claimed its name on this
//! frontend, whatever transport carries it (or to a rendezvous id's parked connection). Only
//! registered names are reachable: addresses and loopback names are refused outright, and
//! tunneld never opens an outbound connection for a visitor. The port is not used for
//! routing: each name has one local service, chosen by its tunnel client.

use crate::config::AccessMode;
use crate::frontend::Inner;
use crate::names::{forbidden_host, Route};
use crate::respond::{response, send};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tunneld_core::auth::{basic_credentials, matches_digest, scheme_param};
use tunneld_core::http1::RequestHead;
use tunneld_core::idle::splice_until_idle;
use tunneld_core::io::BoxIo;
use tunneld_core::session::{OpenError, StreamHeader};
use tunneld_core::splice::SpliceCounters;

fn outcome(inner: &Inner, o: &str) {
    inner
        .registry
        .own
        .connect_requests_total
        .with_label_values(&[&inner.name, o])
        .inc();
}

async fn refuse(inner: &Inner, io: &mut BoxIo, code: u16, o: &str, msg: &str) {
    outcome(inner, o);
    let extra = if code == 407 {
        vec!["Proxy-Authenticate: Basic realm=\"tunneld\"".to_string()]
    } else {
        Vec::new()
    };
    let body = format!("{msg}\n");
    send(io, &response(code, &extra, "text/plain", &body, true), true).await;
}

/// `host:port` of a CONNECT target.
#[doc(hidden)]
pub fn authority(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then_some((host, port))
}

/// Checks `Proxy-Authorization` against the access policy for `name`.
fn allowed(
    inner: &Inner,
    head: &RequestHead,
    name: &str,
) -> Result<(), (u16, &'static str, String)> {
    let presented = head.header("proxy-authorization").map(str::trim);
    match inner.cfg.connect_access.auth {
        AccessMode::None => Ok(()),
        AccessMode::Basic => {
            let ok = presented
                .and_then(|v| scheme_param(v, "Basic"))
                .and_then(|b| basic_credentials(b).ok())
                .and_then(|(u, p)| {
                    inner
                        .users
                        .get(&u.to_ascii_lowercase())
                        .map(|d| matches_digest(&p, d))
                })
                .unwrap_or(false);
            if ok {
                Ok(())
            } else {
                Err((
                    407,
                    "unauthorized",
                    "Proxy-Authorization: Basic with a configured user is required".into(),
                ))
            }
        }
        AccessMode::Token => {
            let Some(digest) = inner.tokens.get(&name.to_ascii_lowercase()) else {
                return Err((
                    403,
                    "no_token",
                    format!(
                        "tunnel `{name}` takes no CONNECT visitors (no token configured for it)"
                    ),
                ));
            };
            let ok = presented
                .and_then(|v| scheme_param(v, "Bearer"))
                .is_some_and(|t| matches_digest(t, digest));
            if ok {
                Ok(())
            } else {
                Err((
                    407,
                    "unauthorized",
                    format!("Proxy-Authorization: Bearer with tunnel `{name}`'s token is required"),
                ))
            }
        }
    }
}

/// Answers a `CONNECT <tunnel>:<port>`: parse and authorize the target, route it to a
/// rendezvous id's parked connection or a tunnel name, then splice.
pub(crate) async fn serve(
    inner: &Inner,
    mut io: BoxIo,
    head: RequestHead,
    surplus: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
) {
    // The steps before the splice run boxed, each only while it runs: inline, the largest
    // of them would size this visitor's task for as long as it is spliced.
    let Some(host) = Box::pin(target(inner, &mut io, &head)).await else {
        return;
    };
    if !Box::pin(authorize(inner, &mut io, &head, &host, peer)).await {
        return;
    }
    drop(head);
    let started = Instant::now();
    let Some(mut stream) = Box::pin(route(inner, &mut io, &host, peer, local)).await else {
        return;
    };
    splice(inner, &mut io, &mut stream, surplus, &host, started).await;
}

/// The tunnel name of the CONNECT target, or `None` once the target is refused.
async fn target(inner: &Inner, io: &mut BoxIo, head: &RequestHead) -> Option<String> {
    let Some((host, _port)) = authority(&head.target) else {
        refuse(
            inner,
            io,
            400,
            "bad_target",
            "CONNECT needs <tunnel-name>:<port>",
        )
        .await;
        return None;
    };
    let host = host.to_string();
    if forbidden_host(&host) {
        refuse(
            inner,
            io,
            403,
            "forbidden",
            &format!("`{host}` is not reachable: only registered tunnel names are"),
        )
        .await;
        return None;
    }
    Some(host)
}

/// The failed-authentication throttle, then the access policy; `false` once refused.
async fn authorize(
    inner: &Inner,
    io: &mut BoxIo,
    head: &RequestHead,
    host: &str,
    peer: SocketAddr,
) -> bool {
    // Wrong credentials count against the address, with every other failure.
    if let Err(wait) = inner.registry.throttle.check(peer.ip()) {
        let msg = tunneld_core::hub::throttled_reason(peer.ip(), wait);
        refuse(inner, io, 429, "throttled", &msg).await;
        return false;
    }
    if let Err((code, o, msg)) = allowed(inner, head, host) {
        // Only credentials that were sent and wrong count (a first try without any is how
        // proxy clients learn the scheme).
        if code == 407 && head.header("proxy-authorization").is_some() {
            inner.registry.throttle.failed(peer.ip());
        }
        refuse(inner, io, code, o, &msg).await;
        return false;
    }
    true
}

/// The stream to `host`: a rendezvous id's parked connection, else a tunnel name's; `None`
/// once refused.
async fn route(
    inner: &Inner,
    io: &mut BoxIo,
    host: &str,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<BoxIo> {
    // A rendezvous id first: names never shadow ids (claims of an id as a name are
    // refused; an id made later takes the label over).
    let found = match inner.registry.ids.lookup_strict(host).await {
        Ok(found) => found,
        Err(e) => {
            let msg = format!("rendezvous ids cannot be read now: {e}");
            refuse(inner, io, 503, "store_error", &msg).await;
            return None;
        }
    };
    if let Some(entry) = found {
        match inner
            .registry
            .take(host, &entry, inner.cfg.visitor_wait)
            .await
        {
            Some(s) => Some(s),
            None => {
                refuse(
                    inner,
                    io,
                    502,
                    "nothing_parked",
                    &format!("rendezvous id `{host}`: no hidden server is waiting"),
                )
                .await;
                None
            }
        }
    } else if let Some(route) = inner.names.lookup(host) {
        open_tunnel(inner, io, host, &route, peer, local).await
    } else if inner.names.reserved(host) {
        refuse(
            inner,
            io,
            502,
            "offline",
            &format!("tunnel `{host}`: the tunnel client is not connected"),
        )
        .await;
        None
    } else {
        refuse(
            inner,
            io,
            403,
            "unknown_name",
            &format!("`{host}` is not a tunnel name registered here"),
        )
        .await;
        None
    }
}

/// Opens a stream to the tunnel `route` within `open_timeout`; `None` once refused.
async fn open_tunnel(
    inner: &Inner,
    io: &mut BoxIo,
    host: &str,
    route: &Route,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<BoxIo> {
    let header = StreamHeader {
        tunnel: route.tunnel.clone(),
        target: None,
        visitor: peer,
        public: local,
        proxy_protocol: route.proxy_protocol,
    };
    match tokio::time::timeout(inner.cfg.open_timeout, route.target.open(header, None)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            let e_reason = e.reason();
            inner
                .metrics
                .stream_open_failures_total
                .with_label_values(&[&inner.name, e_reason])
                .inc();
            // What the tunnel client said (its local address, an OS error) stays in
            // tunneld's log: the visitor learns only what failed.
            tracing::debug!(frontend = %inner.name, %host, error = %e, "CONNECT to a tunnel failed");
            let what = match e {
                OpenError::LocalRefused(_) => {
                    "the tunnel client could not reach its local service".to_string()
                }
                OpenError::Session(_) => "the tunnel session failed".to_string(),
                e => e.to_string(),
            };
            refuse(
                inner,
                io,
                502,
                e_reason,
                &format!("tunnel `{host}`: {what}"),
            )
            .await;
            None
        }
        Err(_) => {
            refuse(
                inner,
                io,
                504,
                "timeout",
                &format!("tunnel `{host}`: the tunnel client did not answer in time"),
            )
            .await;
            None
        }
    }
}

/// Counts the opened stream, answers 200, forwards `surplus` and splices until idle.
async fn splice(
    inner: &Inner,
    io: &mut BoxIo,
    stream: &mut BoxIo,
    surplus: Vec<u8>,
    host: &str,
    started: Instant,
) {
    let m = &inner.metrics;
    m.stream_open_seconds
        .with_label_values(&[&inner.name])
        .observe(started.elapsed().as_secs_f64());
    m.streams_opened_total
        .with_label_values(&[&inner.name])
        .inc();
    if io
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
        || io.flush().await.is_err()
    {
        return;
    }
    outcome(inner, "ok");
    if !surplus.is_empty() && stream.write_all(&surplus).await.is_err() {
        return;
    }
    // Not held while the visitor is spliced.
    drop(surplus);
    let active = m.streams_active.with_label_values(&[&inner.name]);
    active.inc();
    let counters = SpliceCounters {
        a_to_b: Some(m.bytes_total.with_label_values(&[&inner.name, "in"])),
        b_to_a: Some(m.bytes_total.with_label_values(&[&inner.name, "out"])),
        tunnel: m.tunnel_stream(&inner.name, &host.to_ascii_lowercase()),
    };
    let idled = m
        .visitors_idle_closed_total
        .with_label_values(&[&inner.name]);
    let idle = inner.limits.get().idle_timeout;
    if let Err(e) = splice_until_idle(io, stream, counters, idle, &idled).await {
        tracing::debug!(frontend = %inner.name, tunnel = %host, error = %e, "CONNECT stream ended with an error");
    }
    active.dec();
}
