//! Isolation between the tunnels of one client: an attack on one tunnel (oversized heads,
//! visitors that never read, cancelled HTTP/2 streams) must neither end the client's session
//! nor slow down its other tunnels. Each test runs one tunneld and one tunnelc (client
//! `alice`) holding a victim tunnel and a neighbour tunnel, attacks the victim for 10 s and
//! measures the neighbour with [`Neighbour`] the whole time.
//!
//! `head_limit`: oversized request heads; `stalled`: visitors that never read (https, http
//! on the websocket port, ports); `cancelled`: HTTP/2 streams cancelled by the thousand.

mod cancelled;
mod common;
mod head_limit;
mod stalled;
