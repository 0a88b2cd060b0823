//! The bodies of a request sent with hyper's client on a kept connection: the request's,
//! which says when it went out whole, and the response's, which gives the connection back
//! once read to the end.

use super::{Conn, HyperConn, LocalPool};
use crate::http_forward::{boxed, Body, BoxError};
use bytes::Bytes;
use http::Request;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The request with a body that sets the flag once it ended (at once for an empty one).
pub(super) fn track_body(req: Request<Body>) -> (Request<Body>, Arc<AtomicBool>) {
    let (parts, inner) = req.into_parts();
    let sent = Arc::new(AtomicBool::new(hyper::body::Body::is_end_stream(&inner)));
    let body = Tracked {
        inner,
        sent: sent.clone(),
    };
    (Request::from_parts(parts, boxed(body)), sent)
}

/// A request body that says when it was sent whole.
struct Tracked {
    inner: Body,
    sent: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that puts its connection back in the pool at its end.
pub(super) struct Returning {
    pub(super) inner: hyper::body::Incoming,
    pub(super) back: Option<(Arc<LocalPool>, String, HyperConn)>,
    /// The request body went out whole.
    pub(super) sent: Arc<AtomicBool>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, key, conn)) = self.back.take() {
            if self.sent.load(Ordering::Acquire) {
                pool.put(key, Conn::Hyper(conn));
            }
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
