//! Configuration: YAML file, then `TUNNELD_*` / `TUNNELC_*` environment variables, then
//! `--set key.path=value` flags, in increasing precedence. Every error names the key path.

pub mod client;
pub mod control;
#[doc(hidden)]
pub mod load;
pub mod server;
pub mod user;
#[doc(hidden)]
pub mod yaml;

pub use load::{load, ConfigError, Layers};
