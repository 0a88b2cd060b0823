//! Keep-alive HTTP/1.1 connections, as nginx's upstream `keepalive`: a request goes on an
//! idle connection to the same place when one is left from an earlier request, instead of a
//! new connection per request. Two users: tunneld, for tunnel streams that carry HTTP/1.1 to
//! a tunnelc that keeps each one spliced to one local connection (yamux, websocket and
//! h2-reverse sessions of a tunnelc that says `+keepalive`), and tunnelc, for its connections
//! to local services when a request arrives as an HTTP/2 request over h2-reverse (from a
//! tunneld that keeps no streams for that session).
//!
//! Bounded ([`Caps`]): idle connections in all and keys, with a share per key (the pool's
//! room divided among the keys holding idle connections, at most [`Caps::per_key`]) that
//! holds however busy the other keys are; each kept at most
//! [`IDLE_FOR`] (below the 5 s keep-alive timeout of Node.js and Apache, so a service rarely
//! closes one just as it is reused; a reaper closes expired ones while any is idle). A
//! connection goes back only after its response body was read to the end; upgrades and
//! CONNECT never come back. A request that a reused connection could not send (it had closed
//! meanwhile) goes on the next one or a new one. Connections that carry a PROXY header (one
//! per visitor) are never pooled: the caller gives no key.
//!
//! A request without a body is written and answered by its own task ([`raw`]); hyper's
//! client connection (a task per connection) carries the others.

mod hyper_bodies;
mod idle_set;
mod raw;
mod response_head;
#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod tests;

use crate::http_forward::{boxed, send_error, to_origin_form, Body, ConnWatch};
use crate::session::OpenError;
use http::{Method, Request, Response, StatusCode};
use hyper::client::conn::http1::SendRequest;
use hyper_bodies::{track_body, Returning};
use idle_set::{Idle, Place, State};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each local service's share of tunnelc's pool: as many as tunneld's share of idle
/// streams per tunnel ([`crate::kept_streams::PER_TUNNEL`]), so HTTP/2 visitors with many
/// requests in flight find a connection left instead of opening one per request (when
/// tunneld sends requests as HTTP/2 requests over h2-reverse, as before 2026-12-05).
pub const MAX_IDLE_PER_SERVICE: usize = 512;
/// Idle connections kept in all (tunnelc's pool, every service together).
const MAX_IDLE_IN_ALL: usize = 2048;
/// How long an idle connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(4);
/// How long a connection just given back may take to be ready for the next request.
const READY_WAIT: Duration = Duration::from_millis(200);
/// Services with idle connections at most in tunnelc's pool (a key per local address and
/// Host rewrite).
const MAX_SERVICES: usize = 1024;

/// How much a pool keeps idle.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// The most a key's share of the pool can be; the share is the pool's room divided
    /// among the keys holding idle connections, up to this. A key may keep more while the
    /// pool has room (one busy service or tunnel alone may fill it), but once the pool is
    /// full a connection of a key within its share takes the place of the oldest idle one
    /// of the key furthest over its share, so one key's excess never keeps another key's
    /// connections out; an eviction ([`LocalPool::evict_oldest`]) takes from that key too.
    pub per_key: usize,
    /// Keys with idle connections.
    pub keys: usize,
    /// Idle connections in all.
    pub total: usize,
}

impl Default for Caps {
    /// tunnelc's: [`MAX_IDLE_PER_SERVICE`] per service, [`MAX_SERVICES`] services,
    /// [`MAX_IDLE_IN_ALL`] in all.
    fn default() -> Self {
        Caps {
            per_key: MAX_IDLE_PER_SERVICE,
            keys: MAX_SERVICES,
            total: MAX_IDLE_IN_ALL,
        }
    }
}

/// A kept connection.
enum Conn {
    /// Spoken to by the task of each request ([`raw`]).
    Raw(raw::RawConn),
    /// hyper's client connection: its sender, and its task's watch.
    Hyper(HyperConn),
}

struct HyperConn {
    send: SendRequest<Body>,
    watch: ConnWatch,
}

impl Conn {
    /// Closed by the other end (or sent something unasked); a raw connection is polled.
    fn closed(&mut self) -> bool {
        match self {
            Conn::Raw(r) => !r.alive(),
            Conn::Hyper(h) => h.send.is_closed(),
        }
    }

    /// Known to be closed without polling it (hyper's task saw it close).
    fn seen_closed(&self) -> bool {
        match self {
            Conn::Raw(_) => false,
            Conn::Hyper(h) => h.send.is_closed(),
        }
    }
}

/// Idle HTTP/1.1 connections, by key (a local service, or a tunnel).
#[derive(Default)]
pub struct LocalPool {
    caps: Caps,
    state: Mutex<State>,
    /// Counts idle connections closed to make room for a key within its share.
    displaced: Option<prometheus::IntCounter>,
}

impl LocalPool {
    /// A pool with tunnelc's caps.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A pool with `caps`; `displaced` counts the idle connections closed to make room for
    /// a key within its share.
    pub fn with_caps(caps: Caps, displaced: Option<prometheus::IntCounter>) -> Arc<Self> {
        Arc::new(Self {
            caps,
            state: Mutex::default(),
            displaced,
        })
    }

    /// Closes connections idle for [`IDLE_FOR`] (or closed by the service) every half of
    /// it, until none is left; the task holds the pool weakly and ends with it.
    fn reap(pool: std::sync::Weak<Self>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_FOR / 2).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut st = crate::sync::lock(&pool.state);
                st.expire();
                if st.idle.is_empty() {
                    st.reaping = false;
                    return;
                }
            }
        });
    }

    fn take(&self, key: &str) -> Option<Conn> {
        let mut st = crate::sync::lock(&self.state);
        let list = st.idle.get_mut(key)?;
        let before = list.len();
        let mut found = None;
        while let Some(mut i) = list.pop() {
            if i.usable() {
                found = Some(i.conn);
                break;
            }
        }
        let (after, empty) = (list.len(), list.is_empty());
        if empty {
            st.idle.remove(key);
        }
        st.count -= before - after;
        found
    }

    fn put(self: &Arc<Self>, key: String, mut conn: Conn) {
        // Only where a reaper can run (a body dropped outside the runtime closes it).
        if conn.closed() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut st = crate::sync::lock(&self.state);
        if !st.reaping {
            st.reaping = true;
            Self::reap(Arc::downgrade(self));
        }
        let mut place = st.place(&key, &self.caps);
        if !matches!(place, Some(Place::Free)) && st.expire_if_due() {
            place = st.place(&key, &self.caps);
        }
        let displaced = match place {
            None => return,
            Some(Place::Free) => None,
            Some(Place::InsteadOf(over)) => st.remove_oldest(&over),
        };
        st.idle.entry(key).or_default().push(Idle {
            conn,
            since: Instant::now(),
        });
        st.count += 1;
        drop(st);
        // Counted when it was still open: one the other end had closed held nothing.
        if let (Some(mut gone), Some(c)) = (displaced, &self.displaced) {
            if !gone.conn.closed() {
                c.inc();
            }
        }
    }

    /// Closes an idle connection at once (no graceful shutdown) to free what it holds (a
    /// tunnel stream a visitor is waiting for): the oldest of the key furthest over its
    /// share, else the one idle longest of any key. Resolves once it is gone. `None`:
    /// nothing live is idle (closed ones, which hold nothing, are dropped).
    pub fn evict_oldest(&self) -> Option<impl std::future::Future<Output = ()>> {
        let mut st = crate::sync::lock(&self.state);
        st.idle.retain(|_, list| {
            list.retain_mut(|i| !i.conn.closed());
            !list.is_empty()
        });
        st.count = st.idle.values().map(Vec::len).sum();
        let key = st.to_evict(&self.caps)?;
        let oldest = st.remove_oldest(&key)?;
        drop(st);
        // A raw connection is gone once dropped; hyper's once its task ended.
        let ended = match oldest.conn {
            Conn::Raw(r) => {
                drop(r);
                None
            }
            Conn::Hyper(HyperConn { send, watch }) => {
                drop(send);
                let _ = watch.kill.send(());
                Some(watch.ended)
            }
        };
        Some(async move {
            if let Some(ended) = ended {
                let _ = ended.await;
            }
        })
    }

    /// Idle connections kept now, all keys together.
    pub fn idle(&self) -> usize {
        crate::sync::lock(&self.state).count
    }

    /// Sends `req` on an idle connection of service `key`; gives the request back when none
    /// could take it (the caller connects and calls [`LocalPool::send_new`]).
    pub async fn send_pooled(
        self: &Arc<Self>,
        key: &str,
        mut req: Request<Body>,
        max_head: usize,
    ) -> Result<Result<Response<Body>, OpenError>, Request<Body>> {
        if !poolable(&req) {
            return Err(req);
        }
        to_origin_form(&mut req);
        let raw = raw::eligible(&req).then(|| raw::prepare(&req));
        while let Some(conn) = self.take(key) {
            let conn = match (conn, &raw) {
                (Conn::Raw(c), Some(prepared)) => {
                    let back = Some((self.clone(), key.to_string()));
                    match raw::send(c, prepared, max_head, back).await {
                        Ok(resp) => return Ok(Ok(resp)),
                        // Closed as the request went out: one safe to repeat goes on the
                        // next connection, or a new one.
                        Err(raw::Failed::Unanswered(_)) if safe_to_repeat(&req) => continue,
                        Err(e) => return Ok(Err(e.into_open_error())),
                    }
                }
                (conn, _) => conn,
            };
            // Boxed: hyper's futures are large, and the plain requests that go raw (most of
            // them) would otherwise carry their room in every request's future.
            match Box::pin(self.send_through_hyper(key, conn, req, max_head)).await {
                ThroughHyper::Answered(resp) => return Ok(Ok(resp)),
                ThroughHyper::NotSent(back) => req = back,
                ThroughHyper::Failed(e) => return Ok(Err(e)),
            }
        }
        Err(req)
    }

    /// Sends `req` through hyper's client on kept connection `conn` (a raw one is handed
    /// to hyper first: a request with a body).
    async fn send_through_hyper(
        self: &Arc<Self>,
        key: &str,
        conn: Conn,
        req: Request<Body>,
        max_head: usize,
    ) -> ThroughHyper {
        let mut conn = match conn {
            Conn::Raw(c) => {
                match crate::http_forward::http1_handshake_watched(c.into_io(), max_head).await {
                    Ok((send, watch)) => HyperConn { send, watch },
                    Err(_) => return ThroughHyper::NotSent(req),
                }
            }
            Conn::Hyper(h) => h,
        };
        if tokio::time::timeout(READY_WAIT, conn.send.ready())
            .await
            .is_err()
        {
            return ThroughHyper::NotSent(req);
        }
        // A kept connection the service closes just as the request goes out: a request
        // that is safe to send again (no body, idempotent) goes on the next one.
        let again = replayable(&req);
        let (tracked, sent) = track_body(req);
        match conn.send.try_send_request(tracked).await {
            Ok(resp) => ThroughHyper::Answered(self.returning(key.to_string(), conn, resp, sent)),
            Err(mut e) => match (e.take_message(), again) {
                // Not sent: the connection had closed. The next one, or a new one.
                (Some(back), _) => ThroughHyper::NotSent(back),
                (None, Some(copy)) if closed_early(e.error()) => ThroughHyper::NotSent(copy),
                (None, _) => ThroughHyper::Failed(send_error(e.into_error(), max_head)),
            },
        }
    }

    /// Sends `req` on a new connection `io` to service `key` (none: never kept), which
    /// joins the pool once the response is read.
    pub async fn send_new(
        self: &Arc<Self>,
        key: Option<&str>,
        io: crate::io::BoxIo,
        mut req: Request<Body>,
        max_head: usize,
    ) -> Result<Response<Body>, OpenError> {
        let keep = key.filter(|_| poolable(&req)).map(str::to_string);
        to_origin_form(&mut req);
        if raw::eligible(&req) {
            let back = keep.map(|k| (self.clone(), k));
            return raw::send(raw::RawConn::new(io), &raw::prepare(&req), max_head, back)
                .await
                .map_err(raw::Failed::into_open_error);
        }
        let (send, watch) = crate::http_forward::http1_handshake_watched(io, max_head).await?;
        let mut conn = HyperConn { send, watch };
        let (req, sent) = track_body(req);
        let resp = conn
            .send
            .send_request(req)
            .await
            .map_err(|e| send_error(e, max_head))?;
        Ok(match keep {
            Some(k) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
                self.returning(k, conn, resp, sent)
            }
            _ => resp.map(boxed),
        })
    }

    /// The response, whose body gives the connection back when read to the end.
    /// `sent` says whether the request body went out whole: a connection whose response
    /// ended before its upload did (an early 413, say) is not kept.
    fn returning(
        self: &Arc<Self>,
        key: String,
        conn: HyperConn,
        resp: Response<hyper::body::Incoming>,
        sent: Arc<AtomicBool>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS || connection_auth(&resp) {
            return resp.map(boxed);
        }
        resp.map(|inner| {
            boxed(Returning {
                inner,
                back: Some((self.clone(), key, conn)),
                sent,
            })
        })
    }
}

/// What a request sent through hyper on a kept connection came to.
enum ThroughHyper {
    Answered(Response<Body>),
    /// Not sent (the connection had closed, or was not ready in time), or sent and closed
    /// on before any answer when it is safe to repeat: the request, for the next
    /// connection or a new one.
    NotSent(Request<Body>),
    Failed(OpenError),
}

/// Whether a request may use (and leave) a kept connection: not a tunnel or an upgrade, and
/// not a connection-bound login (NTLM, Negotiate), which must never pass to another visitor.
fn poolable<B>(req: &Request<B>) -> bool {
    req.method() != Method::CONNECT
        && !req.headers().contains_key(http::header::UPGRADE)
        && !req
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .any(connection_scheme)
}

/// Whether a response starts a connection-bound login (`WWW-Authenticate: NTLM` or
/// `Negotiate`): its connection is not kept.
fn connection_auth<B>(resp: &Response<B>) -> bool {
    resp.headers()
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .any(connection_scheme)
}

fn connection_scheme(v: &http::HeaderValue) -> bool {
    let v = v.as_bytes();
    let starts = |p: &[u8]| v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p);
    starts(b"ntlm") || starts(b"negotiate")
}

/// Whether a request may be sent again: no body, and a method that is safe to repeat.
fn safe_to_repeat(req: &Request<Body>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && hyper::body::Body::is_end_stream(req.body())
}

/// A copy of a request that may be sent again ([`safe_to_repeat`]).
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    if !safe_to_repeat(req) {
        return None;
    }
    let mut copy = Request::new(crate::http_forward::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether a send failed because the connection closed before any answer (the service
/// closed its idle connection as the request went out).
fn closed_early(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_closed() || e.is_canceled()
}
