//! The tunneld program as a library, so tests run it in-process. tunnelc is the client crate
//! (`tunneld_client`), which this crate uses for what both programs share (the layered config
//! loader, the `log:` section and logging set-up, the provisioning API's JSON shapes).
//!
//! Layout: [`config`] (YAML + env + flags), [`server`] (builds every transport and frontend
//! from config and runs them: [`server::start`]), [`admin`] (the admin HTTP API),
//! [`mappings`] (the admin API's server-defined ports and pools, hot repointing),
//! [`control`] (the provisioning API, web port and sweep), [`state_cli`] and
//! [`ssh_key_cli`] (the store-editing commands).
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod admin_threshold;
pub mod cluster;
mod components;
pub mod config;
pub mod control;
pub mod dashboard;
mod frontend_set;
/// The small HTTP servers' accept loop and reply helpers (shared with tunnelc, in core).
pub use tunneld_core::http_serve;
mod https_certs;
pub mod mappings;
pub mod metrics;
pub mod reload;
pub mod rendezvous_ids;
pub mod server;
pub mod ssh_key_cli;
pub mod state_cli;
mod transport_set;
