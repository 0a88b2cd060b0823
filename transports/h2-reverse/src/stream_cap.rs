//! The streams tunneld has open on one link, against the most it may open: its own
//! `h2.max_concurrent_streams` (the link's connection window is sized for that many) or
//! tunnelc's announced cap when smaller (the hello's `max_streams`, trusted with the agent
//! word `+h2-max-streams`), as core's [`tunneld_core::stream_slots`]. Past it a visitor is
//! refused at once ([`tunneld_core::session::OpenError::TooManyStreams`]) instead of waiting
//! in hyper's queue for a stream of the peer to close, where it would also delay every
//! neighbour tunnel's visitors behind it. A CONNECT stream holds its slot as
//! [`tunneld_core::stream_slots::Counted`]; a request's slot is held by its bodies
//! ([`HeldBody`]).

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tunneld_core::http_forward::{Body, BoxError};

/// A request or response body that holds its stream's slot (shared by both) until it ends
/// or is dropped: the HTTP/2 stream lives until both are done.
pub struct HeldBody {
    pub body: Body,
    pub slot: Option<Arc<OwnedSemaphorePermit>>,
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
    use tokio::sync::Semaphore;
    use tunneld_core::session::OpenError;
    use tunneld_core::stream_slots::acquire;

    #[test]
    fn a_full_cap_refuses_until_a_slot_is_dropped() {
        let cap = Arc::new(Semaphore::new(2));
        let a = acquire(&cap).expect("first");
        let _b = acquire(&cap).expect("second");
        assert!(matches!(acquire(&cap), Err(OpenError::TooManyStreams)));
        drop(a);
        assert!(acquire(&cap).is_ok(), "a freed place is taken again");
    }

    #[tokio::test]
    async fn a_slot_is_given_back_once_both_bodies_ended() {
        use http_body_util::BodyExt;
        let cap = Arc::new(Semaphore::new(1));
        let slot = Arc::new(acquire(&cap).expect("first"));
        let mut request = HeldBody {
            body: tunneld_core::http_forward::full("up"),
            slot: Some(slot.clone()),
        };
        let mut response = HeldBody {
            body: tunneld_core::http_forward::full("down"),
            slot: Some(slot),
        };
        assert!(acquire(&cap).is_err(), "held while both bodies are unread");
        while response.frame().await.is_some() {}
        assert!(
            acquire(&cap).is_err(),
            "held while the request body is still sent"
        );
        while request.frame().await.is_some() {}
        assert!(acquire(&cap).is_ok(), "given back once both ended");
    }
}
