//! Transport `connect`: the hidden-server side of node-rendezvous. A hidden server (tunnelc,
//! or the original Node program) opens TLS and sends `CONNECT uuid:<ID>?response=<TOTP>`;
//! tunneld answers and parks the socket until a visitor of the `rendezvous` frontend names
//! that id. The wire rules live in [`tunneld_core::rendezvous::park`].
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
