//! Transport `ssh`: stock OpenSSH clients (`ssh -R`, pipe2me's autossh command) as tunnel
//! clients, with no tunnelc.
//!
//! A client authenticates with a public key bound to a client id (the config file's
//! `auth.tokens.<client>.ssh_keys`, `tunneld token add --ssh-key`) or to one provisioned
//! tunnel (a key uploaded through the provisioning API). Each `tcpip-forward` becomes a claim
//! on tunneld's frontends, each visitor a `forwarded-tcpip` channel; routing, quotas, grace
//! periods, limits and metrics are the hub's, as for every transport.
//!
//! Layout: [`config`], [`host_key`] (made on first start, fingerprint logged),
//! [`forwards`] (forward requests, the stream opener), `channel_io` (each visitor's
//! backlog and SSH window) with `window_budget` (a session's window budget), [`handler`] (one connection's
//! authentication, forwards and refusals), [`server`] (listener and handshake deadline),
//! [`metrics`].
#![forbid(unsafe_code)]

mod channel_io;
pub mod config;
mod forwarding;
pub mod forwards;
mod handler;
pub mod host_key;
pub mod metrics;
pub mod server;
mod window_budget;

pub use config::Config;
pub use server::SshTransport;
