//! A cluster on loopback for tests: a real `redis-server` on a Unix socket, a cluster CA made
//! with `openssl`, and tunneld nodes as real processes (so one can be killed with -9), each
//! with its ports frontend on its own loopback address (127.0.0.N) and the same port range.

use crate::process::{field, Proc};
use crate::{temp_dir, ALICE_TOKEN, BOB_TOKEN, WAIT};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `redis-server` on a Unix socket in `dir`, without persistence.
pub struct Redis {
    pub proc: Proc,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Redis {
    pub async fn start(dir: &Path) -> Result<Self> {
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let sock = socket.to_str().context("utf8 path")?;
        let mut proc = Proc::spawn_program(
            Path::new("redis-server"),
            &[
                "--port",
                "0",
                "--unixsocket",
                sock,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                "",
            ],
            dir.join("redis.err"),
        )?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, proc.next_line())
                .await
                .context("redis-server did not get ready")??;
            if line
                .to_ascii_lowercase()
                .contains("ready to accept connections")
            {
                break;
            }
        }
        Ok(Self {
            proc,
            socket,
            dir: dir.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Kills it (-9) and starts a new, empty one on the same socket.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.signal("KILL")?;
        self.proc.wait().await?;
        *self = Self::start(&self.dir.clone()).await?;
        Ok(())
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The cluster CA (`DIR/ca/ca.pem`, `ca.key`) and a server certificate for `localhost` and
/// `*.localhost` signed by it (`DIR/server.pem`, `server.key`), which every node serves, as
/// docs/operations.md#cluster shows.
pub fn make_pki(dir: &Path) -> Result<()> {
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca)?;
    openssl(
        &ca,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=tunneld cluster CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca/ca.pem",
            "-CAkey",
            "ca/ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "30",
            "-extfile",
            "server.ext",
        ],
    )?;
    Ok(())
}

/// One tunneld node (a process).
pub struct Node {
    pub proc: Proc,
    pub name: String,
    /// Its ports frontend's address (127.0.0.N).
    pub ip: std::net::IpAddr,
    pub yamux: SocketAddr,
    pub h2: SocketAddr,
    /// The `connect` transport (hidden servers park here).
    pub hidden: SocketAddr,
    pub web: SocketAddr,
    /// The `rendezvous` frontend.
    pub rdv: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub link: SocketAddr,
    /// The provisioning API (`control:`).
    pub control: SocketAddr,
}

/// The YAML of node `n` (1-based).
pub fn node_yaml(dir: &Path, n: u8, redis: &str, range: (u16, u16)) -> String {
    format!(
        r#"state_dir: {dir}/n{n}
log: {{ level: info }}
tls: {{ cert: {dir}/server.pem, key: {dir}/server.key }}
auth:
  tokens:
    alice: {{ token: {ALICE_TOKEN}, max_ports: 2 }}
    bob: {{ token: {BOB_TOKEN} }}
limits: {{ handshake_timeout: 2s, keepalive: 1s, drain_timeout: 10s }}
admin: {{ listen: 127.0.0.1:0 }}
transports:
  edge: {{ type: yamux, listen: 127.0.0.1:0 }}
  h2: {{ type: h2-reverse, listen: 127.0.0.1:0 }}
  hidden: {{ type: connect, listen: 127.0.0.1:0 }}
frontends:
  tcp: {{ type: ports, bind: 127.0.0.{n}, range: {a}-{b} }}
  web: {{ type: https-subdomain, listen: 127.0.0.1:0, domain: localhost, transport: h2 }}
  rdv: {{ type: rendezvous, listen: 127.0.0.1:0, visitor_wait: 2s, connect_access: {{ auth: basic, users: {{ visitor: visitor-password-0123 }} }} }}
control: {{ listen: 127.0.0.1:0, names_frontend: web, ports_frontend: tcp, transport: edge }}
cluster:
  node: n{n}
  redis: "{redis}"
  lease_ttl: 2s
  sync_interval: 250ms
  link: 127.0.0.1:0
  ca: {dir}/ca
"#,
        dir = dir.display(),
        a = range.0,
        b = range.1,
    )
}

impl Node {
    pub async fn start(dir: &Path, n: u8, redis: &str, range: (u16, u16)) -> Result<Self> {
        let file = dir.join(format!("n{n}.yaml"));
        std::fs::write(&file, node_yaml(dir, n, redis, range))?;
        let mut proc = Proc::spawn(
            "tunneld",
            &["--config", file.to_str().context("utf8")?],
            dir.join(format!("n{n}.err")),
        )?;
        let (mut yamux, mut h2, mut web, mut admin, mut link) = (None, None, None, None, None);
        let (mut hidden, mut rdv, mut control) = (None, None, None);
        loop {
            let line = proc.next_line().await?;
            let addr = || -> Result<SocketAddr> {
                field(&line, "addr")
                    .ok_or_else(|| anyhow!("no addr in {line}"))?
                    .parse()
                    .context("addr")
            };
            match line.split_whitespace().nth(1) {
                Some("transport=edge") => yamux = Some(addr()?),
                Some("transport=h2") => h2 = Some(addr()?),
                Some("frontend=web") => web = Some(addr()?),
                Some("transport=hidden") => hidden = Some(addr()?),
                Some("frontend=rdv") => rdv = Some(addr()?),
                Some("admin") => admin = Some(addr()?),
                Some("cluster") => link = Some(addr()?),
                Some("control") => control = Some(addr()?),
                _ => {}
            }
            if line == "ready" {
                break;
            }
        }
        let missing = || anyhow!("node n{n} did not print every listener");
        Ok(Self {
            proc,
            name: format!("n{n}"),
            ip: std::net::IpAddr::from([127, 0, 0, n]),
            yamux: yamux.ok_or_else(missing)?,
            h2: h2.ok_or_else(missing)?,
            hidden: hidden.ok_or_else(missing)?,
            web: web.ok_or_else(missing)?,
            rdv: rdv.ok_or_else(missing)?,
            config: file,
            admin: admin.ok_or_else(missing)?,
            link: link.ok_or_else(missing)?,
            control: control.ok_or_else(missing)?,
        })
    }

    /// `tunneld --config <this node's file> ARGS`: its stdout; an error on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        crate::process::tunneld_cli(&self.config, args)
    }

    /// `GET /cluster` as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value> {
        let url = format!("http://{}/cluster", self.admin);
        let (_, body) = crate::process::curl(&[&url]).await?;
        serde_json::from_str(&body).with_context(|| format!("GET /cluster: {body}"))
    }

    /// Polls `GET /cluster` until `ok` holds for it (bounded by [`WAIT`]).
    pub async fn cluster_until(
        &self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.cluster().await?;
            if ok(&v) {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {}: {what} never held; last /cluster: {v}", self.name);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// A fresh directory with the cluster's PKI in it.
pub fn cluster_dir() -> Result<PathBuf> {
    let dir = temp_dir("cluster");
    make_pki(&dir)?;
    Ok(dir)
}
