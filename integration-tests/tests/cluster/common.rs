//! Helpers the cluster tests share: redis and three tunneld nodes, tunnelc spread over them,
//! visitors retried until the cluster agrees, and the nodes' control API.

pub(crate) use anyhow::{bail, Context, Result};
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::Path;
pub(crate) use std::time::{Duration, Instant};
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tokio::net::TcpStream;
pub(crate) use tunneld_client::config::client::ClientConfig;
pub(crate) use tunneld_integration_tests::cluster::{cluster_dir, Node, Redis};
pub(crate) use tunneld_integration_tests::process::{curl, tool_or_skip};
pub(crate) use tunneld_integration_tests::{
    endpoint_of, pattern, port_block, services, sha256_hex, temp_dir, TestClient, ALICE_TOKEN,
    BOB_TOKEN, WAIT,
};

pub(crate) fn peers(test: &str) -> bool {
    tool_or_skip(
        "redis-server",
        "--version",
        "apt-get install redis-server",
        test,
    ) && tool_or_skip("openssl", "version", "apt-get install openssl", test)
}

pub(crate) async fn cluster(dir: &Path) -> Result<(Redis, Vec<Node>, (u16, u16))> {
    let redis = Redis::start(dir).await?;
    let range = port_block();
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(Node::start(dir, n, &redis.url(), range).await?);
    }
    Ok((redis, nodes, range))
}

/// A tunnelc config: `transport`, its servers in order, `tunnels` YAML.
pub(crate) fn client(
    dir: &Path,
    token: &str,
    transport: &str,
    servers: &[SocketAddr],
    tunnels: &str,
) -> Result<ClientConfig> {
    let list: Vec<String> = servers[1..].iter().map(|s| format!("\"{s}\"")).collect();
    let yaml = format!(
        "server: \"{}\"\nservers: [{}]\nserver_name: localhost\ntransport: {transport}\ntoken: {token}\ntls: {{ ca: {}/ca/ca.pem }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n{tunnels}",
        servers[0],
        list.join(", "),
        dir.display()
    );
    let file = temp_dir("cluster-client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    ClientConfig::load(Some(&file), &[]).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Echoes `msg` through `addr`, retrying until it works (a mirror appears within a sync).
pub(crate) async fn echo_until(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(msg).await?;
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
            anyhow::ensure!(back == msg, "echo differs");
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => bail!("echo through {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// GETs `https://<name>.localhost/path` at a node's web frontend until the answer has `want`.
pub(crate) async fn https_until(node: &Node, name: &str, want: &str) -> Result<String> {
    let host = format!("{name}.localhost");
    let resolve = format!("{host}:{}:127.0.0.1", node.web.port());
    let url = format!("https://{host}:{}/visit", node.web.port());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, out) = curl(&["-k", "--resolve", &resolve, &url]).await?;
        if out.contains(want) {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} at {}: {out}", node.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `len` bytes through an echo tunnel at `addr`, reading them back at once; answers
/// the SHA-256 of what came back.
pub(crate) async fn echo_bulk(addr: SocketAddr, len: usize) -> Result<String> {
    let data = pattern(len, 7);
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(len);
    tokio::time::timeout(WAIT, r.read_to_end(&mut back))
        .await
        .context("bulk echo timed out")??;
    writer.await??;
    Ok(sha256_hex(&back))
}

/// One echo round trip on an open visitor connection.
pub(crate) async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
    anyhow::ensure!(back == msg, "echo differs");
    Ok(())
}

/// Fresh visitors at `addr`, one after another, until `stop`: the errors of those that
/// failed, and how many got their echo.
pub(crate) async fn visit_until(
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<String>, usize) {
    let (mut failed, mut ok) = (Vec::new(), 0);
    while !stop.is_cancelled() {
        let r = async {
            let mut s = TcpStream::connect(addr).await?;
            roundtrip(&mut s, b"probe").await
        }
        .await;
        match r {
            Ok(()) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (failed, ok)
}

/// Waits until a TCP connection to `addr` is refused (a route that went).
pub(crate) async fn refused_until(addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let served = async {
            let mut s = TcpStream::connect(addr).await?;
            roundtrip(&mut s, b"still there?").await
        }
        .await;
        if served.is_err() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{addr} is still served");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST|DELETE /v1/...` on a node's provisioning API as `token`: the body.
pub(crate) async fn control_call(
    node: &Node,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String> {
    let port = node.control.port();
    let (_, out) = curl(&[
        "-sk",
        "-X",
        method,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &format!("https://localhost:{port}{path}"),
    ])
    .await?;
    Ok(out)
}

/// `PUT /tunnels` (the admin mappings) at a node: (status, body).
pub(crate) async fn put_mappings(node: &Node, body: &str) -> Result<(u16, String)> {
    let url = format!("http://{}/tunnels", node.admin);
    let (_, out) = curl(&[
        "-s",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        "-w",
        "\n%{http_code}",
        &url,
    ])
    .await?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// Whether `s` is closed by its peer within `within` (EOF or reset, without sending it
/// anything more).
pub(crate) async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
