//! tunnelc as a library, so tests run it in-process; the `tunnelc` binary is
//! `src/bin/tunnelc/`. This crate names no frontend and does not depend on the daemon: it
//! links tunneld-core and the client sides of the transports only.
//!
//! Layout: [`config`] (tunnelc's YAML + env + flags, per-user defaults; the layered loader
//! and the `log:` section tunneld shares), [`client`] (the reconnecting runner and local
//! connector; [`client_connect`] for rendezvous ids over the connect transport; `rotation`
//! for the round robin over `server` and `servers` and the backoff),
//! [`host_rewrite`] (per-request `Host` rewriting toward a local service), [`inspect`] (the
//! request inspector: recording, pages, replay), [`setup`] (the
//! pipe2me-style `setup`/`list`/`env`/`test`), [`provision_api`] (the provisioning API's JSON
//! shapes, shared with tunneld's control plane), [`logging`] (both programs' tracing set-up),
//! [`cli_docs`] (both programs' `completions` and `man` commands).
#![forbid(unsafe_code)]

pub mod cli_docs;
pub mod client;
pub mod client_connect;
pub mod config;
mod hello;
pub mod host_rewrite;
pub mod inspect;
pub mod logging;
pub mod provision_api;
pub mod reload;
mod rotation;
pub mod setup;
