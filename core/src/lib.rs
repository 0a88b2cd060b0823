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
//! - [`clock`]: Unix seconds and RFC 3339 dates.
//! - [`auth`]: tokens (constant-time, optionally stored as `sha256:` hashes) and identities;
//!   [`auth::TokenStore`], the stored tokens the authenticator also checks (the persistent
//!   state, in the tunneld-state crate, implements it).
//! - [`tls`]: certificates, the self-signed default CA, rustls configs, pinning (the CA
//!   signing tunnels' CSRs is tunneld-state's `ca_sign`).
//! - [`limits`]: connection and handshake caps per address, and the data-path limits;
//!   [`idle`]: idle deadlines for visitor connections; [`stream_budget`]: stream
//!   caps per tunnel and visitor address, and the stall guard; [`stream_slots`]: a session's
//!   cap on open streams; [`proxy_protocol`]: PROXY v1/v2 headers.
//! - [`throttle`]: failed authentications per address, and log-line budgets.
//! - [`metrics`]: every Prometheus metric tunneld exports.
//! - [`hostglob`] / [`sni`]: name patterns and ClientHello peeking for routing by name.
//! - [`http1`]: a bounded request-head reader; [`tls_listener`]: the accept loop of TLS
//!   listeners that read heads themselves.
//! - [`dial`]: tunnelc's TCP + TLS + hello handshake, shared by the native transports.
//! - [`http_forward`]: the forwarded body type, hop-by-hop rules, HTTP/1.1 over a tunnel
//!   stream; [`http2`]: HTTP/2 settings ([`http2::H2Tuning`]) and error names;
//!   [`reverse_http`]: the hook through which a frontend gets tunneld's end of a reversed HTTP
//!   link (the https frontend's 2ptth upstream) from the h2-reverse crate.
//! - [`parking`]: the [`parking::Parking`] hook through which the `connect` transport parks
//!   hidden servers' connections in the `rendezvous` frontend's registry; [`totp`]: RFC 6238
//!   codes and base32 secrets (rendezvous ids, tunnelc's parking).
#![forbid(unsafe_code)]

pub mod auth;
pub mod claim_table;
pub mod clock;
pub mod cluster_hook;
pub mod dial;
pub mod duration;
pub mod fd_limit;
pub mod form;
pub mod frontend;
pub mod futures_io;
pub mod home;
pub mod hostglob;
pub mod html;
pub mod http1;
pub mod http2;
pub mod http_forward;
pub mod http_serve;
pub mod hub;
pub mod idle;
pub mod io;
pub mod keepalive_pool;
pub mod kept_streams;
pub mod limits;
pub mod live_sessions;
pub mod metrics;
pub mod parking;
pub mod port_probe;
pub mod proto;
pub mod proxy_protocol;
pub mod reverse_http;
pub mod session;
pub mod sni;
pub mod splice;
pub mod ssh_keys;
pub mod stream_budget;
pub mod stream_slots;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod tls_listener;
pub mod totp;
pub mod transport;
pub mod tunnel_metrics;

pub use io::BoxIo;
pub use splice::splice;
