//! The control plane over loopback with the real binaries: tokens from `tunneld token add`,
//! quotas, single use, expiry and revocation cutting live sessions, the provisioning API,
//! CSR signing (refused for names the caller does not own), `tunnelc setup/test/env/list`,
//! `openssl verify` on issued certificates and through SNI passthrough, the plain web
//! port's 302, and state surviving a restart and a `kill -9` in the middle of writes.

use anyhow::{anyhow, Context, Result};
use http::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_client::client::{self, ClientEvent};
use tunneld_client::config::client::ClientConfig;
use tunneld_client::setup::api_client::ApiClient;
use tunneld_core::tls::ClientTrust;
use tunneld_integration_tests::process::{binary, curl, field, Proc};
use tunneld_integration_tests::{port_block, server_yaml, temp_dir, WAIT};

const PLANE: &str = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\ncontrol:\n  listen: 127.0.0.1:0\n  web_listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n  header_timeout: 1s\n";

/// A tunneld process with the control plane.
struct Plane {
    dir: PathBuf,
    config: PathBuf,
    proc: Proc,
    api: SocketAddr,
    web: SocketAddr,
    https: SocketAddr,
    transport: SocketAddr,
    admin: SocketAddr,
}

fn addr(line: &str) -> SocketAddr {
    field(line, "addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in `{line}`"))
}

impl Plane {
    async fn start() -> Result<Self> {
        let dir = temp_dir("plane");
        let config = dir.join("server.yaml");
        std::fs::write(
            &config,
            server_yaml(&dir.join("state"), port_block(), PLANE),
        )?;
        Self::run(dir, config).await
    }

    /// Starts (again) on the same config and state.
    async fn run(dir: PathBuf, config: PathBuf) -> Result<Self> {
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

    fn ca(&self) -> PathBuf {
        self.dir.join("state/tls/ca.pem")
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.api.port())
    }

    /// `tunneld token add NAME ARGS...`; returns the token.
    fn token(&self, name: &str, args: &[&str]) -> Result<String> {
        let out = self.cli(&[&["token", "add", name], args].concat())?;
        out.lines()
            .find_map(|l| l.strip_prefix("token: "))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token in {out}"))
    }

    /// Runs `tunneld --config <config> ARGS` and returns stdout; fails on a non-zero exit.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary("tunneld")?)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tunneld {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn api(&self, token: &str) -> Result<ApiClient> {
        ApiClient::new(
            &self.url(),
            &ClientTrust::CaFile(self.ca()),
            None,
            Some(token.to_string()),
        )
    }

    async fn metrics(&self) -> String {
        let (_, body) = curl(&[&format!("http://{}/metrics", self.admin)])
            .await
            .expect("metrics");
        body
    }
}

/// (status, JSON body) of one API call.
async fn call(api: &ApiClient, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
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
fn has(metrics: &str, line: &str) {
    assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Posts a CSR for tunnel `erin-site`; (status, JSON).
async fn sign(api: &ApiClient, body: String) -> (u16, Value) {
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
fn client_cfg(p: &Plane, token: &str, tunnels: &str) -> Result<ClientConfig> {
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
fn run_client(
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

async fn next_event(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("client running")
}

/// The error a client task ends with when tunneld refuses it for good.
async fn refused(task: tokio::task::JoinHandle<Result<()>>) -> anyhow::Error {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("refused")
}

/// The next two events are a connect and then a disconnect.
async fn connected_then_cut(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) {
    assert!(matches!(
        next_event(rx).await,
        ClientEvent::Connected { .. }
    ));
    assert!(matches!(
        next_event(rx).await,
        ClientEvent::Disconnected { .. }
    ));
}

fn tunnelc(args: &[&str]) -> (bool, String, String) {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn openssl(args: &[&str]) -> (bool, String) {
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

fn pem_blocks(text: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_test_env_list_openssl_and_redirect() {
    let p = Plane::start().await.expect("tunneld");
    let token = p.token("carol", &["--max-ports", "1"]).expect("token");
    let dir = p.dir.join("tunnels");
    let (https_port, tcp_port) = (free_port(), free_port());
    let ports = format!("{https_port},{tcp_port}");
    let (ok, out, err) = tunnelc(&[
        "setup",
        "--server",
        &p.url(),
        "--token",
        &token,
        "--protocols",
        "https,tcp",
        "--ports",
        &ports,
        "--dir",
        dir.to_str().expect("utf8"),
        "--ca",
        p.ca().to_str().expect("utf8"),
    ]);
    assert!(ok, "setup: {out} {err}");
    let name = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("tunnel "))
        .and_then(|l| l.split_whitespace().next())
        .expect("name")
        .to_string();
    assert_eq!(name.split('-').count(), 3, "readable name: {name}");
    let fqdn = format!("{name}.localhost");
    assert!(
        out.contains(&format!("https://{fqdn}:{}", p.https.port())),
        "{out}"
    );
    assert!(out.contains("tcp://127.0.0.1:"), "{out}");
    let tdir = dir.join(&name);

    // tunnelc test: every endpoint passes, end to end.
    let d = dir.to_str().expect("utf8");
    let (ok, out, err) = tunnelc(&["test", "--dir", d]);
    assert!(ok, "test: {out} {err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        2,
        "{out}"
    );

    // tunnelc env is sourceable by sh, and exports: a child process sees the values.
    let (ok, env, err) = tunnelc(&["env", &name, "--dir", d]);
    assert!(ok, "{err}");
    let env_file = p.dir.join("tunnel.env");
    std::fs::write(&env_file, &env).expect("env file");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && sh -c 'printf \"%s|%s|%s|%s\" \"$TUNNEL_NAME\" \"$TUNNEL_HTTPS_URL\" \"$TUNNEL_TCP_LOCAL_PORT\" \"$TUNNEL_CERT\"'",
            env_file.display()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{name}|https://{fqdn}:{}|{tcp_port}|{}",
            p.https.port(),
            tdir.join("cert.pem").display()
        )
    );

    // tunnelc list: endpoints, state and certificate expiry.
    let (ok, out, err) = tunnelc(&["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{name} ({fqdn}): offline")), "{out}");
    assert!(out.contains("certificate expires 20"), "{out}");
    assert!(
        out.contains("(in 89 days)") || out.contains("(in 90 days)"),
        "{out}"
    );
    let (ok, out, err) = tunnelc(&["list", "--dir", d, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    assert_eq!(v[0]["name"], name.as_str(), "{v}");
    assert_eq!(v[0]["state"], "offline", "{v}");
    assert!(v[0]["certificate_expires_at"].as_u64().is_some(), "{v}");

    // openssl verify accepts the issued certificate...
    let ca = p.ca();
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().expect("utf8"),
        tdir.join("cert.pem").to_str().expect("utf8"),
    ]);
    assert!(ok && text.contains(": OK"), "{text}");
    // ...and the chain a visitor sees through SNI passthrough, served by openssl s_server.
    let server_log = p.dir.join("s_server.log");
    let mut s_server = Proc::spawn_program(
        Path::new("openssl"),
        &[
            "s_server",
            "-accept",
            &format!("127.0.0.1:{https_port}"),
            "-cert",
            tdir.join("cert.pem").to_str().expect("utf8"),
            "-key",
            tdir.join("key.pem").to_str().expect("utf8"),
            "-www",
        ],
        server_log,
    )
    .expect("s_server");
    s_server
        .line_starting("ACCEPT")
        .await
        .expect("s_server listening");
    let mut client = Proc::spawn(
        "tunnelc",
        &["--config", tdir.join("client.yaml").to_str().expect("utf8")],
        p.dir.join("tunnelc.log"),
    )
    .expect("tunnelc");
    client.line_starting("connected").await.expect("connected");
    let target = format!("127.0.0.1:{}", p.https.port());
    let (_, seen) = openssl(&[
        "s_client",
        "-connect",
        &target,
        "-servername",
        &fqdn,
        "-showcerts",
    ]);
    let chain = p.dir.join("seen-chain.pem");
    std::fs::write(&chain, pem_blocks(&seen)).expect("chain");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().expect("utf8"),
        chain.to_str().expect("utf8"),
    ]);
    assert!(ok && text.contains(": OK"), "{text}\n{seen}");
    assert!(
        seen.contains(&format!("CN={fqdn}")) || seen.contains(&format!("CN = {fqdn}")),
        "{seen}"
    );

    // The plain web port: 302 up to https, and the CA.
    let (_, head) = curl(&[
        "-si",
        "-H",
        &format!("Host: {fqdn}"),
        &format!("http://{}/some/path?q=1", p.web),
    ])
    .await
    .expect("curl");
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://{fqdn}:{}/some/path?q=1",
            p.https.port()
        )),
        "{head}"
    );
    let (_, unknown) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: nope.localhost",
        &format!("http://{}/", p.web),
    ])
    .await
    .expect("curl");
    assert_eq!(unknown, "404");
    let (_, cacert) = curl(&[&format!("http://{}/cacert", p.web)])
        .await
        .expect("curl");
    assert_eq!(cacert, std::fs::read_to_string(&ca).expect("ca"));

    // A blocked local port: tunnelc test fails with a clear line and exit status 1.
    drop(client);
    s_server.signal("KILL").expect("stop s_server");
    let _ = s_server.wait().await;
    let _blocker = std::net::TcpListener::bind(("127.0.0.1", tcp_port)).expect("block");
    let (ok, out, _) = tunnelc(&["test", &name, "--dir", d]);
    assert!(!ok, "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL tcp"))
        .unwrap_or_else(|| panic!("no FAIL line: {out}"));
    assert!(
        fail.contains(&format!("local port 127.0.0.1:{tcp_port} is in use")),
        "{fail}"
    );
    assert!(out.lines().any(|l| l.starts_with("PASS https")), "{out}");

    let m = p.metrics().await;
    has(
        &m,
        "tunneld_certificates_issued_total{outcome=\"issued\"} 1",
    );
    has(&m, "tunneld_provisioned_tunnels{state=\"leased\"} 1");
    has(
        &m,
        "tunneld_control_requests_total{code=\"302\",route=\"redirect\"} 1",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_single_use_csr_ownership_and_bad_requests() {
    let p = Plane::start().await.expect("tunneld");
    // max_ports at claim time, over a live session: the refusal names the limit.
    let t = p.token("dave", &["--max-ports", "1"]).expect("token");
    let (a, b) = (free_port(), free_port());
    let cfg = client_cfg(
        &p,
        &t,
        &format!("  one:\n    local: 127.0.0.1:{a}\n  two:\n    local: 127.0.0.1:{b}\n"),
    )
    .expect("cfg");
    let (mut rx, _task, stop) = run_client(cfg);
    let ClientEvent::Connected { tunnels, .. } = next_event(&mut rx).await else {
        panic!("not connected")
    };
    let refused: Vec<_> = tunnels.iter().filter_map(|s| s.error.clone()).collect();
    assert_eq!(refused.len(), 1, "{tunnels:?}");
    assert!(refused[0].contains("max_ports"), "{}", refused[0]);
    stop.cancel();

    // max_ports and max_names in the API.
    let api = p.api(&t).expect("api");
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"protocols": ["tcp"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mine = v["name"].as_str().expect("name").to_string();
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"protocols": ["tcp"]})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("quota exceeded (max_ports)"), "{v}");
    let n = p.token("erin", &["--max-names", "1"]).expect("token");
    let api_n = p.api(&n).expect("api");
    let (s, v) = call(
        &api_n,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "erin-site"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["endpoints"][0]["protocol"], "https");
    let (s, v) = call(&api_n, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("quota exceeded (max_names)"), "{v}");
    // A name held by someone else.
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "erin-site", "protocols": ["http"]})),
    )
    .await;
    assert_eq!(s, 409, "{v}");

    // Single use.
    let once = p.token("frank", &["--single-use"]).expect("token");
    let api_o = p.api(&once).expect("api");
    let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("single-use"), "{v}");
    let out = p.cli(&["token", "list"]).expect("list");
    assert!(out.lines().any(|l| l.starts_with("frank\tused\t")), "{out}");

    // CSRs: only the tunnel's own name is signed.
    let csr = |names: &[&str]| {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    };
    let (s, v) = sign(&api_n, csr(&["erin-site.localhost", "evil.localhost"])).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        error_of(&v).contains("`evil.localhost`, which this token does not own"),
        "{v}"
    );
    let (s, v) = sign(&api_n, csr(&[&format!("{mine}.localhost")])).await;
    assert_eq!(s, 403, "{v}");
    let (s, _) = sign(&api, csr(&["erin-site.localhost"])).await;
    assert_eq!(s, 404, "another client's tunnel is not found");
    let (s, v) = sign(&api_n, "not a csr".into()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = sign(&api_n, csr(&["erin-site.localhost"])).await;
    assert_eq!(s, 201, "{v}");
    let cert = p.dir.join("erin.pem");
    std::fs::write(&cert, v["certificate"].as_str().expect("pem")).expect("write");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        p.ca().to_str().expect("utf8"),
        cert.to_str().expect("utf8"),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        cert.to_str().expect("utf8"),
        "-noout",
        "-text",
    ]);
    assert!(
        ok && text.contains("DNS:erin-site.localhost") && text.contains("ecdsa-with-SHA256"),
        "{text}"
    );
    assert!(!text.contains("DNS:evil"), "{text}");

    // Bad requests and credentials.
    for (body, want) in [
        (json!({"protocols": ["ftp"]}), "protocol `ftp` is unknown"),
        (json!({"protocols": ["http", "https"]}), "choose one"),
        (json!({"name": "Bad_Name!"}), "is invalid"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", Some(body)).await;
        assert_eq!(s, 400, "{v}");
        assert!(error_of(&v).contains(want), "{v}");
    }
    // Over the size cap: 413. A request head that never ends: the connection is closed.
    let (s, v) = api_o
        .call(
            Method::POST,
            "/v1/tunnels",
            "application/json",
            vec![b' '; 70 * 1024],
        )
        .await
        .map(|(s, a)| {
            (
                s.as_u16(),
                serde_json::from_slice::<Value>(&a).unwrap_or(Value::Null),
            )
        })
        .expect("answer");
    assert_eq!(s, 413, "{v}");
    assert!(error_of(&v).contains("larger than 65536 bytes"), "{v}");
    for port in [p.web.port(), p.api.port()] {
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = slow.write_all(b"GET /cacert HTTP/1.1\r\nHost: x\r\n").await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "port {port} kept a stalled head open");
    }
    let anon = ApiClient::new(&p.url(), &ClientTrust::CaFile(p.ca()), None, None).expect("api");
    let (s, _) = call(&anon, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401);
    let wrong = p.api("tk_wrong-token-0123456789").expect("api");
    let (s, v) = call(&wrong, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401, "{v}");
    // Each caller lists only its own tunnels.
    let (s, v) = call(&api_n, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // Renew and delete.
    let (s, v) = call(&api_n, Method::POST, "/v1/tunnels/erin-site/renew", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["certificates"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, _) = call(&api, Method::DELETE, "/v1/tunnels/erin-site", None).await;
    assert_eq!(s, 404, "not the owner");
    let (s, _) = call(&api_n, Method::DELETE, "/v1/tunnels/erin-site", None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&api_n, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 201, "the name quota is free again");
    let m = p.metrics().await;
    has(
        &m,
        "tunneld_certificates_issued_total{outcome=\"refused\"} 3",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_revocation_cut_live_sessions() {
    let p = Plane::start().await.expect("tunneld");
    let port = free_port();
    let tunnels = format!("  t:\n    local: 127.0.0.1:{port}\n");
    // Expiry: the session is cut when the lifespan ends, and reconnecting is refused.
    let t = p.token("gina", &["--lifespan", "3s"]).expect("token");
    let (mut rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    connected_then_cut(&mut rx).await;
    let err = refused(task).await;
    assert!(err.to_string().contains("expired"), "{err}");

    // Revocation from another process cuts the live session too.
    let t = p.token("hank", &[]).expect("token");
    let (mut rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    assert!(matches!(
        next_event(&mut rx).await,
        ClientEvent::Connected { .. }
    ));
    let out = p.cli(&["token", "revoke", "hank"]).expect("revoke");
    assert!(out.contains("revoked hank"), "{out}");
    assert!(matches!(
        next_event(&mut rx).await,
        ClientEvent::Disconnected { .. }
    ));
    let err = refused(task).await;
    assert!(err.to_string().contains("revoked"), "{err}");
    let api = p.api(&t).expect("api");
    let (s, v) = call(&api, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401, "{v}");
    assert!(error_of(&v).contains("revoked"), "{v}");

    // A token limited to other transports.
    let t = p
        .token("ivan", &["--transports", "h2-reverse"])
        .expect("token");
    let (_rx, task, _stop) = run_client(client_cfg(&p, &t, &tunnels).expect("cfg"));
    let err = refused(task).await;
    assert!(
        err.to_string().contains("does not allow transport `edge`"),
        "{err}"
    );
    // Bad CLI input is refused with a message.
    let e = p
        .cli(&["token", "add", "x", "--lifespan", "soon"])
        .expect_err("bad lifespan");
    assert!(e.to_string().contains("--lifespan"), "{e}");
    let e = p.cli(&["token", "add", "alice"]).expect_err("config name");
    assert!(e.to_string().contains("auth.tokens.alice"), "{e}");
    let e = p
        .cli(&["token", "add", "y", "--transports", "nope"])
        .expect_err("transport");
    assert!(e.to_string().contains("`nope`"), "{e}");

    let m = p.metrics().await;
    has(&m, "tunneld_sessions_cut_total{reason=\"expired\"} 1");
    has(&m, "tunneld_sessions_cut_total{reason=\"revoked\"} 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_kill_9_during_writes() {
    let mut p = Plane::start().await.expect("tunneld");
    let t = p.token("jane", &["--max-names", "1000"]).expect("token");
    let api = p.api(&t).expect("api");
    let (s, first) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "keep", "protocols": ["https", "tcp"]})),
    )
    .await;
    assert_eq!(s, 201, "{first}");
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec!["keep.localhost".to_string()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (s, signed) = api
        .call(
            Method::POST,
            "/v1/tunnels/keep/certificate",
            "application/pkcs10",
            csr.into_bytes(),
        )
        .await
        .expect("sign");
    assert_eq!(s.as_u16(), 201);
    let serial = serde_json::from_slice::<Value>(&signed).expect("json")["serial"].clone();
    let ca_before = std::fs::read(p.ca()).expect("ca");

    // Writes in flight: creations from two tasks while tunneld is killed with SIGKILL.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for w in 0..2 {
        let api = p.api(&t).expect("api");
        let ack_tx = ack_tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let body = json!({"name": name, "protocols": ["https"]}).to_string();
                match api
                    .call(
                        Method::POST,
                        "/v1/tunnels",
                        "application/json",
                        body.into_bytes(),
                    )
                    .await
                {
                    Ok((s, _)) if s.as_u16() == 201 => {
                        let _ = ack_tx.send(name);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(ack_tx);
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let name = tokio::time::timeout(WAIT, ack_rx.recv())
            .await
            .expect("creations acknowledged in time")
            .expect("writers running");
        acked.push(name);
    }
    p.proc.signal("KILL").expect("kill -9");
    let _ = p.proc.wait().await;
    for w in writers {
        let _ = tokio::time::timeout(WAIT, w).await;
    }
    while let Ok(name) = ack_rx.try_recv() {
        acked.push(name);
    }

    // The store is readable and complete.
    let out = p.cli(&["state", "check"]).expect("check");
    assert!(out.contains(": ok ("), "{out}");
    let (dir, config) = (p.dir.clone(), p.config.clone());
    drop(p);
    let p = Plane::run(dir, config).await.expect("restart");
    assert_eq!(std::fs::read(p.ca()).expect("ca"), ca_before, "same CA");
    let api = p.api(&t).expect("token still valid");
    let (s, list) = call(&api, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for n in &acked {
        assert!(
            names.contains(&n.as_str()),
            "acknowledged `{n}` lost after kill -9"
        );
    }
    let keep = list
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["name"] == "keep")
        .expect("keep");
    // The same name (the https listener moved: it is on port 0) and the same leased port.
    assert!(
        keep["endpoints"][0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://keep.localhost:")),
        "{keep}"
    );
    assert_eq!(
        keep["endpoints"][1], first["endpoints"][1],
        "same port lease"
    );
    assert_eq!(
        keep["certificates"][0]["serial"], serial,
        "issued certificate kept"
    );
    // The leased port is held for jane: another client cannot take it.
    let leased: u16 = first["endpoints"][1]["url"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let other = p.token("kim", &[]).expect("token");
    let cfg = client_cfg(
        &p,
        &other,
        &format!("  t:\n    local: 127.0.0.1:1\n    remote_port: {leased}\n"),
    )
    .expect("cfg");
    // Every tunnel it asked for is refused: tunnelc says why in one line and stops.
    let (_rx, task, _stop) = run_client(cfg);
    let err = refused(task).await.to_string();
    assert!(
        err.contains("tunneld refused every tunnel") && err.contains("held by another client"),
        "{err}"
    );
    // Backups are consistent copies.
    let backup = p.dir.join("backup.db");
    let out = p
        .cli(&["state", "backup", backup.to_str().expect("utf8")])
        .expect("backup");
    assert!(out.contains("wrote"), "{out}");
    assert!(std::fs::metadata(&backup).expect("backup").len() > 0);
}
