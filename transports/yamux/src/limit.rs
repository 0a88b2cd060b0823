//! Our own cap on open streams per session.
//!
//! yamux 0.14 ends the whole connection when a new stream would exceed `max_num_streams`
//! (on either side: an outbound open fails fatally, an inbound one terminates the session).
//! One visitor flood must never cut a tunnel, so tunneld counts the streams it hands out with
//! a semaphore of `max_streams` permits and refuses the next visitor alone, while yamux's own
//! ceiling is set to twice that (streams that are closing linger in yamux's table until their
//! drop is processed, and the peer may hold its end a little longer).

pub(crate) use tunneld_core::stream_slots::{acquire, Counted};
