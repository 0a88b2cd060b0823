//! Shared pieces of the isolation tests (`isolation/`, `isolation_caps/`): a tunneld with
//! every transport alice may use, her tunnelc over one of them, the visitors that attack one
//! of her tunnels (TLS to `<name>.localhost`, HTTP/1.1 status lines, echo round trips), and
//! the checks that her session came through (same session, no reconnect) with the problems
//! collected into one verdict.

use crate::neighbour::{read_some, Report};
use crate::{temp_dir, TestClient, TestServer, ALICE_TOKEN, WEB_FRONTEND};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tunneld_client::client::ClientEvent;
use tunneld_client::config::client::ClientConfig;
use tunneld_core::proto::TunnelStatus;

/// How long each attack runs.
pub const ATTACK: Duration = Duration::from_secs(10);
/// Body size of a neighbour http tunnel ([`crate::services::http_body`]) whose whole body a
/// probe reads during an attack.
pub const NB_BODY: usize = 256 << 10;
/// The websocket transport's TPoT key.
pub const WS_KEY: &str = "an-example-tpot-key-of-40-characters-xyz";

/// A `tunnels:` entry: a tcp (ports) tunnel `name` to `local`.
pub fn tcp_tunnel(name: &str, local: SocketAddr) -> String {
    format!("  {name}:\n    local: \"{local}\"\n")
}

/// A `tunnels:` entry: an http tunnel `name` to `local`, on the subdomain `name`.
pub fn http_tunnel(name: &str, local: SocketAddr) -> String {
    format!("  {name}:\n    type: http\n    local: \"{local}\"\n    subdomain: \"{name}\"\n")
}

/// Which transport alice's tunnelc uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    H2Reverse,
    Yamux,
    Websocket,
}

impl Via {
    /// The `transport` label of tunneld's session metrics.
    pub fn label(self) -> &'static str {
        match self {
            Via::H2Reverse => "h2",
            Via::Yamux => "edge",
            Via::Websocket => "ws",
        }
    }
}

/// The `--set` overrides of the transports next to the yamux `edge` one: `h2` (h2-reverse,
/// shared with `web`) and, with `websocket` (its listen address), a websocket transport `ws`
/// on its own port serving `web`'s names.
pub fn transport_sets(websocket: Option<&str>) -> Vec<String> {
    let mut sets = vec![
        "transports.h2.type=h2-reverse".to_string(),
        "transports.h2.listen=127.0.0.1:0".to_string(),
    ];
    if let Some(listen) = websocket {
        sets.extend([
            "transports.ws.type=websocket".to_string(),
            format!("transports.ws.listen={listen}"),
            "transports.ws.domain=localhost".to_string(),
            "transports.ws.frontend=web".to_string(),
            format!("transports.ws.auth_key={WS_KEY}"),
        ]);
    }
    sets
}

/// A tunneld with the `web` frontend, the yamux `edge` transport, the `h2` transport and,
/// with `websocket`, the `ws` transport (see [`transport_sets`]); `sets` are more `--set`
/// overrides.
pub async fn server(websocket: bool, sets: &[&str]) -> Result<TestServer> {
    let mut all = transport_sets(websocket.then_some("127.0.0.1:0"));
    all.extend(sets.iter().map(|s| s.to_string()));
    TestServer::start_full(WEB_FRONTEND, &all).await
}

/// The port of the `ws` transport.
pub fn ws_port(s: &TestServer) -> u16 {
    s.running.transports["ws"].port()
}

/// alice's tunnelc config over `via`; `tunnels` is the YAML of the `tunnels:` map.
pub fn client_config(s: &TestServer, via: Via, tunnels: &str) -> Result<ClientConfig> {
    client_config_with(s, via, tunnels, &[])
}

/// [`client_config`] with `--set` overrides.
pub fn client_config_with(
    s: &TestServer,
    via: Via,
    tunnels: &str,
    sets: &[String],
) -> Result<ClientConfig> {
    match via {
        Via::H2Reverse => s.h2_client_config_with(ALICE_TOKEN, tunnels, sets),
        Via::Yamux => s.client_config_with(ALICE_TOKEN, tunnels, sets),
        Via::Websocket => {
            let yaml = format!(
                "server: http://localhost:{}\ntransport: websocket\ntoken: {ALICE_TOKEN}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n{tunnels}",
                ws_port(s)
            );
            let file = temp_dir("client").join("client.yaml");
            std::fs::write(&file, yaml)?;
            ClientConfig::load(Some(&file), sets).map_err(|e| anyhow!("{e}"))
        }
    }
}

/// `tunnels:` entries: one http tunnel (see [`http_tunnel`]) per name and service.
pub fn http_tunnels(tunnels: &[(&str, SocketAddr)]) -> String {
    tunnels.iter().map(|(n, a)| http_tunnel(n, *a)).collect()
}

/// alice's tunnelc over `via` with `tunnels` (the YAML of the `tunnels:` map), once it
/// connected: the client and its tunnels as tunneld granted them.
pub async fn alice(
    s: &TestServer,
    via: Via,
    tunnels: &str,
) -> Result<(TestClient, Vec<TunnelStatus>)> {
    let mut alice = TestClient::spawn(client_config(s, via, tunnels)?);
    let got = alice.connected().await?;
    Ok((alice, got))
}

/// A TLS connector with one ALPN id that trusts the CA in `ca` (tunneld's).
pub fn tls_connector(ca: PathBuf, alpn: &[u8]) -> Result<TlsConnector> {
    let cfg = tunneld_core::tls::client_config(
        &tunneld_core::tls::ClientTrust::CaFile(ca),
        None,
        &[alpn],
    )?;
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// TLS with SNI `sni` over `tcp` (a connection to the `web` listener).
pub async fn tls_over(
    connector: &TlsConnector,
    sni: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    connector
        .connect(sni.to_string().try_into()?, tcp)
        .await
        .context("tls")
}

/// TLS with SNI `sni` and one ALPN id over `tcp` (a connection to the `web` listener),
/// trusting tunneld's CA.
pub async fn tls_to(
    s: &TestServer,
    sni: &str,
    alpn: &[u8],
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    tls_over(&tls_connector(s.ca_file(), alpn)?, sni, tcp).await
}

/// Reads an HTTP/1.1 answer up to the end of its status line (at most 64 KiB): the line.
pub async fn read_status_line<S: AsyncRead + Unpin>(r: &mut S) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..i]).into_owned());
        }
        ensure!(buf.len() < 64 << 10, "no status line in 64 KiB");
        let n = read_some(r, &mut chunk).await.context("read status")?;
        ensure!(
            n > 0,
            "closed without an answer ({:?})",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of a status line.
pub fn status_code(line: &str) -> Result<u16> {
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))
}

/// The status line of the answer to `request` on `io`, within `wait`. The request is written
/// by its own task while the answer is read, so a server that answers before it read the
/// whole request is seen.
pub async fn status_line<S>(io: S, request: Vec<u8>, wait: Duration) -> Result<String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut r, mut w) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        let _ = w.flush().await;
        w
    });
    let line = tokio::time::timeout(wait, read_status_line(&mut r))
        .await
        .map_err(|_| anyhow!("no answer within {wait:?}"))?;
    writer.abort();
    line
}

/// Writes 16 bytes of [`crate::pattern`] (`seed`) and reads the same 16 bytes back.
pub async fn echo_on<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, seed: u64) -> Result<()> {
    let data = crate::pattern(16, seed);
    s.write_all(&data).await.context("write")?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await.context("read echo")?;
    ensure!(back[..] == data[..], "echo differs");
    Ok(())
}

/// alice's session id from the admin API's `GET /clients`.
pub async fn alice_session(s: &TestServer) -> Result<Option<u64>> {
    let (code, body) = s.admin_call("GET", "/clients", None).await;
    ensure!(code == 200, "GET /clients: {code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).context("GET /clients json")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["client_id"] == "alice")
        .and_then(|c| c["session"].as_u64()))
}

/// `tunneld_sessions_total` of one transport, taken before an attack.
pub struct SessionCount {
    label: &'static str,
    before: f64,
}

impl SessionCount {
    pub async fn take(s: &TestServer, via: Via) -> SessionCount {
        let label = via.label();
        let before = s
            .metrics()
            .await
            .get("tunneld_sessions_total", &[("transport", label)]);
        SessionCount { label, before }
    }

    /// A problem if the count changed since it was taken.
    pub async fn changed(&self, s: &TestServer) -> Option<String> {
        let now = s
            .metrics()
            .await
            .get("tunneld_sessions_total", &[("transport", self.label)]);
        (now != self.before).then(|| {
            format!(
                "tunneld_sessions_total{{transport={}}} went from {} to {now}",
                self.label, self.before
            )
        })
    }
}

/// alice's session as tunneld sees it before an attack.
pub struct SessionMark {
    id: u64,
    count: SessionCount,
}

impl SessionMark {
    pub async fn take(s: &TestServer, via: Via) -> Result<SessionMark> {
        let id = alice_session(s)
            .await?
            .ok_or_else(|| anyhow!("alice has no session"))?;
        let count = SessionCount::take(s, via).await;
        Ok(SessionMark { id, count })
    }

    /// Problems if alice's session was replaced or tunnelc saw a disconnect since the mark.
    pub async fn problems(&self, s: &TestServer, alice: &mut TestClient) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let now = alice_session(s).await?;
        if now != Some(self.id) {
            problems.push(format!(
                "alice's session changed: {} before the attack, {now:?} after (GET /clients)",
                self.id
            ));
        }
        problems.extend(self.count.changed(s).await);
        let seen = drain_events(alice, 6, is_reconnect);
        if !seen.is_empty() {
            problems.push(format!("tunnelc reconnected during the attack: {seen:?}"));
        }
        Ok(problems)
    }
}

/// A `Connected` or `Disconnected` event.
pub fn is_reconnect(ev: &ClientEvent) -> bool {
    matches!(
        ev,
        ClientEvent::Disconnected { .. } | ClientEvent::Connected { .. }
    )
}

/// Takes every event tunnelc sent so far; answers the first `keep` of those that `pick`s.
pub fn drain_events(
    alice: &mut TestClient,
    keep: usize,
    pick: impl Fn(&ClientEvent) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(ev) = alice.events.try_recv() {
        if pick(&ev) && seen.len() < keep {
            seen.push(format!("{ev:?}"));
        }
    }
    seen
}

/// tunnelc did not lose its session since it connected (or since the last check).
pub fn assert_no_reconnect(alice: &mut TestClient) -> Result<()> {
    let seen = drain_events(alice, usize::MAX, is_reconnect);
    ensure!(seen.is_empty(), "tunnelc reconnected: {seen:?}");
    Ok(())
}

/// Adds the error of a check, if any, to `problems`.
pub fn note(problems: &mut Vec<String>, check: Result<()>) {
    if let Err(e) = check {
        problems.push(format!("{e:#}"));
    }
}

/// [`Report::assert_healthy`] into `problems`.
pub fn healthy(report: &Report, what: &str, problems: &mut Vec<String>) {
    note(problems, report.assert_healthy(what));
}

/// Each problem prefixed with the transport.
pub fn tagged(via: Via, problems: Vec<String>) -> Vec<String> {
    problems
        .into_iter()
        .map(|p| format!("[{via:?}] {p}"))
        .collect()
}

/// Fails with every problem, one a line, if there are any.
pub fn verdict(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}
