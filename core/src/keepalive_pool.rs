//! Keep-alive HTTP/1.1 connections, as nginx's upstream `keepalive`: a request goes on an
//! idle connection to the same place when one is left from an earlier request, instead of a
//! new connection per request. Two users: tunnelc, for its connections to local services
//! (requests that arrive as HTTP requests over the h2-reverse transport), and tunneld, for
//! tunnel streams that carry HTTP/1.1 to a tunnelc that keeps each one spliced to one local
//! connection (yamux and websocket sessions of a tunnelc that says `+keepalive`).
//!
//! Bounded ([`Caps`]): idle connections per key, keys, and in all; each kept at most
//! [`IDLE_FOR`] (below the 5 s keep-alive timeout of Node.js and Apache, so a service rarely
//! closes one just as it is reused; a reaper closes expired ones while any is idle). A
//! connection goes back only after its response body was read to the end; upgrades and
//! CONNECT never come back. A request that a reused connection could not send (it had closed
//! meanwhile) goes on the next one or a new one. Connections that carry a PROXY header (one
//! per visitor) are never pooled: the caller gives no key.

use crate::http_forward::{boxed, send_error, to_origin_form, Body, BoxError};
use crate::session::OpenError;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Idle connections kept per local service (tunnelc's pool).
pub const MAX_IDLE_PER_SERVICE: usize = 64;
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
    /// Idle connections per key.
    pub per_key: usize,
    /// Keys with idle connections.
    pub keys: usize,
    /// Idle connections in all.
    pub total: usize,
}

impl Default for Caps {
    /// tunnelc's: [`MAX_IDLE_PER_SERVICE`] per service, [`MAX_SERVICES`] services.
    fn default() -> Self {
        Caps {
            per_key: MAX_IDLE_PER_SERVICE,
            keys: MAX_SERVICES,
            total: MAX_IDLE_PER_SERVICE * MAX_SERVICES,
        }
    }
}

struct Idle {
    send: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Not expired, not closed by the other end.
    fn fresh(&self) -> bool {
        self.since.elapsed() < IDLE_FOR && !self.send.is_closed()
    }
}

impl State {
    /// Drops expired and closed connections.
    fn expire(&mut self) {
        self.idle.retain(|_, list| {
            list.retain(Idle::fresh);
            !list.is_empty()
        });
        self.count = self.idle.values().map(Vec::len).sum();
    }
}

/// Idle HTTP/1.1 connections, by key (a local service, or a tunnel).
#[derive(Default)]
pub struct LocalPool {
    caps: Caps,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    idle: HashMap<String, Vec<Idle>>,
    /// Idle connections in all.
    count: usize,
    /// Whether a reaper task runs (it ends when nothing is idle).
    reaping: bool,
}

impl LocalPool {
    /// A pool with tunnelc's caps.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn with_caps(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            state: Mutex::default(),
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

    fn take(&self, key: &str) -> Option<SendRequest<Body>> {
        let mut st = crate::sync::lock(&self.state);
        let list = st.idle.get_mut(key)?;
        let before = list.len();
        let mut found = None;
        while let Some(i) = list.pop() {
            if i.fresh() {
                found = Some(i.send);
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

    fn put(self: &Arc<Self>, key: String, send: SendRequest<Body>) {
        // Only where a reaper can run (a body dropped outside the runtime closes it).
        if send.is_closed() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut st = crate::sync::lock(&self.state);
        if !st.reaping {
            st.reaping = true;
            Self::reap(Arc::downgrade(self));
        }
        let full = |st: &State| {
            st.count >= self.caps.total
                || (!st.idle.contains_key(&key) && st.idle.len() >= self.caps.keys)
                || st.idle.get(&key).map_or(0, Vec::len) >= self.caps.per_key
        };
        if full(&st) {
            st.expire();
            if full(&st) {
                return;
            }
        }
        st.idle.entry(key).or_default().push(Idle {
            send,
            since: Instant::now(),
        });
        st.count += 1;
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
        while let Some(mut send) = self.take(key) {
            if tokio::time::timeout(READY_WAIT, send.ready())
                .await
                .is_err()
            {
                continue;
            }
            match send.try_send_request(req).await {
                Ok(resp) => return Ok(Ok(self.returning(key.to_string(), send, resp))),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection had closed. The next one, or a new one.
                    Some(back) => req = back,
                    None => return Ok(Err(send_error(e.into_error(), max_head))),
                },
            }
        }
        Err(req)
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
        let mut send = crate::http_forward::http1_handshake(io, max_head).await?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| send_error(e, max_head))?;
        Ok(match keep {
            Some(k) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
                self.returning(k, send, resp)
            }
            _ => resp.map(boxed),
        })
    }

    /// The response, whose body gives the connection back when read to the end.
    fn returning(
        self: &Arc<Self>,
        key: String,
        send: SendRequest<Body>,
        resp: Response<hyper::body::Incoming>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(boxed);
        }
        resp.map(|inner| {
            boxed(Returning {
                inner,
                back: Some((self.clone(), key, send)),
            })
        })
    }
}

/// Whether a request may use (and leave) a kept connection: not a tunnel or an upgrade.
fn poolable<B>(req: &Request<B>) -> bool {
    req.method() != Method::CONNECT && !req.headers().contains_key(http::header::UPGRADE)
}

/// A response body that puts its connection back in the pool at its end.
struct Returning {
    inner: hyper::body::Incoming,
    back: Option<(Arc<LocalPool>, String, SendRequest<Body>)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, key, send)) = self.back.take() {
            pool.put(key, send);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            // A failed body leaves the connection in an unknown state: it is dropped.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // An empty body may be dropped unpolled by the side that saw it end.
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}
