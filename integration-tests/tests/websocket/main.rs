//! The websocket transport on loopback: TPoT's framing byte for byte from a hand-written
//! client (as TPoT v0.2.0 speaks it), the create errors, `tunnelc http` with curl visitors,
//! backpressure from a visitor that stops reading, and all of it again behind Debian's nginx.

mod behind_nginx;
mod common;
mod quick_mode;
mod tpot;
