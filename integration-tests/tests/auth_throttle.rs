//! Failed authentication is budgeted per source address, across every component that checks
//! credentials: wrong tokens on a transport, the admin API, the provisioning API and TPoT-1
//! keys all draw on one budget (`limits.max_auth_failures` per `limits.auth_failure_window`).
//! Past it the address gets `429` (or, on a transport, no TLS handshake at all), while other
//! addresses and correct credentials from them are untouched. Refusals are logged on a
//! budget with a summary line.

use anyhow::{bail, ensure, Context, Result};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tunneld_core::proto::{encode_frame, read_frame, Hello, ServerHello, MAGIC, VERSION};
use tunneld_integration_tests::attack::{self, http_tunnel, Via};
use tunneld_integration_tests::process::{field, Proc};
use tunneld_integration_tests::{
    port_block, server_yaml, services, temp_dir, TestServer, ALICE_TOKEN, WAIT,
};

const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

async fn tcp_from(src: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((src, 0)))?;
    s.connect(to).await
}

fn hello(token: &str) -> Hello {
    Hello {
        version: VERSION,
        token: Some(token.to_string()),
        tunnels: Vec::new(),
        accept_server_mappings: false,
        agent: "test".into(),
        max_streams: None,
        instance: None,
    }
}

/// What a hello with `token` from `src` to the yamux transport got: the answer, or why
/// there was none.
async fn hello_from(
    s: &TestServer,
    src: [u8; 4],
    token: &str,
) -> Result<Result<ServerHello, String>> {
    let tcp = tcp_from(src, s.transport()).await?;
    let connector = attack::tls_connector(s.ca_file(), tunneld_transport_yamux::ALPN)?;
    let mut tls = match attack::tls_over(&connector, "localhost", tcp).await {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("no TLS: {e:#}"))),
    };
    let mut pre = MAGIC.to_vec();
    pre.extend(encode_frame(&hello(token))?);
    tls.write_all(&pre).await?;
    match tokio::time::timeout(WAIT, read_frame::<ServerHello, _>(&mut tls)).await {
        Ok(Ok(answer)) => Ok(Ok(answer)),
        Ok(Err(e)) => Ok(Err(format!("no answer: {e}"))),
        Err(_) => bail!("no answer in time"),
    }
}

/// `GET /clients` on the admin API from `src` with `token`: the status.
async fn admin_status(s: &TestServer, src: [u8; 4], token: &str) -> Result<(u16, String)> {
    let tcp = tcp_from(src, s.admin()).await?;
    let req = format!(
        "GET /clients HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let line = attack::status_line(tcp, req.into_bytes(), WAIT).await?;
    Ok((attack::status_code(&line)?, line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_share_one_budget_per_address() -> Result<()> {
    let s = attack::server(
        true,
        &[
            "limits.max_auth_failures=4",
            "limits.auth_failure_window=60s",
            &format!("admin.token={ADMIN_TOKEN}"),
        ],
    )
    .await?;
    // Two wrong tokens on the transport, two on the admin API: the budget of 4 is spent.
    for _ in 0..2 {
        match hello_from(&s, ATTACKER, "wrong-token-000000000000").await? {
            Ok(ServerHello::Rejected { reason, .. }) => {
                ensure!(reason.contains("invalid token"), "{reason}")
            }
            other => bail!("a wrong token got {other:?}"),
        }
    }
    // The unknown tokens were looked up in the state cache, not queried one by one.
    let m = s.metrics().await;
    let checks = m.get("tunneld_state_checks_total", &[("outcome", "current")])
        + m.get("tunneld_state_checks_total", &[("outcome", "reloaded")]);
    ensure!(
        m.get("tunneld_state_lookups_total", &[("table", "tokens")]) >= 2.0 && checks >= 1.0,
        "state cache metrics: lookups and checks missing"
    );
    for _ in 0..2 {
        let (code, line) = admin_status(&s, ATTACKER, "wrong-admin-token").await?;
        ensure!(code == 401, "{line}");
    }
    // From now on the address is refused before any credential is looked at: the right
    // admin token too, and the transport does not even finish TLS.
    let (code, line) = admin_status(&s, ATTACKER, ADMIN_TOKEN).await?;
    ensure!(code == 429, "over the budget: {line}");
    match hello_from(&s, ATTACKER, ALICE_TOKEN).await? {
        Err(_) => {}
        Ok(answer) => bail!("a throttled address got a hello answered: {answer:?}"),
    }
    // TPoT-1 on the websocket port: 429 before any PBKDF2.
    let tcp = tcp_from(
        ATTACKER,
        SocketAddr::from(([127, 0, 0, 1], attack::ws_port(&s))),
    )
    .await?;
    let req = "GET /create-tpot HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: TPoT-1 abc\r\n\r\n";
    let line = attack::status_line(tcp, req.as_bytes().to_vec(), WAIT).await?;
    ensure!(
        attack::status_code(&line)? == 429,
        "TPoT-1 while throttled: {line}"
    );

    // Another address is untouched: the admin API and a real tunnelc both get in.
    let (code, line) = admin_status(&s, [127, 0, 0, 1], ADMIN_TOKEN).await?;
    ensure!(code == 200, "{line}");
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc))
        .await
        .context("alice from 127.0.0.1")?;
    let m = s.metrics().await;
    ensure!(
        m.get(
            "tunneld_handshakes_total",
            &[("transport", "edge"), ("outcome", "throttled")]
        ) >= 1.0,
        "throttled handshakes are not counted"
    );
    alice.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_logged_on_a_budget() -> Result<()> {
    let dir = temp_dir("throttle-log");
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), port_block(), ""))?;
    let mut proc = Proc::spawn(
        "tunneld",
        &[
            "--config",
            file.to_str().context("utf8")?,
            // A budget big enough that the flood is answered, not throttled.
            "--set",
            "limits.max_auth_failures=100000",
        ],
        dir.join("tunneld.err"),
    )?;
    let t = proc.line_starting("listening transport=edge").await?;
    let addr = field(&t, "addr").context("addr")?;
    let trust = proc.line_starting("trust ").await?;
    let ca = field(&trust, "ca").context("ca")?;
    proc.line_starting("ready").await?;
    let connector = attack::tls_connector(ca.into(), tunneld_transport_yamux::ALPN)?;
    let attempts = 200;
    for _ in 0..attempts {
        let tcp = TcpStream::connect(&addr).await?;
        let mut tls = attack::tls_over(&connector, "localhost", tcp).await?;
        let mut pre = MAGIC.to_vec();
        pre.extend(encode_frame(&hello("wrong-token-000000000000"))?);
        tls.write_all(&pre).await?;
        let answer: ServerHello = read_frame(&mut tls).await?;
        ensure!(matches!(answer, ServerHello::Rejected { .. }), "{answer:?}");
    }
    proc.signal("TERM")?;
    proc.wait().await?;
    let log = proc.stderr();
    let lines = log.matches("client rejected").count();
    ensure!(
        (1..=40).contains(&lines),
        "{lines} refusal lines for {attempts} refusals"
    );
    ensure!(
        log.contains("were not logged one by one"),
        "no summary line:\n{log}"
    );
    Ok(())
}
