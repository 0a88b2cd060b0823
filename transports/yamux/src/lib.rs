//! Transport `yamux`: tunnelc connects over TCP + TLS, sends the tunneld preamble and a hello
//! frame, and once accepted runs one yamux session on the connection. tunnelc opens the first
//! stream as the control stream (keepalive pings, tunnel updates); tunneld opens one stream
//! per visitor and writes a [`StreamHeader`](tunneld_core::session::StreamHeader) frame first.
//!
//! Layout: [`config`], [`driver`] (the one task that owns a yamux connection), [`control`]
//! (keepalive on the control stream), [`server`] (tunneld side), [`client`] (tunnelc side),
//! [`threshold`] (the dialect of threshold / koding-tunnel clients, opt-in).
#![forbid(unsafe_code)]

mod accept;
pub mod client;
mod coalesce;
pub mod config;
mod control;
pub mod driver;
mod limit;
pub mod metrics;
mod plain;
pub mod server;
pub mod threshold;
mod threshold_session;

pub use client::{dial, Connected, DialError, DialOptions};
pub use config::Config;
pub use server::YamuxTransport;

/// ALPN protocol id of this transport.
pub const ALPN: &[u8] = b"tunneld-yamux/1";
