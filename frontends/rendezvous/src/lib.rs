//! Frontend `rendezvous`: one HTTPS listener that serves
//! - node-rendezvous visitors: a request whose Digest or Basic username is a rendezvous id (or
//!   a WebSocket upgrade with `?rendezvous=<ID>`) is written, intact but for `Authorization`,
//!   to a connection the id's hidden server parked, and the two are spliced ([`visitor`]);
//! - `CONNECT <tunnel>:<port>` to any tunnel that claimed its name here, whatever transport
//!   it uses, with configurable visitor credentials ([`connect_access`], [`names`]);
//! - hidden servers' `CONNECT uuid:<ID>` parking, as node-rendezvous's single port did
//!   (`parking: true`).
//!
//! Layout: [`config`], [`frontend`] (the plug-in), [`respond`] (answers).
#![forbid(unsafe_code)]

pub mod config;
#[doc(hidden)]
pub mod connect_access;
mod frontend;
mod names;
mod respond;
mod visitor;

pub use config::Config;
pub use frontend::RendezvousFrontend;

/// Parsers of visitor bytes, public for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::names::forbidden_host;
    pub use crate::visitor::query_id;
}
