//! tunneld's configuration.

use super::load::{self, ConfigError, Layers};
use figment::value::Value;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tunneld_core::auth::Secret;
use tunneld_core::duration::serde_human;

/// The `log:` section, shared with tunnelc (`tunneld_client::config::log`).
pub use tunneld_client::config::log::{LogConfig, LogFormat};

mod listeners;
mod validate;

/// The example config, also tunneld's embedded default.
pub const EMBEDDED: &str = include_str!("../../../config.example.yaml");
const TOP_KEYS: &[&str] = &[
    "state_dir",
    "log",
    "tls",
    "auth",
    "limits",
    "admin",
    "rendezvous",
    "transports",
    "frontends",
    "control",
    "cluster",
    "worker_threads",
];
pub const TRANSPORT_TYPES: &[&str] = &["yamux", "connect", "h2-reverse", "websocket", "ssh"];
pub const FRONTEND_TYPES: &[&str] = &["ports", "rendezvous", "https-subdomain"];

#[doc(hidden)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    admin: Option<AdminConfig>,
    #[serde(default)]
    rendezvous: RendezvousConfig,
    #[serde(default)]
    transports: BTreeMap<String, Value>,
    #[serde(default)]
    frontends: BTreeMap<String, Value>,
    #[serde(default)]
    control: Option<super::control::ControlConfig>,
    #[serde(default)]
    cluster: Option<super::cluster::ClusterConfig>,
    #[serde(default)]
    worker_threads: Option<usize>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; without it tunneld issues its own from its CA.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Names for the self-issued certificate.
    #[serde(default = "default_names")]
    pub names: Vec<String>,
    /// An `https-subdomain` frontend with `acme:` whose certificates the transports serve too
    /// (its apex's, for clients whose `server_name` is the frontend's domain).
    #[serde(default)]
    pub acme_from: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            names: default_names(),
            acme_from: None,
        }
    }
}

fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Client id -> token. The id is how the client appears in logs, metrics and the API.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
    /// PEM CA that signs client certificates (mTLS). The certificate's CN is the client id.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS connections without a valid client certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Port quota of clients identified by certificate.
    #[serde(default)]
    pub certificate_max_ports: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token, or `sha256:<hex>` of it.
    pub token: Secret,
    #[serde(default)]
    pub max_ports: Option<u32>,
    /// OpenSSH public key lines (`ssh-ed25519 AAAA... comment`) that authenticate as this
    /// client on `ssh` transports.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// One deadline for TLS, hello and authentication.
    #[serde(default = "d10s", with = "serde_human")]
    pub handshake_timeout: Duration,
    #[serde(default = "d256")]
    pub max_pending_handshakes: usize,
    #[serde(default = "d16")]
    pub max_pending_per_address: usize,
    /// Interval of client keepalive pings; a peer silent for three intervals is dropped.
    #[serde(default = "d10s", with = "serde_human")]
    pub keepalive: Duration,
    /// How long SIGTERM waits for open visitor streams.
    #[serde(default = "d30s", with = "serde_human")]
    pub drain_timeout: Duration,
    /// Largest visitor request head, bytes: every frontend answers 431 above it, and the
    /// links carry anything below it.
    #[serde(default = "d_head")]
    pub max_request_head: usize,
    /// Largest response head of a local service, bytes: above it that visitor gets 502.
    #[serde(default = "d_head")]
    pub max_response_head: usize,
    /// Visitor streams open at once through one tunnel of one session.
    #[serde(default = "d1024")]
    pub max_streams_per_tunnel: usize,
    /// Visitor streams open at once from one visitor address through one session.
    #[serde(default = "d1024")]
    pub max_streams_per_address: usize,
    /// A visitor stream whose writes make no progress this long is reset.
    #[serde(default = "d60s", with = "serde_human")]
    pub stream_stall_timeout: Duration,
    /// Visitor connections open at once from one source address on one listener.
    #[serde(default = "d1024")]
    pub max_connections_per_address: usize,
    /// A spliced visitor connection with no byte either way this long is closed; 0s: never.
    #[serde(default = "d10m", with = "serde_human")]
    pub idle_timeout: Duration,
    /// An HTTP visitor connection with no request in progress this long is closed.
    #[serde(default = "d75s", with = "serde_human")]
    pub http_idle_timeout: Duration,
    /// Failed authentications one source address may make at once (tokens, TPoT-1 keys, API
    /// tokens together; IPv6 by /64); they come back at this many per `auth_failure_window`.
    #[serde(default = "d10u32")]
    pub max_auth_failures: u32,
    #[serde(default = "d60s", with = "serde_human")]
    pub auth_failure_window: Duration,
}

impl Limits {
    /// What the components read (all but the failed-authentication budget).
    pub fn data(&self) -> tunneld_core::limits::DataLimits {
        tunneld_core::limits::DataLimits {
            max_request_head: self.max_request_head,
            max_response_head: self.max_response_head,
            max_streams_per_tunnel: self.max_streams_per_tunnel,
            max_streams_per_address: self.max_streams_per_address,
            stream_stall_timeout: self.stream_stall_timeout,
            max_connections_per_address: self.max_connections_per_address,
            idle_timeout: self.idle_timeout,
            http_idle_timeout: self.http_idle_timeout,
            handshake_timeout: self.handshake_timeout,
            max_pending_handshakes: self.max_pending_handshakes,
            max_pending_per_address: self.max_pending_per_address,
            keepalive: self.keepalive,
            drain_timeout: self.drain_timeout,
        }
    }
}

fn d_head() -> usize {
    tunneld_core::limits::DEFAULT_MAX_HEAD
}
fn d1024() -> usize {
    1024
}
fn d60s() -> Duration {
    Duration::from_secs(60)
}
fn d75s() -> Duration {
    Duration::from_secs(75)
}

fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}
fn d256() -> usize {
    256
}
fn d16() -> usize {
    16
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: d10s(),
            max_pending_handshakes: d256(),
            max_pending_per_address: d16(),
            keepalive: d10s(),
            drain_timeout: d30s(),
            max_request_head: d_head(),
            max_response_head: d_head(),
            max_streams_per_tunnel: d1024(),
            max_streams_per_address: d1024(),
            stream_stall_timeout: d60s(),
            max_connections_per_address: d1024(),
            idle_timeout: d10m(),
            http_idle_timeout: d75s(),
            max_auth_failures: d10u32(),
            auth_failure_window: d60s(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every route but /healthz, /readyz, /ping and /openapi.yaml needs
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// The shape of `GET /clients` and `GET /tunnels` when the request names none
    /// (`?shape=`): `tunneld` (default) or `threshold`.
    #[serde(default)]
    pub shape: crate::admin_threshold::Shape,
    /// Per-tunnel series (`tunneld_tunnel_*`, labelled by public name) on /metrics.
    #[serde(default)]
    pub per_tunnel_metrics: bool,
    /// Tunnels with per-tunnel series at once; past it idle ones make room, then `_other`.
    #[serde(default = "d500")]
    pub max_tunnel_series: usize,
}

fn d500() -> usize {
    500
}

/// Rendezvous ids (in `<state_dir>/rendezvous.json`) and the limits shared by the `connect`
/// transport and the `rendezvous` frontend.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Parked hidden-server connections kept per id; a newer one evicts the oldest.
    #[serde(default = "d16")]
    pub max_parked_per_id: usize,
    /// Failed TOTP attempts allowed per id and per source address within `failure_window`.
    #[serde(default = "d10u32")]
    pub max_failures: u32,
    #[serde(default = "d10m", with = "serde_human")]
    pub failure_window: Duration,
}

fn d10u32() -> u32 {
    10
}
fn d10m() -> Duration {
    Duration::from_secs(600)
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self {
            max_parked_per_id: d16(),
            max_failures: d10u32(),
            failure_window: d10m(),
        }
    }
}

/// A transport, by `type:`.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportConfig {
    Yamux(tunneld_transport_yamux::Config),
    Connect(tunneld_transport_connect::Config),
    H2Reverse(tunneld_transport_h2_reverse::Config),
    Websocket(tunneld_transport_websocket::Config),
    Ssh(tunneld_transport_ssh::Config),
}

/// A frontend, by `type:`.
#[derive(Debug, Clone, PartialEq)]
pub enum FrontendConfig {
    Ports(tunneld_frontend_ports::Config),
    Rendezvous(tunneld_frontend_rendezvous::Config),
    Https(tunneld_frontend_https::Config),
}

/// The validated configuration. Paths are resolved against the config file's directory.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub state_dir: PathBuf,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub admin: Option<AdminConfig>,
    pub rendezvous: RendezvousConfig,
    pub transports: BTreeMap<String, TransportConfig>,
    pub frontends: BTreeMap<String, FrontendConfig>,
    pub control: Option<super::control::ControlConfig>,
    /// Cluster mode (`cluster:`); none for a single tunneld.
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// The runtime's worker threads, read at start (`None`: one per core, or
    /// `TOKIO_WORKER_THREADS`).
    pub worker_threads: Option<usize>,
}

impl ServerConfig {
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, ConfigError> {
        let raw: Raw = load::load(&Layers {
            file,
            embedded: EMBEDDED,
            env_prefix: "TUNNELD_",
            env_keys: TOP_KEYS,
            sets,
        })?;
        Self::validate(raw, file)
    }

    #[doc(hidden)]
    pub fn validate(raw: Raw, file: Option<&Path>) -> Result<Self, ConfigError> {
        validate::validate(raw, file)
    }
}

pub(super) fn unreachable_type<T>(ty: &str) -> Result<T, ConfigError> {
    Err(ConfigError::one(format!("type `{ty}` has no builder")))
}
