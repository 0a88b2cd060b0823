//! Configuration: YAML file, then `TUNNELD_*` environment variables, then
//! `--set key.path=value` flags, in increasing precedence. Every error names the key path.
//!
//! The layered loader and the YAML format are tunnelc's too; they live in the client crate
//! (`tunneld_client::config::{load, yaml}`, which does not depend on the daemon) and are
//! re-exported here under their old paths.

pub mod cluster;
pub mod control;
pub mod server;

#[doc(hidden)]
pub use tunneld_client::config::yaml;
/// `load` is both the loader module (hidden) and its entry point [`load()`].
pub use tunneld_client::config::{load, ConfigError, Layers};
