//! What the reload tests share: the server and client files, a tunneld and tunnelc run from
//! them, the admin API, and visitors that keep a tunnel busy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::{curl, field, Proc};
use tunneld_integration_tests::{port_block, temp_dir, WAIT};

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const CAROL_TOKEN: &str = "carol-token-0123456789abcdef";

/// The server file: `tokens` (client, token) pairs, `transports` extra YAML lines under
/// `transports:` after `edge`.
pub fn server_file(
    dir: &Path,
    range: (u16, u16),
    tokens: &[(&str, &str)],
    transports: &str,
) -> String {
    let mut t = String::new();
    for (id, token) in tokens {
        t.push_str(&format!("    {id}: {{ token: {token} }}\n"));
    }
    format!(
        "state_dir: {state}\nlog: {{ level: info }}\nauth:\n  tokens:\n{t}limits: {{ handshake_timeout: 2s, keepalive: 1s, drain_timeout: 5s }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\ntransports:\n  edge: {{ type: yamux, listen: 127.0.0.1:0 }}\n{transports}frontends:\n  tcp: {{ type: ports, bind: 127.0.0.1, range: {a}-{b}, reclaim_grace: 30s }}\n",
        state = dir.join("state").display(),
        a = range.0,
        b = range.1,
    )
}

pub struct Daemon {
    pub proc: Proc,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub range: (u16, u16),
    pub edge: String,
    pub admin: String,
    pub ca: String,
}

pub async fn daemon(tokens: &[(&str, &str)]) -> Daemon {
    let dir = temp_dir("reload");
    let range = port_block();
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_file(&dir, range, tokens, "")).expect("write config");
    let mut proc = Proc::spawn(
        "tunneld",
        &["--config", file.to_str().expect("utf8")],
        dir.join("tunneld.err"),
    )
    .expect("spawn tunneld");
    let edge = field(
        &proc
            .line_starting("listening transport=edge")
            .await
            .expect("edge"),
        "addr",
    )
    .expect("addr");
    let admin = field(
        &proc.line_starting("listening admin").await.expect("admin"),
        "addr",
    )
    .expect("addr");
    let ca = field(&proc.line_starting("trust ").await.expect("trust"), "ca").expect("ca");
    proc.line_starting("ready").await.expect("ready");
    Daemon {
        proc,
        file,
        dir,
        range,
        edge,
        admin,
        ca,
    }
}

/// A tunnelc config file with tcp tunnels `(name, local, port)`.
pub fn client_file(
    d: &Daemon,
    tag: &str,
    server: &str,
    token: &str,
    tunnels: &[(&str, SocketAddr, u16)],
) -> PathBuf {
    let mut t = String::new();
    for (name, local, port) in tunnels {
        t.push_str(&format!(
            "  {name}:\n    local: {local}\n    remote_port: {port}\n"
        ));
    }
    let f = d.dir.join(format!("client-{tag}.yaml"));
    std::fs::write(
        &f,
        format!(
            "server: {server}\nserver_name: localhost\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 1s }}\ntunnels:\n{t}",
            d.ca
        ),
    )
    .expect("write client config");
    f
}

pub fn tunnelc(d: &Daemon, tag: &str, file: &Path) -> Proc {
    Proc::spawn(
        "tunnelc",
        &["--config", file.to_str().expect("utf8")],
        d.dir.join(format!("{tag}.err")),
    )
    .expect("spawn tunnelc")
}

pub fn public(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One round trip through an echo tunnel on a new connection.
pub async fn echo_once(addr: SocketAddr, n: u64) -> std::io::Result<()> {
    let msg = format!("ping {n}");
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    if out != msg.as_bytes() {
        return Err(std::io::Error::other(format!("echo answered {out:?}")));
    }
    Ok(())
}

pub use tunneld_integration_tests::services::echo_message as echo_on;

/// Round trips in a loop until `stop`: (done, failures as text).
pub struct Load {
    pub done: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<Vec<String>>,
}

pub fn load(addr: SocketAddr) -> Load {
    let (done, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (d, s) = (done.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            match tokio::time::timeout(WAIT, echo_once(addr, n)).await {
                Ok(Ok(())) => {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => failures.push(format!("round trip {n}: {e}")),
                Err(_) => failures.push(format!("round trip {n}: timed out")),
            }
        }
        failures
    });
    Load { done, stop, task }
}

impl Load {
    /// Waits until `more` round trips past the current count are done (bounded).
    pub async fn past(&self, more: u64) {
        let target = self.done.load(Ordering::Relaxed) + more;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.done.load(Ordering::Relaxed) < target {
            assert!(tokio::time::Instant::now() < deadline, "the load stalled");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("load ends")
            .expect("load task");
        (self.done.load(Ordering::Relaxed), failures)
    }
}

pub async fn admin(d: &Daemon, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", d.admin);
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let (_, out) = curl(&["-X", method, "-H", &auth, "-w", "\n%{http_code}", &url])
        .await
        .expect("curl");
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `GET /clients` until `client` is listed (`present`) or not; bounded.
pub async fn until_client(d: &Daemon, client: &str, present: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = admin(d, "GET", "/clients").await;
        assert_eq!(code, 200, "{body}");
        let listed = body.contains(&format!("\"client_id\":\"{client}\""));
        if listed == present {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "client {client} listed={listed} after {WAIT:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
