//! Core of tunneld: the runtime traits every transport and frontend implements, and the
//! machinery they share.
//!
//! Layout:
//! - [`io`]: the one stream type ([`io::BoxIo`]) and [`splice`], the two-way copier.
//! - [`session`]: [`session::OpenStream`], [`session::StreamHeader`], [`session::Session`].
//! - [`transport`] / [`frontend`]: the plug-in traits, used as trait objects;
//!   [`claim_table`]: the frontends' one owner/grace table (who holds which port or name).
//! - [`hub`]: admission, claims and leases, and the [`hub::ServerMappings`] hook through which
//!   the daemon's admin mappings (server-defined ports, pools) join sessions' tunnel lists;
//!   [`live_sessions`]: the live sessions, their claims and stream budgets, and the targets
//!   that route visitors to them.
//! - [`proto`]: the transport-independent control protocol (hello, welcome, stream header).
//! - [`auth`]: tokens (constant-time, optionally stored as `sha256:` hashes) and identities.
//! - [`tls`]: certificates, the self-signed default CA, rustls configs, pinning;
//!   [`ca_sign`]: the CA signing a tunnel's CSR for the names it owns.
//! - [`limits`]: connection and handshake caps per address, and the data-path limits;
//!   [`idle`]: idle deadlines for visitor connections; [`stream_budget`]: stream
//!   caps per tunnel and visitor address, and the stall guard; [`proxy_protocol`]: PROXY v1/v2 headers.
//! - [`throttle`]: failed authentications per address, and log-line budgets.
//! - [`metrics`]: every Prometheus metric tunneld exports.
//! - [`hostglob`] / [`sni`]: name patterns and ClientHello peeking for routing by name.
//! - [`http1`]: a bounded request-head reader; [`tls_listener`]: the accept loop of TLS
//!   listeners that read heads themselves.
//! - [`host_rewrite`]: tunnelc's per-request `Host` rewriting toward a local service.
//! - [`dial`]: tunnelc's TCP + TLS + hello handshake, shared by the native transports.
//! - [`http_forward`]: the forwarded body type, hop-by-hop rules, HTTP/1.1 over a tunnel
//!   stream; [`h2link`]: tunneld's end of a reversed HTTP/2 connection.
//! - [`state`]: the persistent store (tokens, provisioned tunnels, certificates, rendezvous
//!   ids) behind the [`state::StateStore`] trait, on SQLite.
//! - [`rendezvous`]: node-rendezvous ids, TOTP, parked hidden-server connections, Digest.
#![forbid(unsafe_code)]

pub mod auth;
pub mod ca_sign;
pub mod claim_table;
pub mod dial;
pub mod duration;
pub mod frontend;
pub mod h2link;
pub mod host_rewrite;
pub mod hostglob;
pub mod http1;
pub mod http_forward;
pub mod hub;
pub mod idle;
pub mod io;
pub mod limits;
pub mod live_sessions;
pub mod metrics;
pub mod proto;
pub mod proxy_protocol;
pub mod rendezvous;
pub mod session;
pub mod sni;
pub mod splice;
pub mod state;
pub mod stream_budget;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod tls_listener;
pub mod transport;

pub use io::BoxIo;
pub use splice::splice;
