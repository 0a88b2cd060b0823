//! tunnelc's configuration.

pub use super::h2_serve::H2Serve;
use super::load::{self, ConfigError, Layers};
use super::log::LogConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tunneld_core::auth::Secret;
use tunneld_core::duration::serde_human;
use tunneld_core::proto::TunnelKind;
use tunneld_core::proxy_protocol;

/// The client example, used when `tunnelc` runs without `--config`.
pub const EMBEDDED: &str = include_str!("../../../client.example.yaml");
const TOP_KEYS: &[&str] = &[
    "server",
    "servers",
    "server_name",
    "transport",
    "token",
    "tls",
    "reconnect",
    "yamux",
    "accept_server_mappings",
    "connect_timeout",
    "log",
    "worker_threads",
    "tunnels",
    "rendezvous",
    "auth_key",
    "max_message",
    "max_conversations",
    "h2",
    "inspect",
];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// tunneld's transport address, `host:port`; for `transport: websocket` a URL,
    /// `http://host[:port]` or `https://host[:port]` (the server's own domain).
    pub server: String,
    /// Further tunneld transport addresses (the same tunneld cluster behind several
    /// addresses), in `server`'s format; tunnelc moves to the next one, round robin, when a
    /// dial fails or a session ends. See [`ClientConfig::server_list`].
    #[serde(default)]
    pub servers: Vec<String>,
    /// Name checked in tunneld's certificate; defaults to the host part of each server.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub transport: TransportKind,
    #[serde(default)]
    pub token: Option<Secret>,
    /// `transport: websocket`: a TPoT key (`Authorization: TPoT-1`) instead of a token; one
    /// `http` tunnel only.
    #[serde(default)]
    pub auth_key: Option<Secret>,
    /// `transport: websocket`: the largest WebSocket message accepted from tunneld.
    #[serde(default = "d1mib")]
    pub max_message: usize,
    /// `transport: websocket`: the most conversations (visitors) tunnelc takes at once on
    /// its session; sent in the hello, so tunneld opens no more (it refuses the next visitor
    /// itself).
    #[serde(default = "d4096")]
    pub max_conversations: usize,
    #[serde(default)]
    pub tls: ClientTls,
    #[serde(default)]
    pub reconnect: Reconnect,
    #[serde(default)]
    pub yamux: tunneld_transport_yamux::config::Tuning,
    /// `transport: h2-reverse`: tunnelc's HTTP/2 server.
    #[serde(default)]
    pub h2: H2Serve,
    /// Allow tunneld's admin API to add mappings whose local target tunneld chooses.
    #[serde(default)]
    pub accept_server_mappings: bool,
    /// Deadline for connecting to tunneld (TCP, TLS, hello) and to local services.
    #[serde(default = "d10s", with = "serde_human")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub log: LogConfig,
    /// Threads of tunnelc's runtime, at start; see [`ClientConfig::runtime_threads`] ([`super::runtime`]).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    #[serde(default)]
    pub tunnels: BTreeMap<String, TunnelConfig>,
    /// `transport: connect`: rendezvous id -> the local service its visitors reach.
    #[serde(default)]
    pub rendezvous: BTreeMap<String, RendezvousServe>,
    /// The request inspector of the `http` tunnels.
    #[serde(default)]
    pub inspect: super::inspect::InspectConfig,
}

/// One rendezvous id served over the `connect` transport.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RendezvousServe {
    /// The local service, host:port.
    pub local: String,
    /// Connections kept parked at tunneld; each one taken by a visitor is replaced at once.
    #[serde(default = "d4")]
    pub parked: usize,
    /// The id's base32 TOTP secret: this id parks with codes, even when `token` is set (the
    /// id then need not belong to the token's client); at most about two new parked
    /// connections per step, since tunnelc uses each code once.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// TOTP step in seconds (with `secret`).
    #[serde(default = "d30")]
    pub step: u64,
}

fn d4() -> usize {
    4
}
fn d1mib() -> usize {
    1 << 20
}
fn d4096() -> usize {
    4096
}
fn d30() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    #[default]
    Yamux,
    /// Park connections at tunneld's `connect` transport for the ids in `rendezvous`.
    Connect,
    /// Serve HTTP/2 to tunneld over the connection tunnelc opened (`h2-reverse`).
    H2Reverse,
    /// Conversations over one WebSocket (`websocket`, TPoT's protocol); works through
    /// HTTP-only proxies.
    Websocket,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle to trust (tunneld's `state/tls/ca.pem`, or a system bundle).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Trust exactly this server certificate: `sha256:<hex>` as tunneld prints it.
    #[serde(default)]
    pub pin: Option<String>,
    /// Client certificate and key for mTLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    #[serde(default = "d500ms", with = "serde_human")]
    pub initial: Duration,
    #[serde(default = "d30s", with = "serde_human")]
    pub max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: d500ms(),
            max: d30s(),
        }
    }
}

fn d500ms() -> Duration {
    Duration::from_millis(500)
}
fn d10s() -> Duration {
    Duration::from_secs(10)
}
fn d30s() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    #[serde(rename = "type", default = "tcp")]
    pub kind: TunnelKind,
    /// The local service, `host:port`.
    pub local: String,
    /// A specific public port; omit for any free one (kept across reconnects).
    #[serde(default)]
    pub remote_port: Option<u16>,
    /// A specific tunneld frontend by name.
    #[serde(default)]
    pub frontend: Option<String>,
    /// Write a PROXY protocol header (v1 or v2) to the local service.
    #[serde(default)]
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// `http`/`tls` tunnels: the public name (`<subdomain>.<domain>`); omit it for a random
    /// one, kept across reconnects. `tls` tunnels may use `*.name`.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// `http` tunnels: rewrite the `Host` header of every request to this value (for a
    /// local service with name-based virtual hosts), following keep-alive boundaries.
    #[serde(default)]
    pub host_header: Option<String>,
    /// `http` tunnels: visitors' requests share kept-alive connections to the local service
    /// (default; tunneld keeps the tunnel streams, each spliced to one local connection);
    /// `false` opens one per request, for services that tie state to a
    /// connection (NTLM or Negotiate authentication, say).
    #[serde(default = "yes")]
    pub reuse_connections: bool,
}

fn yes() -> bool {
    true
}

fn tcp() -> TunnelKind {
    TunnelKind::Tcp
}

/// The longest token tunnelc accepts in its config (tunneld's own are 35 characters).
pub const MAX_TOKEN: usize = 4096;

impl ClientConfig {
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, ConfigError> {
        let mut cfg: ClientConfig = load::load(&Layers {
            file,
            embedded: EMBEDDED,
            env_prefix: "TUNNELC_",
            env_keys: TOP_KEYS,
            sets,
        })?;
        cfg.validate()?;
        let r = |p: &PathBuf| load::resolve(file, p);
        cfg.tls.ca = cfg.tls.ca.as_ref().map(r);
        cfg.tls.cert = cfg.tls.cert.as_ref().map(r);
        cfg.tls.key = cfg.tls.key.as_ref().map(r);
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.check_server(&mut errors);
        self.check_credentials(&mut errors);
        self.check_link(&mut errors);
        self.check_rendezvous(&mut errors);
        self.check_tunnels(&mut errors);
        self.inspect.check(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { lines: errors })
        }
    }

    /// `server`, `servers` (and the websocket-only keys) for the transport.
    fn check_server(&self, errors: &mut Vec<String>) {
        self.check_address("server", &self.server, errors);
        for (i, s) in self.servers.iter().enumerate() {
            self.check_address(&format!("servers[{i}]"), s, errors);
        }
        if self.transport == TransportKind::Websocket {
            if self.auth_key.is_some() {
                let http = self.tunnels.values().filter(|t| t.kind == TunnelKind::Http);
                if self.token.is_none() && (self.tunnels.len() != 1 || http.count() != 1) {
                    errors.push("auth_key: a TPoT key carries exactly one `type: http` tunnel; use a token for more".into());
                }
            }
            if !(1024..=16 << 20).contains(&self.max_message) {
                errors.push("max_message: must be between 1024 and 16777216 bytes".into());
            }
            if !(1..=65535).contains(&self.max_conversations) {
                errors.push(format!(
                    "max_conversations: {} is outside 1..=65535",
                    self.max_conversations
                ));
            }
        } else if self.auth_key.is_some() {
            errors.push("auth_key: only for transport: websocket".into());
        }
        if let Err(e) = self.h2.validate() {
            errors.push(format!("h2.{e}"));
        }
    }

    /// One tunneld address (`key` names it): a URL for websocket, else host:port.
    fn check_address(&self, key: &str, addr: &str, errors: &mut Vec<String>) {
        if self.transport == TransportKind::Websocket {
            if let Err(e) = addr.parse::<tunneld_transport_websocket::client::ServerUrl>() {
                errors.push(format!("{key}: {e}"));
            }
        } else if split_host_port(addr).is_none() {
            errors.push(format!("{key}: `{addr}` is not host:port"));
        }
    }

    /// A token, a client certificate, a TPoT key or TOTP secrets; TLS trust.
    fn check_credentials(&self, errors: &mut Vec<String>) {
        let totp_only = self.transport == TransportKind::Connect
            && !self.rendezvous.is_empty()
            && self.rendezvous.values().all(|r| r.secret.is_some());
        if self.token.is_none() && self.tls.cert.is_none() && !totp_only && self.auth_key.is_none()
        {
            errors.push(
                "token: required unless tls.cert and tls.key (a client certificate) are set, or auth_key (websocket)".into(),
            );
        }
        if let Some(t) = &self.token {
            // The hello that carries it is at most 64 KiB; no token is anywhere near this.
            if t.0.is_empty() || t.0.len() > MAX_TOKEN {
                errors.push(format!(
                    "token: {} bytes; a token is 1 to {MAX_TOKEN} bytes",
                    t.0.len()
                ));
            } else if t.0.chars().any(char::is_control) {
                errors.push("token: contains control characters".into());
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            errors.push("tls.cert and tls.key: set both or neither".into());
        }
        if self.tls.ca.is_some() && self.tls.pin.is_some() {
            errors.push("tls.pin: set either tls.ca or tls.pin, not both".into());
        }
        if let Some(pin) = &self.tls.pin {
            let hex = pin.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                errors.push(format!(
                    "tls.pin: `{pin}` must be sha256: followed by 64 hex digits"
                ));
            }
        }
    }

    /// The multiplexer, the reconnect backoff, and what the transport carries.
    fn check_link(&self, errors: &mut Vec<String>) {
        if let Err((k, m)) = self.yamux.validate() {
            errors.push(format!("yamux.{k}: {m}"));
        }
        self.check_worker_threads(errors);
        if self.reconnect.initial.is_zero() || self.reconnect.max < self.reconnect.initial {
            errors.push("reconnect: initial must be above 0 and at most max".into());
        }
        match self.transport {
            TransportKind::Connect => {
                if self.rendezvous.is_empty() {
                    errors.push(
                        "rendezvous: transport connect needs at least one id to serve".into(),
                    );
                }
                if !self.tunnels.is_empty() {
                    errors.push("tunnels: transport connect carries rendezvous ids only; use transport yamux for tunnels".into());
                }
            }
            TransportKind::Yamux | TransportKind::H2Reverse | TransportKind::Websocket => {
                if !self.rendezvous.is_empty() {
                    errors.push("rendezvous: needs transport: connect".into());
                }
            }
        }
    }

    /// Each rendezvous id served (transport: connect).
    fn check_rendezvous(&self, errors: &mut Vec<String>) {
        for (id, r) in &self.rendezvous {
            if !tunneld_core::parking::valid_id(id) {
                errors.push(format!(
                    "rendezvous.{id}: invalid id (1-128 letters, digits, `-`, `_`, `.`)"
                ));
            }
            if split_host_port(&r.local).is_none() {
                errors.push(format!(
                    "rendezvous.{id}.local: `{}` is not host:port",
                    r.local
                ));
            }
            if !(1..=64).contains(&r.parked) {
                errors.push(format!("rendezvous.{id}.parked: must be 1-64"));
            }
            if !(5..=300).contains(&r.step) {
                errors.push(format!("rendezvous.{id}.step: must be 5-300 seconds"));
            }
            if let Some(s) = &r.secret {
                if let Err(e) = tunneld_core::totp::decode_secret(&s.0) {
                    errors.push(format!("rendezvous.{id}.secret: {e}"));
                }
            }
        }
    }

    /// Each tunnel's local address and the keys its type allows.
    fn check_tunnels(&self, errors: &mut Vec<String>) {
        for (name, t) in &self.tunnels {
            if split_host_port(&t.local).is_none() {
                errors.push(format!(
                    "tunnels.{name}.local: `{}` is not host:port",
                    t.local
                ));
            }
            if t.remote_port == Some(0) {
                errors.push(format!(
                    "tunnels.{name}.remote_port: must be 1-65535 (omit it for any port)"
                ));
            }
            if t.subdomain.is_some() && t.kind == TunnelKind::Tcp {
                errors.push(format!(
                    "tunnels.{name}.subdomain: only for `type: http` or `type: tls` tunnels"
                ));
            }
            if t.host_header.is_some() && t.kind != TunnelKind::Http {
                errors.push(format!(
                    "tunnels.{name}.host_header: only for `type: http` tunnels"
                ));
            }
            if t.host_header.as_deref().is_some_and(|h| {
                h.is_empty() || h.bytes().any(|c| c.is_ascii_control() || c == b' ')
            }) {
                errors.push(format!(
                    "tunnels.{name}.host_header: must be a host[:port] without spaces"
                ));
            }
            if t.remote_port.is_some() && t.kind != TunnelKind::Tcp {
                errors.push(format!(
                    "tunnels.{name}.remote_port: only for `type: tcp` tunnels (http and tls tunnels get a name)"
                ));
            }
        }
    }

    /// Every tunneld address, in the order tunnelc tries them: `server`, then `servers`,
    /// each once (a repeated address is dropped).
    pub fn server_list(&self) -> Vec<String> {
        let mut list: Vec<String> = Vec::with_capacity(1 + self.servers.len());
        for s in std::iter::once(&self.server).chain(&self.servers) {
            if !list.contains(s) {
                list.push(s.clone());
            }
        }
        list
    }

    /// This configuration for one of its servers: `server` is `addr`, `servers` is empty,
    /// and [`ClientConfig::server_name`] defaults to `addr`'s host.
    pub fn for_server(&self, addr: &str) -> ClientConfig {
        ClientConfig {
            server: addr.to_string(),
            servers: Vec::new(),
            ..self.clone()
        }
    }

    /// The name to check in tunneld's certificate: `server_name`, else `server`'s host.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        if self.transport == TransportKind::Websocket {
            return self
                .server
                .parse::<tunneld_transport_websocket::client::ServerUrl>()
                .map(|u| u.host)
                .unwrap_or_default();
        }
        split_host_port(&self.server)
            .map(|(h, _)| h.to_string())
            .unwrap_or_default()
    }
}

/// Splits `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
