//! tunneld in cluster mode: Debian's `redis-server` on a Unix socket, a cluster CA and a
//! server certificate made with `openssl`, two tunneld nodes (ports frontends on 127.0.0.1
//! and 127.0.0.2, one range), tunnelc over yamux+TLS to the first; visitors go to the
//! second node's mirror of the port, so each one crosses the inter-node link
//! (n2 -> n1 -> tunnelc).

use crate::systems::{field, Proc, System, Transport, OPEN_LIMITS, START, TOKEN};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system's name in the table and the JSON.
pub const NAME: &str = "tunneld yamux+tls, 2-node cluster (visitor at n2)";

/// The ports range of both nodes (the same on each, so a mirror has the same number).
const RANGE: &str = "14000-14999";

/// How long the port may take to answer at n2 once tunnelc is up (a mirror appears within
/// a sync interval, 1 s by default).
const MIRROR_WAIT: Duration = Duration::from_secs(15);

/// Why the row cannot run here (`redis-server` or `openssl` missing), or None.
pub fn missing() -> Option<String> {
    for (program, arg, package) in [
        ("redis-server", "--version", "redis-server"),
        ("openssl", "version", "openssl"),
    ] {
        let found = std::process::Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{NAME}: `{program}` is not installed (apt-get install {package}); skipped"
            ));
        }
    }
    None
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
/// `*.localhost` signed by it (`DIR/server.pem`, `server.key`), which both nodes serve (the
/// commands of docs/operations.md#cluster, as the integration tests run them).
fn make_pki(dir: &Path) -> Result<()> {
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca)?;
    #[rustfmt::skip]
    openssl(&ca, &[
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
        "-subj", "/CN=tunneld cluster CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1\n",
    )?;
    #[rustfmt::skip]
    openssl(dir, &[
        "x509", "-req", "-in", "server.csr", "-CA", "ca/ca.pem", "-CAkey", "ca/ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "server.ext",
    ])?;
    Ok(())
}

/// Where Redis listens: `dir/redis.sock`, or a file in the temporary directory when that
/// path is too long for a Unix socket (108 bytes on Linux).
fn socket_path(dir: &Path) -> PathBuf {
    let inside = dir.join("redis.sock");
    if inside.as_os_str().len() < 100 {
        inside
    } else {
        std::env::temp_dir().join(format!("tunneld-bench-{}.sock", std::process::id()))
    }
}

/// `redis-server` on a Unix socket (no TCP port, no persistence), once it answers PING.
async fn start_redis(dir: &Path) -> Result<(Proc, PathBuf)> {
    let socket = socket_path(dir);
    let _ = std::fs::remove_file(&socket);
    let (sock, log, data) = (
        socket.display().to_string(),
        dir.join("redis.log").display().to_string(),
        dir.display().to_string(),
    );
    #[rustfmt::skip]
    let args = [
        "--port", "0", "--unixsocket", &sock, "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", &data, "--logfile", &log,
    ];
    let mut redis = Proc::spawn(
        Path::new("redis-server"),
        &args,
        &dir.join("redis.err"),
        "redis-server",
    )?;
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let ping = async {
            let mut s = tokio::net::UnixStream::connect(&socket).await?;
            s.write_all(b"PING\r\n").await?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b).await?;
            anyhow::ensure!(&b == b"+PONG\r\n", "redis answered {b:?}");
            anyhow::Ok(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), ping).await {
            return Ok((redis, socket));
        }
        if redis.exited() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            bail!("redis-server exited: {}", log.trim());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("redis-server did not answer on {sock} within {START:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node `n` (1 or 2) once ready: the process and its yamux transport's address.
async fn start_node(bins: &Path, dir: &Path, n: u8, redis: &str) -> Result<(Proc, String)> {
    let conf = dir.join(format!("n{n}.yaml"));
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "state_dir: {d}/n{n}\nlog: {{ level: warn }}\ntls: {{ cert: {d}/server.pem, key: {d}/server.key }}\nauth: {{ tokens: {{ bench: {{ token: {TOKEN} }} }} }}\n{OPEN_LIMITS}\ntransports: {{ edge: {{ type: yamux, listen: 127.0.0.1:0, yamux: {{ max_streams: 4096 }} }} }}\nfrontends: {{ tcp: {{ type: ports, bind: 127.0.0.{n}, range: {RANGE} }} }}\ncluster: {{ node: n{n}, redis: \"{redis}\", link: 127.0.0.1:0, ca: {d}/ca }}\n"
        ),
    )?;
    let c = conf.display().to_string();
    let label = format!("tunneld n{n}");
    let mut node = Proc::spawn(
        &bins.join("tunneld"),
        &["--config", &c],
        &dir.join(format!("n{n}.log")),
        &label,
    )?;
    let line = node.line_with("listening transport=edge").await?;
    let edge = field(&line, "addr").ok_or_else(|| anyhow!("{label} printed {line}"))?;
    node.line_with("listening cluster").await?;
    node.line_with("ready").await?;
    Ok((node, edge))
}

/// Redis, nodes n1 and n2, tunnelc (yamux+TLS, the tunnel of the `tunneld yamux+tls` row)
/// connected to n1; the endpoint is n2's mirror of the port, once it serves a connection.
/// The server side's memory is both nodes' (Redis is left out).
pub async fn tunneld_cluster(bins: &Path, service: SocketAddr, dir: &Path) -> Result<System> {
    make_pki(dir)?;
    let (redis, socket) = start_redis(dir).await?;
    let url = format!("redis+unix://{}", socket.display());
    let (n1, edge) = start_node(bins, dir, 1, &url).await?;
    let (n2, _) = start_node(bins, dir, 2, &url).await?;
    let ca = dir.join("ca").join("ca.pem").display().to_string();
    let yaml = format!(
        "{}tunnels:\n  bench:\n    local: {service}\n",
        Transport::Yamux.client_side(&edge, &ca)
    );
    let (client, line) = crate::systems::start_tunnelc(bins, dir, &yaml).await?;
    let at_n1: SocketAddr = line
        .rsplit("tcp://")
        .next()
        .ok_or_else(|| anyhow!("tunnelc printed {line}"))?
        .trim()
        .parse()
        .with_context(|| format!("tunnelc printed {line}"))?;
    let endpoint = crate::endpoint::Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 2], at_n1.port())));
    crate::load::wait_ready(&endpoint, MIRROR_WAIT)
        .await
        .with_context(|| format!("n2's mirror of {at_n1}"))?;
    Ok(System {
        name: NAME.into(),
        endpoint,
        server: Some(n1),
        client: Some(client),
        server_more: vec![n2],
        _helpers: vec![redis],
    })
}
