//! Per-tunnel series (`admin.per_tunnel_metrics`) scraped from the admin port with curl:
//! counted per https host and public port, capped, the least recently used idle tunnel
//! making room, busy overflow under `_other`; off by default.

use anyhow::{anyhow, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::metrics::{self, Samples};
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::services::{echo, http_echo};
use tunneld_integration_tests::{endpoint_of, TestClient, TestServer, ALICE_TOKEN, WAIT};

/// `/metrics` through curl, as Prometheus scrapes it.
async fn scrape(s: &TestServer) -> Result<(Samples, String)> {
    let (st, text) = curl(&[&format!("http://{}/metrics", s.admin())]).await?;
    if !st.success() {
        return Err(anyhow!("curl /metrics failed: {st}"));
    }
    Ok((metrics::parse(&text)?, text))
}

/// Scrapes until `name{labels}` is `want` (counts made as a connection closes land a moment
/// after the peer saw the close), bounded by [`WAIT`].
async fn scrape_until(
    s: &TestServer,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Result<Samples> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (m, text) = scrape(s).await?;
        if m.get(name, labels) == want {
            return Ok(m);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("{name}{labels:?} never became {want}:\n{text}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One echo round trip on a new connection, closed after.
async fn echo_once(port: u16) -> Result<()> {
    let mut held = hold(port).await?;
    held.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, held.read_to_end(&mut rest)).await??;
    Ok(())
}

/// A connection through a tcp tunnel that has answered once and stays open.
async fn hold(port: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"hi").await?;
    let mut buf = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await??;
    if &buf != b"hi" {
        return Err(anyhow!("echo answered {buf:?}"));
    }
    Ok(s)
}

/// One HTTPS request to `app.localhost` through the `web` frontend.
async fn visit_app(s: &TestServer) -> Result<()> {
    let port = s.web().port();
    let ca = s.ca_file().display().to_string();
    let (st, body) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &format!("app.localhost:{port}:127.0.0.1"),
        "--data-binary",
        "0123456789",
        &format!("https://app.localhost:{port}/"),
    ])
    .await?;
    if !st.success() || !body.contains("served") {
        return Err(anyhow!("curl app.localhost: {st} {body}"));
    }
    Ok(())
}

fn tcp_tunnels(local: SocketAddr) -> String {
    (1..=3)
        .map(|i| format!("  t{i}:\n    local: \"{local}\"\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tunnel_series_count_cap_and_evict() -> Result<()> {
    let s = TestServer::start_web_with(
        "",
        &["admin.per_tunnel_metrics=true", "admin.max_tunnel_series=3"],
    )
    .await?;
    let local = echo().await;
    let web_local = http_echo("served").await;
    let tunnels = format!(
        "{}  app:\n    type: http\n    local: \"{web_local}\"\n    subdomain: app\n",
        tcp_tunnels(local)
    );
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &tunnels)?);
    let up = alice.connected().await?;
    let mut ports = Vec::new();
    for n in ["t1", "t2", "t3"] {
        ports.push(endpoint_of(&up, n)?.port());
    }
    let label = |p: u16| p.to_string();
    let (p1, p2, p3) = (label(ports[0]), label(ports[1]), label(ports[2]));

    // Counted per https host and per public port, both directions.
    visit_app(&s).await?;
    let web_app = [("frontend", "web"), ("tunnel", "app.localhost")];
    let m = scrape_until(&s, "tunneld_tunnel_streams_active", &web_app, 0.0).await?;
    assert_eq!(m.get("tunneld_tunnel_streams_total", &web_app), 1.0);
    let bytes = |m: &Samples, f: &str, t: &str, d: &str| {
        m.get(
            "tunneld_tunnel_bytes_total",
            &[("frontend", f), ("tunnel", t), ("direction", d)],
        )
    };
    assert_eq!(bytes(&m, "web", "app.localhost", "in"), 10.0);
    assert!(bytes(&m, "web", "app.localhost", "out") > 0.0);

    echo_once(ports[0]).await?;
    let tcp1 = [("frontend", "tcp"), ("tunnel", p1.as_str())];
    let m = scrape_until(&s, "tunneld_tunnel_bytes_total", &[("tunnel", &p1)], 4.0).await?;
    assert_eq!(m.get("tunneld_tunnel_streams_total", &tcp1), 1.0);
    assert_eq!(bytes(&m, "tcp", &p1, "in"), 2.0);
    assert_eq!(bytes(&m, "tcp", &p1, "out"), 2.0);

    // A held stream keeps its tunnel busy; the set is now full (app, p1, p2).
    let held2 = hold(ports[1]).await?;
    let tcp2 = [("frontend", "tcp"), ("tunnel", p2.as_str())];
    let m = scrape_until(&s, "tunneld_tunnel_streams_active", &tcp2, 1.0).await?;
    assert_eq!(m.get("tunneld_tunnel_series", &[]), 3.0);

    // A fourth tunnel: the least recently used idle one (app.localhost) makes room; the busy
    // neighbour keeps its series.
    let held3 = hold(ports[2]).await?;
    let tcp3 = [("frontend", "tcp"), ("tunnel", p3.as_str())];
    let m = scrape_until(&s, "tunneld_tunnel_streams_active", &tcp3, 1.0).await?;
    assert_eq!(m.get("tunneld_tunnel_series_evicted_total", &[]), 1.0);
    assert_eq!(m.get("tunneld_tunnel_streams_total", &web_app), 0.0);
    assert_eq!(m.get("tunneld_tunnel_streams_total", &tcp2), 1.0);
    assert_eq!(m.get("tunneld_tunnel_streams_total", &tcp1), 1.0);
    assert_eq!(m.get("tunneld_tunnel_series", &[]), 3.0);

    // Every tracked tunnel busy: a newcomer counts under `_other`, nobody is evicted.
    let held1 = hold(ports[0]).await?;
    scrape_until(&s, "tunneld_tunnel_streams_active", &tcp1, 1.0).await?;
    visit_app(&s).await?;
    let other = [("frontend", "web"), ("tunnel", "_other")];
    let m = scrape_until(&s, "tunneld_tunnel_streams_total", &other, 1.0).await?;
    assert_eq!(m.get("tunneld_tunnel_series_evicted_total", &[]), 1.0);
    assert_eq!(m.get("tunneld_tunnel_streams_total", &web_app), 0.0);
    assert_eq!(bytes(&m, "web", "_other", "in"), 10.0);

    // Closed streams leave the active gauges at 0; the totals stay.
    drop((held1, held2, held3));
    for labels in [&tcp1, &tcp2, &tcp3] {
        scrape_until(&s, "tunneld_tunnel_streams_active", labels, 0.0).await?;
    }
    let (m, _) = scrape(&s).await?;
    assert_eq!(m.get("tunneld_tunnel_streams_total", &tcp1), 2.0);
    alice.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tunnel_series_are_off_by_default() -> Result<()> {
    let s = TestServer::start().await?;
    let local = echo().await;
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &tcp_tunnels(local))?);
    let port = alice.endpoint("t1").await?.port();
    echo_once(port).await?;
    let m = scrape_until(&s, "tunneld_bytes_total", &[("frontend", "tcp")], 4.0).await?;
    assert!(
        m.0.iter().all(|x| !x.name.starts_with("tunneld_tunnel_")),
        "per-tunnel series without admin.per_tunnel_metrics"
    );
    alice.shutdown().await
}
