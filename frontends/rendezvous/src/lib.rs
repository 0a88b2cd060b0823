//! Frontend `rendezvous`: one HTTPS listener that serves
//! - node-rendezvous visitors: a request whose Digest or Basic username is a rendezvous id (or
//!   a WebSocket upgrade with `?rendezvous=<ID>`) is written, intact but for `Authorization`,
//!   to a connection the id's hidden server parked, and the two are spliced ([`visitor`]);
//! - `CONNECT <tunnel>:<port>` to any tunnel that claimed its name here, whatever transport
//!   it uses, with configurable visitor credentials ([`connect_access`], [`names`]);
//! - hidden servers' `CONNECT uuid:<ID>` parking, as node-rendezvous's single port did
//!   (`parking: true`).
//!
//! The node-rendezvous machinery the frontend and the `connect` transport share lives here
//! too: rendezvous ids ([`ids`], found through the [`ids::IdSource`] the daemon provides),
//! hidden servers parking TLS connections with `CONNECT uuid:` ([`park`], [`registry`]; the
//! registry is the transport's [`tunneld_core::parking::Parking`]), and the visitor
//! credentials that pick an id ([`visitor_auth`]).
//!
//! Layout: [`config`], [`frontend`] (the plug-in), [`respond`] (answers).
#![forbid(unsafe_code)]

pub mod config;
#[doc(hidden)]
pub mod connect_access;
mod frontend;
pub mod ids;
pub mod metrics;
mod names;
pub mod park;
pub mod registry;
mod respond;
mod visitor;
pub mod visitor_auth;

pub use config::Config;
pub use frontend::RendezvousFrontend;

/// Parsers of visitor bytes, public for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::names::forbidden_host;
    pub use crate::visitor::query_id;
}
