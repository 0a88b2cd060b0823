//! Frontend `https-subdomain`: visitors reach tunnels at `https://<name>.<domain>`.
//!
//! - TLS is terminated with a configured (wildcard) certificate or with one issued per name
//!   from tunneld's CA; HTTP/1.1 and HTTP/2 by ALPN; every request routed by its own Host.
//! - `tls` tunnels are served by SNI passthrough on the same port: tunneld never decrypts.
//! - The port can be shared with the `h2-reverse` transport (ALPN `tunneld-h2`) and with
//!   original 2ptth initiators (ALPN `2ptth`, opt-in), whose links come from core's
//!   `ReverseHttpLinks` (the daemon passes the h2-reverse crate's).
//!
//! Layout: [`config`], `frontend` (claims, routes), `names` (names asked for or random,
//! pools; owners and grace in core's claim table), `certs`
//! (certificate resolver), `cert_source` (certificates from outside: ACME, TLS-ALPN-01), `listener` (ClientHello dispatch), `visitor` (HTTP forwarding),
//! `framing_guard` (refuses ambiguous HTTP/1.1 framing under the visitor server), `pages`
//! (tunneld's own answers).
#![forbid(unsafe_code)]

mod cert_source;
mod certs;
pub mod config;
mod framing_guard;
mod frontend;
mod listener;
pub mod metrics;
mod names;
mod pages;
mod visitor;

pub use cert_source::{CertSource, Claimed, ACME_TLS_ALPN};
pub use certs::{certified, Resolver};
pub use config::Config;
pub use frontend::{BindError, HttpsFrontend};

/// Parsers of visitor bytes, public for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::framing_guard::FramingGuard;
    pub use crate::visitor::host_of;
}
