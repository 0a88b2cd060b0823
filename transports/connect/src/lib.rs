//! Transport `connect`: the hidden-server side of node-rendezvous. A hidden server (tunnelc,
//! or the original Node program) opens TLS and sends `CONNECT uuid:<ID>?response=<TOTP>`;
//! tunneld answers and parks the socket until a visitor of the `rendezvous` frontend names
//! that id. The parking itself is the [`tunneld_core::parking::Parking`] the daemon hands
//! the transport (the `rendezvous` frontend's registry, where the wire rules live).
//!
//! Layout: [`config`], [`server`] (tunneld side), [`client`] (tunnelc side: one park).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod server;

pub use client::{park, ParkError, ParkOptions};
pub use config::Config;
pub use server::ConnectTransport;

/// ALPN protocol id offered by tunnelc (the original Node hidden server offers none).
pub const ALPN: &[u8] = b"http/1.1";
