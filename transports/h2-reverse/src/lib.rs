//! Transport `h2-reverse`: tunnelc opens TLS to tunneld (ALPN `tunneld-h2`), sends the hello
//! frame, reads the welcome, and then serves HTTP/2 on that connection while tunneld is the
//! HTTP/2 client. Raw byte streams (ports, SNI passthrough, WebSocket upgrades) travel as
//! `CONNECT` streams, and so do visitor HTTP requests, as HTTP/1.1 on streams tunneld keeps
//! alive between requests (`tunneld_core::kept_streams`); a request that may not be kept
//! goes as an HTTP/2 request of its own. The 2ptth dialect (no hello, ALPN
//! `2ptth`) is served by the `https-subdomain` frontend through [`H2ReverseLinks`] (core's
//! [`tunneld_core::reverse_http::ReverseHttpLinks`], passed in by the daemon).
//!
//! Layout: [`config`], [`server`] (tunneld side: hello, admission, the session), [`link`]
//! (tunneld's end of a reversed HTTP/2 connection: the HTTP/2 client, its headers and
//! paths), [`stream_cap`] (the streams tunneld may open on one link), [`client`] (tunnelc
//! side).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod link;
pub mod server;
pub mod stream_cap;

pub use client::{dial, Connected, DialError, DialOptions};
pub use config::Config;
pub use link::{H2ReverseLinks, ALPN, ALPN_2PTTH};
pub use server::H2ReverseTransport;
