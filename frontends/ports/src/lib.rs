//! Frontend `ports`: each TCP tunnel gets a public port from a configured range.
//!
//! Layout: [`config`] (the YAML shape), [`table`] (picking and binding ports; who holds
//! which and the reclaim grace in core's claim table), [`listener`] (the accept loop and the
//! per-visitor splice).
#![forbid(unsafe_code)]

pub mod config;
mod listener;
pub mod metrics;
mod table;

pub use config::{Config, PortRange};
pub use table::PortsFrontend;
