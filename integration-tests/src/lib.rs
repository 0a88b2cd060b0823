//! Test harness for tunneld on loopback: an in-process server and client built from real
//! configs, local services (echo, HTTP, PROXY-aware), a Prometheus text parser, and helpers
//! that run the real binaries. Every wait is bounded; nothing sleeps to synchronize.
#![forbid(unsafe_code)]

pub mod attack;
pub mod browser;
pub mod cluster;
pub mod h2body;
pub mod h2raw;
pub mod kept;
pub mod metrics;
pub mod neighbour;
pub mod pebble;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod raw_http;
pub mod services;
pub mod ssh;
pub mod trickle;

pub use pki::{client_pki, server_pki};

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_client::client::{self, ClientEvent};
use tunneld_client::config::client::ClientConfig;
use tunneld_daemon::config::server::ServerConfig;
use tunneld_daemon::server::{self, Running};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// A token the harness configures for client `alice`.
pub const ALICE_TOKEN: &str = "alice-token-0123456789abcdef";
pub const BOB_TOKEN: &str = "bob-token-0123456789abcdef00";

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU16 = AtomicU16::new(0);
    let d = std::env::temp_dir().join(format!(
        "tunneld-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A block of 20 ports below the kernel's ephemeral range, different for each server of a
/// test process and spread across processes, so parallel tests do not collide.
pub fn port_block() -> (u16, u16) {
    static N: AtomicU16 = AtomicU16::new(0);
    let k = N.fetch_add(1, Ordering::Relaxed) as u32;
    let slot = (std::process::id().wrapping_mul(37) + k * 13) % 600;
    let first = 20_000 + (slot * 20) as u16;
    (first, first + 19)
}

/// Server YAML for tests: everything on 127.0.0.1 port 0 and a private port block.
pub fn server_yaml(state: &std::path::Path, range: (u16, u16), extra: &str) -> String {
    format!(
        r#"state_dir: {state}
log: {{ level: info }}
auth:
  tokens:
    alice: {{ token: {ALICE_TOKEN}, max_ports: 3 }}
    bob: {{ token: "sha256:{bob}" }}
limits:
  handshake_timeout: 2s
  keepalive: 1s
  drain_timeout: 5s
admin:
  listen: 127.0.0.1:0
transports:
  edge:
    type: yamux
    listen: 127.0.0.1:0
frontends:
  tcp:
    type: ports
    bind: 127.0.0.1
    range: {a}-{b}
    reclaim_grace: 30s
{extra}"#,
        state = state.display(),
        bob = tunneld_core::auth::hex(&tunneld_core::auth::sha256(BOB_TOKEN.as_bytes())),
        a = range.0,
        b = range.1,
    )
}

/// An `https-subdomain` frontend `web` (domain `localhost`) sharing its port with the `h2`
/// transport; [`TestServer::start_web`] appends more of its keys after it.
pub const WEB_FRONTEND: &str = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\n    transport: h2\n    reclaim_grace: 30s\n    open_timeout: 10s\n";

/// An in-process tunneld.
pub struct TestServer {
    pub running: Running,
    pub dir: PathBuf,
    pub range: (u16, u16),
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::start_with("").await
    }

    /// `extra` is YAML appended to (and, for repeated top-level keys, not allowed by) the
    /// base config; use `--set`-style overrides through `sets` in [`TestServer::start_full`].
    pub async fn start_with(extra: &str) -> Result<Self> {
        Self::start_full(extra, &[]).await
    }

    /// A server with `extra` frontends that reloads from its own file: (server, file, its
    /// text).
    pub async fn reloadable(extra: &str) -> Result<(Self, PathBuf, String)> {
        let s = Self::start_with(extra).await?;
        let file = s.dir.join("server.yaml");
        let text = std::fs::read_to_string(&file)?;
        s.running
            .reloader
            .set_source(Some(tunneld_daemon::reload::Source {
                file: file.clone(),
                sets: Vec::new(),
            }));
        Ok((s, file, text))
    }

    pub async fn start_full(extra: &str, sets: &[String]) -> Result<Self> {
        let dir = temp_dir("server");
        let range = port_block();
        let file = dir.join("server.yaml");
        std::fs::write(&file, server_yaml(&dir.join("state"), range, extra))?;
        let cfg = ServerConfig::load(Some(&file), sets).map_err(|e| anyhow!("{e}"))?;
        let running = server::start(cfg).await?;
        Ok(Self {
            running,
            dir,
            range,
        })
    }

    /// A server with the `web` frontend and the `h2` transport (its own listener too);
    /// `web_extra` holds more keys of `web` (indented four spaces).
    pub async fn start_web(web_extra: &str) -> Result<Self> {
        Self::start_web_with(web_extra, &[]).await
    }

    /// [`TestServer::start_web`] with more `--set`-style overrides.
    pub async fn start_web_with(web_extra: &str, sets: &[&str]) -> Result<Self> {
        let mut all = vec![
            "transports.h2.type=h2-reverse".to_string(),
            "transports.h2.listen=127.0.0.1:0".to_string(),
        ];
        all.extend(sets.iter().map(|s| s.to_string()));
        Self::start_full(&format!("{WEB_FRONTEND}{web_extra}"), &all).await
    }

    /// The `web` frontend's address.
    pub fn web(&self) -> SocketAddr {
        self.running.frontends["web"]
    }

    /// Client config for transport `h2-reverse` through the `web` frontend's shared port.
    pub fn h2_client_config(&self, token: &str, tunnels: &str) -> Result<ClientConfig> {
        self.h2_client_config_with(token, tunnels, &[])
    }

    /// [`Self::h2_client_config`] with `--set`-style overrides.
    pub fn h2_client_config_with(
        &self,
        token: &str,
        tunnels: &str,
        sets: &[String],
    ) -> Result<ClientConfig> {
        let yaml = format!(
            "server: {}\nserver_name: localhost\ntransport: h2-reverse\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n{tunnels}",
            self.web(),
            self.ca_file().display()
        );
        let file = temp_dir("client").join("client.yaml");
        std::fs::write(&file, yaml)?;
        ClientConfig::load(Some(&file), sets).map_err(|e| anyhow!("{e}"))
    }

    pub fn transport(&self) -> SocketAddr {
        self.running.transports["edge"]
    }

    pub fn admin(&self) -> SocketAddr {
        self.running.admin.expect("admin listener")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.running.ca_file.clone().expect("self-issued CA")
    }

    /// Client YAML pointing at this server; `tunnels` is the YAML of the `tunnels:` map.
    pub fn client_yaml(&self, token: &str, tunnels: &str) -> String {
        format!(
            "server: {}\nserver_name: localhost\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n{tunnels}",
            self.transport(),
            self.ca_file().display()
        )
    }

    pub fn client_config(&self, token: &str, tunnels: &str) -> Result<ClientConfig> {
        self.client_config_with(token, tunnels, &[])
    }

    pub fn client_config_with(
        &self,
        token: &str,
        tunnels: &str,
        sets: &[String],
    ) -> Result<ClientConfig> {
        let file = temp_dir("client").join("client.yaml");
        std::fs::write(&file, self.client_yaml(token, tunnels))?;
        ClientConfig::load(Some(&file), sets).map_err(|e| anyhow!("{e}"))
    }

    /// Starts tunneld from a config file (such as `config.example.yaml`) with `--set`-style
    /// overrides; the caller moves its listeners to port 0 and its state to a temp dir.
    pub async fn from_file(file: &std::path::Path, sets: &[String]) -> Result<Self> {
        let dir = temp_dir("server");
        let cfg = ServerConfig::load(Some(file), sets).map_err(|e| anyhow!("{e}"))?;
        let running = server::start(cfg).await?;
        Ok(Self {
            running,
            dir,
            range: (0, 0),
        })
    }

    /// Calls the admin API with curl; answers (status, body). JSON bodies.
    pub async fn admin_call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin());
        let mut args = vec!["-X", method, "-w", "\n%{http_code}"];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        args.push(&url);
        let (_, out) = process::curl(&args).await.expect("curl runs");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Spawns the Go threshold client against this server's `edge` transport. `services`
    /// are its `name=host:port` local services.
    pub fn spawn_threshold_client(
        &self,
        go: &std::path::Path,
        extra: &[&str],
        services: &[(&str, SocketAddr)],
        tag: &str,
    ) -> Result<process::Proc> {
        let mut args: Vec<String> = vec![
            "-server".into(),
            self.transport().to_string(),
            "-servername".into(),
            "localhost".into(),
            "-ca".into(),
            self.ca_file().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        for (name, a) in services {
            args.push("-service".into());
            args.push(format!("{name}={a}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        process::Proc::spawn_program(go, &args, self.dir.join(format!("{tag}.err")))
    }

    /// A TLS connection to the `edge` transport that trusts tunneld's CA, before any
    /// protocol byte (for hostile-input tests).
    pub async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls_connect_to(self.transport(), tunneld_transport_yamux::ALPN)
            .await
    }

    /// A TLS connection to any of this server's listeners, trusting its CA.
    pub async fn tls_connect_to(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls_connect_from([127, 0, 0, 1], addr, alpn).await
    }

    /// [`TestServer::tls_connect_to`] from another loopback source address.
    pub async fn tls_connect_from(
        &self,
        from: [u8; 4],
        addr: SocketAddr,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let cfg = tunneld_core::tls::client_config(
            &tunneld_core::tls::ClientTrust::CaFile(self.ca_file()),
            None,
            &[alpn],
        )
        .expect("tls config");
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from((from, 0)))
            .expect("bind a loopback source");
        let tcp = sock.connect(addr).await.expect("connect");
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("tls")
    }

    /// The current metrics, parsed.
    pub async fn metrics(&self) -> metrics::Samples {
        metrics::parse(&self.running.metrics.render()).expect("metrics parse as Prometheus text")
    }

    /// Waits (bounded by [`WAIT`]) until the series `name{labels}` reaches `at_least`, and
    /// returns the metrics then: counts made as a connection closes may land a moment after
    /// the peer saw the close.
    pub async fn metrics_when(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
    ) -> metrics::Samples {
        self.metrics_until(|m| m.get(name, labels) >= at_least)
            .await
    }

    /// Waits (bounded by [`WAIT`]) until `done` holds for the metrics, and returns them then
    /// (the last ones read when the wait ran out).
    pub async fn metrics_until(
        &self,
        done: impl Fn(&metrics::Samples) -> bool,
    ) -> metrics::Samples {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.metrics().await;
            if done(&m) || tokio::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An in-process tunnelc.
pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<()>>,
}

impl TestClient {
    pub fn spawn(cfg: ClientConfig) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { client::run(cfg, tx, s).await });
        Self { events, stop, task }
    }

    /// Waits for the next `Connected` event and returns the tunnels' endpoints by name.
    pub async fn connected(&mut self) -> Result<Vec<tunneld_core::proto::TunnelStatus>> {
        Ok(self.connected_via().await?.1)
    }

    /// Waits for the next `Connected` event: the server it connected to, and the tunnels.
    pub async fn connected_via(
        &mut self,
    ) -> Result<(String, Vec<tunneld_core::proto::TunnelStatus>)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .context("timed out waiting for the client to connect")?
                .ok_or_else(|| anyhow!("client stopped before connecting"))?;
            if let ClientEvent::Connected {
                server, tunnels, ..
            } = ev
            {
                return Ok((server, tunnels));
            }
        }
    }

    /// Connects and returns the endpoint of tunnel `name` as a socket address.
    pub async fn endpoint(&mut self, name: &str) -> Result<SocketAddr> {
        let tunnels = self.connected().await?;
        endpoint_of(&tunnels, name)
    }

    /// Stops the client and waits for it to end.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task).await??
    }
}

/// The socket address of tunnel `name` in a tunnel list.
pub fn endpoint_of(
    tunnels: &[tunneld_core::proto::TunnelStatus],
    name: &str,
) -> Result<SocketAddr> {
    let t = tunnels
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow!("no tunnel {name} in {tunnels:?}"))?;
    let ep = t
        .endpoint
        .as_deref()
        .ok_or_else(|| anyhow!("tunnel {name} refused: {:?}", t.error))?;
    ep.trim_start_matches("tcp://")
        .parse()
        .context("endpoint address")
}

/// SHA-256 as hex.
pub fn sha256_hex(data: &[u8]) -> String {
    tunneld_core::auth::hex(&tunneld_core::auth::sha256(data))
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
