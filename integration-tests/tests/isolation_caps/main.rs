//! Stream caps, head limits and restarts as isolation (issue 16): a tunnel whose visitors
//! fill its stream cap, or a visitor address that fills its own, refuses only those visitors;
//! 1,000 concurrent visitors pass with default settings on every transport; the websocket
//! port and the https frontend agree on the 64 KiB head limit; HTTP/2 visitors holding
//! zero-window streams do not freeze a neighbour; and tunnelc survives `kill -9` of tunneld
//! in the middle of a websocket download.
//!
//! The tests of this binary take turns (SERIAL): one measures latency for 10 s, another opens
//! 4,000 sockets.

mod common;
mod crowd;
mod head_limit;
mod idle_caps;
mod restart;
mod zero_window;
