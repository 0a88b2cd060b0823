//! Helpers the rendezvous tests share: tunneld with a `connect` transport and a
//! `rendezvous` frontend, parked hidden servers (in-process tunnelc, the raw wire, Node's
//! original), visitors, and reference TOTP codes.

pub(crate) use anyhow::{anyhow, Context, Result};
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::Path;
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tunneld_client::client::ClientEvent;
pub(crate) use tunneld_core::totp;
pub(crate) use tunneld_integration_tests::process::{self, curl, Proc};
pub(crate) use tunneld_integration_tests::{
    services, sha256_hex, temp_dir, TestClient, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT,
};

pub(crate) const VISITOR_PASSWORD: &str = "visitor-password-0123";

/// tunneld with a `connect` transport (`hidden`) and a `rendezvous` frontend (`rdv`).
pub(crate) async fn server() -> Result<TestServer> {
    let extra = format!(
        "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    visitor_wait: 2s\n    connect_access: {{ auth: basic, users: {{ visitor: {VISITOR_PASSWORD} }} }}\nrendezvous:\n  max_failures: 3\n  max_parked_per_id: 8\n"
    );
    TestServer::start_full(
        &extra,
        &["transports.hidden={type: connect, listen: \"127.0.0.1:0\"}".into()],
    )
    .await
}

pub(crate) fn hidden(s: &TestServer) -> SocketAddr {
    s.running.transports["hidden"]
}

pub(crate) fn rdv(s: &TestServer) -> SocketAddr {
    s.running.frontends["rdv"]
}

/// `tunneld rendezvous add` with the real binary on the server's config; returns the secret.
pub(crate) async fn add_id(s: &TestServer, id: &str, client: Option<&str>) -> Result<String> {
    let mut args = vec![
        "--config".to_string(),
        s.dir.join("server.yaml").display().to_string(),
        "rendezvous".into(),
        "add".into(),
        id.into(),
    ];
    if let Some(c) = client {
        args.extend(["--client".into(), c.into()]);
    }
    let out = tokio::process::Command::new(process::binary("tunneld")?)
        .args(&args)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "rendezvous add failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("id: {id}\n")), "{text}");
    assert!(text.contains("uri: otpauth://totp/tunneld:"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no secret in {text}"))
}

/// An in-process tunnelc serving `id` over the connect transport; waits until it parked.
pub(crate) async fn park_client(
    s: &TestServer,
    id: &str,
    local: SocketAddr,
    parked: usize,
) -> Result<TestClient> {
    let entry = format!("  {id}: {{ local: \"{local}\", parked: {parked} }}\n");
    let mut c = rendezvous_client(s, &entry)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, c.events.recv())
            .await
            .context("tunnelc did not park in time")?
            .ok_or_else(|| anyhow!("tunnelc stopped"))?;
        match ev {
            ClientEvent::Parked { id: got } if got == id => break,
            ClientEvent::Disconnected { reason, .. } => return Err(anyhow!("tunnelc: {reason}")),
            _ => {}
        }
    }
    wait_parked(s, id, parked).await?;
    Ok(c)
}

/// Polls (bounded) until exactly `n` connections are parked for `id`.
pub(crate) async fn wait_parked(s: &TestServer, id: &str, n: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.running.rendezvous.parked(id) != n {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} parked for {id}, expected {n}",
            s.running.rendezvous.parked(id)
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

pub(crate) fn url(s: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", rdv(s).port())
}

pub(crate) fn resolve(s: &TestServer) -> String {
    format!("localhost:{}:127.0.0.1", rdv(s).port())
}

/// Reads until the peer closes (bounded).
pub(crate) async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await;
    out
}

/// One raw hidden-server exchange: sends `request`, returns everything tunneld answered
/// before closing (or the bytes up to the end of a 200 answer).
pub(crate) async fn raw_park(
    s: &TestServer,
    request: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    raw_park_from(s, [127, 0, 0, 1], request).await
}

/// [`raw_park`] from another loopback source address.
pub(crate) async fn raw_park_from(
    s: &TestServer,
    from: [u8; 4],
    request: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut tls = s.tls_connect_from(from, hidden(s), b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.expect("write");
    tls.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            if got == b"HTTP/1.1 200\r\n\r\n" {
                break;
            }
        }
    })
    .await;
    (got, tls)
}

pub(crate) fn err_answer(code: u16, diagnostic: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code}\r\n\r\n{{\"error\":{{\"permanent\":false,\"diagnostic\":\"{diagnostic}\"}}}}").into_bytes()
}

/// A code from Debian's oathtool (the reference implementation of RFC 6238 here).
pub(crate) async fn oathtool(secret: &str, step: u64) -> Result<String> {
    let out = tokio::process::Command::new("oathtool")
        .args(["--totp", "-b", &format!("--time-step-size={step}s"), secret])
        .output()
        .await
        .context("oathtool is not installed (scripts/test installs it)")?;
    anyhow::ensure!(out.status.success(), "oathtool failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn now_counter(step: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    totp::counter_at(now, step)
}

/// One raw request on a new TLS connection to the rendezvous frontend; the whole answer.
pub(crate) async fn raw_request(s: &TestServer, request: &str) -> String {
    let mut tls = s.tls_connect_to(rdv(s), b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    // One response: the head, then Content-Length bytes.
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Spawns `node/original-hidden-server.js` for `id`, keeping `wanted` connections parked.
pub(crate) fn original_hidden_server(
    s: &TestServer,
    id: &str,
    secret: &str,
    wanted: usize,
) -> Result<Proc> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/original-hidden-server.js");
    let addr = hidden(s);
    let ca = s.ca_file().display().to_string();
    Proc::spawn_program(
        Path::new("node"),
        &[
            script.to_str().unwrap_or_default(),
            &addr.ip().to_string(),
            &addr.port().to_string(),
            id,
            secret,
            "30",
            &ca,
            &wanted.to_string(),
        ],
        s.dir.join(format!("node-{id}.err")),
    )
}

/// curl to `path` at the rendezvous frontend (resolved to it, trusting its CA), `args`
/// before the URL: its exit status and output.
pub(crate) async fn curl_visit(
    s: &TestServer,
    path: &str,
    args: &[&str],
) -> Result<(std::process::ExitStatus, String)> {
    let (res, ca, u) = (resolve(s), s.ca_file().display().to_string(), url(s, path));
    let mut all = vec!["--resolve", &res, "--cacert", &ca];
    all.extend_from_slice(args);
    all.push(&u);
    curl(&all).await
}

/// [`curl_visit`] on a task of its own, for a visitor that waits on what the test does next.
pub(crate) fn spawn_curl_visit(
    s: &TestServer,
    path: &str,
    args: &[&str],
) -> tokio::task::JoinHandle<Result<(std::process::ExitStatus, String)>> {
    let (res, ca, u) = (resolve(s), s.ca_file().display().to_string(), url(s, path));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let mut all = vec!["--resolve", &res, "--cacert", &ca];
        all.extend(args.iter().map(String::as_str));
        all.push(&u);
        curl(&all).await
    })
}

/// Reads from a parked connection until a whole request head came (bounded by `WAIT`).
pub(crate) async fn read_head<R: tokio::io::AsyncRead + Unpin>(parked: &mut R) -> Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, parked.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "parked connection closed");
        head.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&head).to_string())
}

/// A Digest visitor for `id` with curl; returns the body.
pub(crate) async fn digest_visit(s: &TestServer, id: &str, path: &str) -> Result<String> {
    let user = format!("{id}:pw");
    let (st, out) = curl_visit(s, path, &["--digest", "-u", &user]).await?;
    anyhow::ensure!(st.success(), "curl {path}: {st} {out}");
    Ok(out)
}

/// A Basic visitor (`user:password`) with curl; returns the whole answer, head included,
/// whatever its status.
pub(crate) async fn basic_visit(s: &TestServer, user: &str, path: &str) -> Result<String> {
    let (_, out) = curl_visit(s, path, &["-i", "-u", user]).await?;
    Ok(out)
}

/// `tunneld rendezvous <args>` with the real binary on the server's config; stdout.
pub(crate) async fn rendezvous_cli(s: &TestServer, args: &[&str]) -> Result<String> {
    let conf = s.dir.join("server.yaml").display().to_string();
    let mut all = vec!["--config", &conf, "rendezvous"];
    all.extend_from_slice(args);
    let out = tokio::process::Command::new(process::binary("tunneld")?)
        .args(&all)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "rendezvous {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An in-process tunnelc for the connect transport with `rendezvous` (YAML map entries).
pub(crate) fn rendezvous_client(s: &TestServer, entries: &str) -> Result<TestClient> {
    let yaml = format!(
        "server: {}\nserver_name: localhost\ntransport: connect\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\nrendezvous:\n{entries}",
        hidden(s),
        s.ca_file().display()
    );
    let file = temp_dir("client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    let cfg = tunneld_client::config::client::ClientConfig::load(Some(&file), &[])
        .map_err(|e| anyhow!("{e}"))?;
    Ok(TestClient::spawn(cfg))
}
