//! Transport `websocket`: TPoT-compatible conversations over one WebSocket.
//!
//! One port serves tunnel creation (`GET /create-tpot` at the server's own Host) and
//! visitors (`Host: <name>.<domain>`, each TCP connection one conversation), so tunneld can
//! sit behind a reverse proxy that forwards everything to one port. Original TPoT clients
//! work unchanged; our tunnelc negotiates the `tunneld.1` subprotocol for tokens, any tunnel
//! kind, IPv6 visitor addresses, half-close and open acknowledgements.
//!
//! Layout: [`config`], [`wire`] (framing), [`mux`] (conversations, pause/resume),
//! [`session`] (one WebSocket's reader and writer), [`tpot_auth`] (`TPoT-1` headers),
//! [`server`] (tunneld side), [`client`] (tunnelc side).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod head;
pub mod metrics;
pub mod mux;
pub mod server;
pub mod session;
pub mod tpot_auth;
pub mod wire;

pub use client::{dial, Connected, DialOptions};
pub use config::Config;
pub use server::WebsocketTransport;
