//! Frontend `ports`: each TCP tunnel gets a public port from a configured range.
//!
//! Layout: [`config`] (the YAML shape), [`table`] (who holds which port, reservations during
//! the reclaim grace period), [`listener`] (the accept loop and the per-visitor splice).
#![forbid(unsafe_code)]

pub mod config;
mod listener;
mod table;

pub use config::{Config, PortRange};
pub use table::PortsFrontend;
