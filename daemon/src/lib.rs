//! The tunneld and tunnelc programs as a library, so tests run them in-process.
//!
//! Layout: [`config`] (YAML + env + flags), [`server`] (builds every transport and frontend
//! from config and runs them: [`server::start`]), [`admin`] (the admin HTTP API),
//! [`mappings`] (the admin API's server-defined ports and pools, hot repointing),
//! [`client`] (tunnelc's reconnecting runner and local connector), [`logging`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_threshold;
pub mod client;
pub mod client_connect;
mod components;
pub mod config;
pub mod control;
pub mod http_serve;
pub mod logging;
pub mod mappings;
pub mod rendezvous_ids;
pub mod server;
pub mod setup;
pub mod state_cli;
