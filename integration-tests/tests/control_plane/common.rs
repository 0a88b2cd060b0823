//! What the control-plane tests share: a tunneld process with the control plane (`Plane`),
//! API calls, tunnelc runs in process and as a binary, and openssl.

pub(crate) use anyhow::{anyhow, Context, Result};
pub(crate) use http::Method;
pub(crate) use serde_json::{json, Value};
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::Command;
pub(crate) use tokio::sync::mpsc;
pub(crate) use tokio_util::sync::CancellationToken;
pub(crate) use tunneld_client::client::{self, ClientEvent};
pub(crate) use tunneld_client::config::client::ClientConfig;
pub(crate) use tunneld_client::setup::api_client::ApiClient;
pub(crate) use tunneld_core::tls::ClientTrust;
pub(crate) use tunneld_integration_tests::process::{binary, curl, field, Proc};
pub(crate) use tunneld_integration_tests::{port_block, server_yaml, temp_dir, WAIT};

pub(crate) const PLANE: &str = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\ncontrol:\n  listen: 127.0.0.1:0\n  web_listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n  header_timeout: 1s\n";

/// A tunneld process with the control plane.
pub(crate) struct Plane {
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) proc: Proc,
    pub(crate) api: SocketAddr,
    pub(crate) web: SocketAddr,
    pub(crate) https: SocketAddr,
    pub(crate) transport: SocketAddr,
    pub(crate) admin: SocketAddr,
}

pub(crate) fn addr(line: &str) -> SocketAddr {
    field(line, "addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in `{line}`"))
}

impl Plane {
    pub(crate) async fn start() -> Result<Self> {
        let dir = temp_dir("plane");
        let config = dir.join("server.yaml");
        std::fs::write(
            &config,
            server_yaml(&dir.join("state"), port_block(), PLANE),
        )?;
        Self::run(dir, config).await
    }

    /// Starts (again) on the same config and state.
    pub(crate) async fn run(dir: PathBuf, config: PathBuf) -> Result<Self> {
        let n = std::fs::read_dir(&dir)?.count();
        let mut proc = Proc::spawn(
            "tunneld",
            &["--config", config.to_str().context("utf8")?],
            dir.join(format!("tunneld-{n}.log")),
        )?;
        let transport = addr(&proc.line_starting("listening transport=edge").await?);
        let https = addr(&proc.line_starting("listening frontend=web").await?);
        let admin = addr(&proc.line_starting("listening admin").await?);
        let api = addr(&proc.line_starting("listening control").await?);
        let web = addr(&proc.line_starting("listening web").await?);
        proc.line_starting("ready").await?;
        Ok(Self {
            dir,
            config,
            proc,
            api,
            web,
            https,
            transport,
            admin,
        })
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("state/tls/ca.pem")
    }

    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.api.port())
    }

    /// `tunneld token add NAME ARGS...`; returns the token.
    pub(crate) fn token(&self, name: &str, args: &[&str]) -> Result<String> {
        let out = self.cli(&[&["token", "add", name], args].concat())?;
        out.lines()
            .find_map(|l| l.strip_prefix("token: "))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token in {out}"))
    }

    /// Runs `tunneld --config <config> ARGS` and returns stdout; fails on a non-zero exit.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String> {
        tunneld_integration_tests::process::tunneld_cli(&self.config, args)
    }

    pub(crate) fn api(&self, token: &str) -> Result<ApiClient> {
        ApiClient::new(
            &self.url(),
            &ClientTrust::CaFile(self.ca()),
            None,
            Some(token.to_string()),
        )
    }

    pub(crate) async fn metrics(&self) -> String {
        let (_, body) = curl(&[&format!("http://{}/metrics", self.admin)])
            .await
            .expect("metrics");
        body
    }
}

/// (status, JSON body) of one API call.
pub(crate) async fn call(
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let (status, answer) = api
        .call(method, path, "application/json", bytes)
        .await
        .expect("API answers");
    (
        status.as_u16(),
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

/// Asserts that the metrics text has `line`.
pub(crate) fn has(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
}

pub(crate) fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Posts a CSR for tunnel `erin-site`; (status, JSON).
pub(crate) async fn sign(api: &ApiClient, body: String) -> (u16, Value) {
    let (s, a) = api
        .call(
            Method::POST,
            "/v1/tunnels/erin-site/certificate",
            "application/pkcs10",
            body.into_bytes(),
        )
        .await
        .expect("answer");
    (
        s.as_u16(),
        serde_json::from_slice::<Value>(&a).unwrap_or(Value::Null),
    )
}

/// A client config for `token` with `tunnels` (YAML map body).
pub(crate) fn client_cfg(p: &Plane, token: &str, tunnels: &str) -> Result<ClientConfig> {
    let file = temp_dir("client").join("client.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {}\nserver_name: localhost\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 200ms }}\ntunnels:\n{tunnels}",
            p.transport,
            p.ca().display()
        ),
    )?;
    ClientConfig::load(Some(&file), &[]).map_err(|e| anyhow!("{e}"))
}

/// Runs tunnelc in-process; returns its events and the task's result.
pub(crate) fn run_client(
    cfg: ClientConfig,
) -> (
    mpsc::UnboundedReceiver<ClientEvent>,
    tokio::task::JoinHandle<Result<()>>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let task = tokio::spawn(client::run(cfg, tx, stop.clone()));
    (rx, task, stop)
}

pub(crate) async fn next_event(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("client running")
}

/// The error a client task ends with when tunneld refuses it for good.
pub(crate) async fn refused(task: tokio::task::JoinHandle<Result<()>>) -> anyhow::Error {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("refused")
}

/// The next two events are a connect and then a disconnect.
pub(crate) async fn connected_then_cut(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) {
    assert!(matches!(
        next_event(rx).await,
        ClientEvent::Connected { .. }
    ));
    assert!(matches!(
        next_event(rx).await,
        ClientEvent::Disconnected { .. }
    ));
}

pub(crate) fn tunnelc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("tunnelc").expect("tunnelc"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tunnelc runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub(crate) fn pem_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
        }
        if inside {
            out.push_str(l);
            out.push('\n');
        }
        if l.starts_with("-----END CERTIFICATE") {
            inside = false;
        }
    }
    out
}
