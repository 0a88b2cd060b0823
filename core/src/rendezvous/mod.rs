//! node-rendezvous, rebuilt: rendezvous ids with TOTP secrets ([`store`], [`totp`]), hidden
//! servers parking TLS connections with `CONNECT uuid:` ([`park`], [`registry`]), and the
//! visitor credentials that pick an id ([`visitor_auth`]). The `connect` transport and the
//! `rendezvous` frontend are thin listeners over these.

pub mod park;
pub mod registry;
pub mod store;
pub mod totp;
pub mod visitor_auth;
