//! tunnelc's configuration: YAML file, then `TUNNELC_*` environment variables, then
//! `--set key.path=value` flags, in increasing precedence. Every error names the key path.
//!
//! [`load`] (the layered loader), [`yaml`] and [`log`] are tunneld's too: the daemon uses
//! them from here.

pub mod client;
pub mod h2_serve;
pub mod inspect;
#[doc(hidden)]
pub mod load;
pub mod log;
pub mod runtime;
pub mod user;
#[doc(hidden)]
pub mod yaml;

pub use load::{load, ConfigError, Layers};
