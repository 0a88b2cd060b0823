//! The streams tunneld has open on one link, against the most it may open: its own
//! `h2.max_concurrent_streams` (the link's connection window is sized for that many) or
//! tunnelc's announced cap when smaller (the hello's `max_streams`, trusted with the agent
//! word `+h2-max-streams`). Past it a visitor is refused at once ([`OpenError::TooManyStreams`])
//! instead of waiting in hyper's queue for a stream of the peer to close, where it would
//! also delay every neighbour tunnel's visitors behind it.

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunneld_core::http_forward::{Body, BoxError};
use tunneld_core::session::OpenError;

/// Open streams of a link and their cap.
#[derive(Debug)]
pub struct StreamCap {
    open: AtomicUsize,
    cap: usize,
}

impl StreamCap {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            cap: cap.max(1),
        })
    }

    /// The most streams open at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// One more stream, or [`OpenError::TooManyStreams`] when all are in use.
    pub fn take(self: &Arc<Self>) -> Result<Slot, OpenError> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .map_err(|_| OpenError::TooManyStreams)?;
        Ok(Slot(self.clone()))
    }
}

/// One open stream; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot(Arc<StreamCap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A CONNECT stream that holds its [`Slot`] for its life.
pub struct Held<T> {
    pub io: T,
    pub _slot: Slot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request or response body that holds its stream's [`Slot`] (shared by both) until it
/// ends or is dropped: the HTTP/2 stream lives until both are done.
pub struct HeldBody {
    pub body: Body,
    pub slot: Option<Arc<Slot>>,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.slot = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cap_refuses_until_a_slot_is_dropped() {
        let cap = StreamCap::new(2);
        let a = cap.take().expect("first");
        let _b = cap.take().expect("second");
        assert!(matches!(cap.take(), Err(OpenError::TooManyStreams)));
        drop(a);
        assert!(cap.take().is_ok(), "a freed place is taken again");
    }

    #[tokio::test]
    async fn a_body_gives_its_slot_back_at_its_end() {
        use http_body_util::BodyExt;
        let cap = StreamCap::new(1);
        let slot = Arc::new(cap.take().expect("first"));
        let mut request = HeldBody {
            body: tunneld_core::http_forward::full("up"),
            slot: Some(slot.clone()),
        };
        let mut response = HeldBody {
            body: tunneld_core::http_forward::full("down"),
            slot: Some(slot),
        };
        assert!(cap.take().is_err(), "held while both bodies are unread");
        while response.frame().await.is_some() {}
        assert!(
            cap.take().is_err(),
            "held while the request body is still sent"
        );
        while request.frame().await.is_some() {}
        assert!(cap.take().is_ok(), "given back once both ended");
    }
}
