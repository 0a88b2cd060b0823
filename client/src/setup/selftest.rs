//! `tunnelc test`: runs echo services on each tunnel's local ports, connects the tunnel, and
//! checks every public endpoint from outside, end to end. One PASS/FAIL line per endpoint.

use super::api_client::resolve;
use super::echo::{self, Echo};
use super::files::{TunnelDir, CA, CERT, CONFIG, KEY};
use crate::client::{self, ClientEvent};
use crate::config::client::ClientConfig;
use crate::provision_api::Endpoint;
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::{hex, random_bytes};
use tunneld_core::proto::TunnelStatus;
use tunneld_core::tls::{client_config, ClientTrust};

const CONNECT_WAIT: Duration = Duration::from_secs(20);
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// Tests every tunnel; returns whether all endpoints passed.
pub async fn run(tunnels: &[TunnelDir]) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for t in tunnels {
        all_ok &= test_one(t).await?;
    }
    Ok(all_ok)
}

fn line(ok: bool, e: &Endpoint, local: u16, detail: &str) {
    say!(
        "{} {} {} -> 127.0.0.1:{local}: {detail}",
        if ok { "PASS" } else { "FAIL" },
        e.protocol,
        e.url
    );
}

async fn test_one(t: &TunnelDir) -> anyhow::Result<bool> {
    if t.record.ssh.is_some() {
        let name = &t.record.tunnel.name;
        bail!(
            "tunnel {name} is set up for OpenSSH (no client.yaml): run `ssh -F {} -N {name}` and reach its endpoints from outside",
            t.file(&super::ssh::config_file(name)).display()
        );
    }
    let cfg = ClientConfig::load(Some(&t.file(CONFIG)), &[])
        .map_err(|e| anyhow!("{}: {}", t.file(CONFIG).display(), e.lines.join("; ")))?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    // Local services first: a port that is taken fails its endpoint, clearly.
    let local_err = start_echoes(t, &stop).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(client::run(cfg, tx, stop.clone()));
    let connected = tokio::time::timeout(CONNECT_WAIT, async {
        loop {
            match rx.recv().await {
                Some(ClientEvent::Connected { tunnels, .. }) => return Ok(tunnels),
                Some(ClientEvent::Disconnected { reason, .. }) => {
                    return Err(format!("cannot connect to tunneld: {reason}"))
                }
                Some(_) => {}
                None => return Err("tunnelc stopped".to_string()),
            }
        }
    })
    .await;
    let statuses: Vec<TunnelStatus> = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stop.cancel();
            let detail = match runner.await {
                Ok(Err(err)) => format!("{e}: {err:#}"),
                _ => e,
            };
            fail_all(t, &detail);
            return Ok(false);
        }
        Err(_) => {
            fail_all(
                t,
                &format!("no session with tunneld within {CONNECT_WAIT:?}"),
            );
            return Ok(false);
        }
    };
    let mut ok = true;
    for e in &t.record.tunnel.endpoints {
        ok &= check_endpoint(t, e, &statuses, &local_err).await;
    }
    stop.cancel();
    let _ = runner.await;
    Ok(ok)
}

/// Starts the echo service of each endpoint on its local port; the endpoints whose port is
/// taken, with why.
async fn start_echoes(
    t: &TunnelDir,
    stop: &CancellationToken,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut local_err: BTreeMap<String, String> = BTreeMap::new();
    for e in &t.record.tunnel.endpoints {
        let port = t.record.local.get(&e.protocol).copied().unwrap_or(0);
        let echo = match e.protocol.as_str() {
            "https" => Echo::Https(echo::tls_acceptor(&t.file(CERT), &t.file(KEY))?),
            "http" => Echo::Http,
            _ => Echo::Tcp,
        };
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => echo::spawn(l, echo, stop.clone()),
            Err(err) => {
                local_err.insert(
                e.protocol.clone(),
                format!("local port 127.0.0.1:{port} is in use ({err}): stop what listens there, or set it up with other --ports"),
            );
            }
        }
    }
    Ok(local_err)
}

/// Checks one endpoint through tunneld and prints its PASS or FAIL line.
async fn check_endpoint(
    t: &TunnelDir,
    e: &Endpoint,
    statuses: &[TunnelStatus],
    local_err: &BTreeMap<String, String>,
) -> bool {
    let port = t.record.local.get(&e.protocol).copied().unwrap_or(0);
    if let Some(err) = local_err.get(&e.protocol) {
        line(false, e, port, err);
        return false;
    }
    let status = statuses.iter().find(|s| s.name == e.tunnel);
    let url = match status.map(|s| (&s.endpoint, &s.error)) {
        Some((Some(url), _)) => url.clone(),
        Some((None, Some(err))) => {
            line(
                false,
                e,
                port,
                &format!("tunneld refused the tunnel: {err}"),
            );
            return false;
        }
        _ => {
            line(false, e, port, "tunneld did not report this tunnel");
            return false;
        }
    };
    let result = tokio::time::timeout(CHECK_WAIT, check(t, e, &url)).await;
    match result {
        Ok(Ok(detail)) => {
            line(true, e, port, &detail);
            true
        }
        Ok(Err(err)) => {
            line(false, e, port, &format!("{err:#}"));
            false
        }
        Err(_) => {
            line(false, e, port, &format!("no answer within {CHECK_WAIT:?}"));
            false
        }
    }
}

fn fail_all(t: &TunnelDir, detail: &str) {
    for e in &t.record.tunnel.endpoints {
        let port = t.record.local.get(&e.protocol).copied().unwrap_or(0);
        line(false, e, port, detail);
    }
}

/// `scheme://host:port` split up.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (h, p) = rest
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("endpoint {url} has no port"))?;
    Ok((
        h.to_string(),
        p.parse().with_context(|| format!("endpoint {url}"))?,
    ))
}

async fn check(t: &TunnelDir, e: &Endpoint, url: &str) -> anyhow::Result<String> {
    let (host, port) = host_port(url)?;
    let addr = resolve(&host, port).await?;
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let nonce = hex(&random_bytes::<8>());
    if e.protocol == "tcp" {
        let msg = format!("tunnelc-test {nonce}\n");
        tcp.write_all(msg.as_bytes()).await?;
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back)
            .await
            .context("the echo did not come back")?;
        if back != msg.as_bytes() {
            bail!("the echo came back different");
        }
        return Ok(format!("{} bytes echoed", msg.len()));
    }
    let tls = client_config(&ClientTrust::CaFile(t.file(CA)), None, &[b"http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|err| anyhow!("`{host}`: {err}"))?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .context("TLS handshake failed")?;
    let path = format!("/tunnelc-test/{nonce}");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").to_string();
    if !text.contains(&format!("GET {path}")) {
        bail!("unexpected answer `{status}`");
    }
    Ok(format!("`{status}`, body `GET {path}`"))
}
