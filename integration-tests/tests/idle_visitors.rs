//! Visitors that hold connections and do nothing: idle HTTP/2 connections on the https port
//! (TLS, ALPN h2, no preface) and idle TCP connections on a public port. One source address
//! gets at most `limits.max_connections_per_address` connections per listener, idle ones are
//! closed after their deadline, and meanwhile other visitors, the client's other tunnels and
//! tunnel clients on the shared port get through.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tunneld_integration_tests::attack::{self, http_tunnel, tcp_tunnel, Via};
use tunneld_integration_tests::{endpoint_of, services, TestClient, TestServer, ALICE_TOKEN, WAIT};

/// The attacker's source address (loopback, but not the visitors' 127.0.0.1).
const ATTACKER: [u8; 4] = [127, 0, 0, 2];
/// The per-address cap the tests set.
const PER_ADDRESS: usize = 32;

/// A TCP connection to `to` from the attacker's address.
async fn from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ATTACKER, 0)))?;
    s.connect(to).await
}

/// The status line of a fresh visitor's `GET /` to `site.localhost` (HTTP/1.1 over TLS).
async fn site_status(s: &TestServer) -> Result<String> {
    let tcp = TcpStream::connect(s.web()).await?;
    attack::status_line(
        attack::tls_to(s, "site.localhost", b"http/1.1", tcp).await?,
        b"GET / HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n".to_vec(),
        WAIT,
    )
    .await
}

/// Whether the peer closed `io` (EOF or an error) within `wait`.
async fn closed_within<S: AsyncRead + Unpin>(io: &mut S, wait: Duration) -> bool {
    let mut b = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_neither_block_the_https_port_nor_stay() -> Result<()> {
    let s = attack::server(
        false,
        &[
            "frontends.web.header_timeout=2s",
            &format!("limits.max_connections_per_address={PER_ADDRESS}"),
        ],
    )
    .await?;
    let svc = services::http().await;
    let (_alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;

    // 300 connections from one address: TLS with ALPN h2, then silence.
    let mut idle = JoinSet::new();
    for _ in 0..300 {
        let (web, ca) = (s.web(), s.ca_file());
        idle.spawn(async move {
            let tcp = from_attacker(web).await?;
            let tls = attack::tls_connector(ca, b"h2")?;
            attack::tls_over(&tls, "site.localhost", tcp).await
        });
    }
    let mut held = Vec::new();
    while let Some(r) = idle.join_next().await {
        if let Ok(tls) = r? {
            held.push(tls);
        }
    }
    ensure!(
        !held.is_empty() && held.len() <= PER_ADDRESS,
        "{} idle h2 connections were accepted from one address (cap {PER_ADDRESS})",
        held.len()
    );

    // Meanwhile a visitor from another address is served, and a tunnel client gets its
    // session on the shared port.
    let line = site_status(&s).await?;
    ensure!(attack::status_code(&line)? == 200, "{line}");
    let mut h2c = TestClient::spawn(attack::client_config(
        &s,
        Via::H2Reverse,
        &http_tunnel("other", svc),
    )?);
    tokio::time::timeout(WAIT, h2c.connected())
        .await
        .context("h2-reverse client during the attack")??;

    // The idle ones are closed after the header timeout (no preface, no request).
    for (i, tls) in held.iter_mut().enumerate() {
        ensure!(
            closed_within(tls, WAIT).await,
            "idle h2 connection {i} is still open"
        );
    }
    let m = s.metrics().await;
    ensure!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("frontend", "web"), ("reason", "too_many_from_address")]
        ) >= 1.0,
        "refusals past the per-address cap are not counted"
    );
    ensure!(
        m.get("tunneld_visitors_idle_closed_total", &[("frontend", "web")]) >= held.len() as f64,
        "idle closes are not counted"
    );
    h2c.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_visitors_on_one_port_spare_the_clients_other_tunnels() -> Result<()> {
    // A session carries at most 64 streams: 300 idle visitors would take them all.
    let s = TestServer::start_full(
        "",
        &[
            "transports.edge.yamux.max_streams=64".to_string(),
            format!("limits.max_connections_per_address={PER_ADDRESS}"),
            "limits.idle_timeout=2s".to_string(),
        ],
    )
    .await?;
    let echo = services::echo().await;
    let tunnels = format!("{}{}", tcp_tunnel("victim", echo), tcp_tunnel("nb", echo));
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &tunnels)?);
    let granted = alice.connected().await?;
    let (victim, nb) = (
        endpoint_of(&granted, "victim")?,
        endpoint_of(&granted, "nb")?,
    );

    let mut held = Vec::new();
    for _ in 0..300 {
        match from_attacker(victim).await {
            Ok(c) => held.push(c),
            Err(e) => anyhow::bail!("connect: {e}"),
        }
    }
    // Past the cap, connections are closed at once.
    let mut open = Vec::new();
    for mut c in held {
        if !closed_within(&mut c, Duration::from_millis(300)).await {
            open.push(c);
        }
    }
    ensure!(
        !open.is_empty() && open.len() <= PER_ADDRESS,
        "{} idle connections from one address stayed open (cap {PER_ADDRESS})",
        open.len()
    );
    // The neighbour tunnel answers, and so does the victim for another visitor.
    for (what, addr) in [("neighbour", nb), ("victim", victim)] {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(WAIT, c.read_exact(&mut buf))
            .await
            .with_context(|| format!("{what} did not answer"))??;
        ensure!(&buf == b"ping", "{what}: {buf:?}");
    }
    // After the idle timeout the idle ones are closed.
    for (i, c) in open.iter_mut().enumerate() {
        ensure!(
            closed_within(c, WAIT).await,
            "idle connection {i} is still open"
        );
    }
    let m = s.metrics().await;
    ensure!(
        m.get("tunneld_visitors_idle_closed_total", &[("frontend", "tcp")]) >= open.len() as f64,
        "idle closes are not counted"
    );
    ensure!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("frontend", "tcp"), ("reason", "too_many_from_address")]
        ) >= 1.0,
        "refusals past the per-address cap are not counted"
    );
    alice.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_visitor_that_never_opens_its_window_is_closed_when_idle() -> Result<()> {
    let s = attack::server(false, &["limits.http_idle_timeout=2s"]).await?;
    let big = services::http_body(4 << 20).await;
    let small = services::http().await;
    let tunnels = format!("{}{}", http_tunnel("big", big), http_tunnel("nb", small));
    let (_alice, _) = attack::alice(&s, Via::Yamux, &tunnels).await?;

    // An HTTP/2 visitor with a zero stream window: the response head arrives, no byte of the
    // body ever can. The request is "in flight" for ever unless waiting on the visitor
    // counts as idle.
    let tls = attack::tls_to(
        &s,
        "big.localhost",
        b"h2",
        TcpStream::connect(s.web()).await?,
    )
    .await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await?;
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await?;
    let port = s.web().port();
    let req = http::Request::get(format!("https://big.localhost:{port}/")).body(())?;
    let (resp, _) = send.send_request(req, true)?;
    let resp = tokio::time::timeout(WAIT, resp).await??;
    ensure!(resp.status() == 200, "{}", resp.status());

    // Meanwhile the client's other tunnel answers.
    let line = attack::status_line(
        attack::tls_to(
            &s,
            "nb.localhost",
            b"http/1.1",
            TcpStream::connect(s.web()).await?,
        )
        .await?,
        b"GET / HTTP/1.1\r\nHost: nb.localhost\r\nConnection: close\r\n\r\n".to_vec(),
        WAIT,
    )
    .await?;
    ensure!(attack::status_code(&line)? == 200, "{line}");

    // The stalled connection ends after the idle timeout (and a short grace).
    tokio::time::timeout(WAIT, conn)
        .await
        .context("a zero-window HTTP/2 visitor kept its connection past the idle timeout")?
        .context("connection task")?
        .ok();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = s.metrics().await;
        if m.get("tunneld_visitors_idle_closed_total", &[("frontend", "web")]) >= 1.0 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the idle close is not counted"
        );
        tokio::task::yield_now().await;
    }
    drop(resp);
    Ok(())
}

/// A keep-alive HTTP/1.1 visitor whose first request was answered and whose second head
/// stops half way is closed at the header timeout (2 s here), not at the idle timeout
/// between requests (75 s): the timer hyper kept from the first head is reset for the
/// second. Meanwhile a neighbour's requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_head_that_stops_half_way_is_closed_at_the_header_timeout() -> Result<()> {
    let s = attack::server(false, &["frontends.web.header_timeout=2s"]).await?;
    let svc = services::http().await;
    let (_alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;
    let tcp = TcpStream::connect(s.web()).await?;
    let mut slow = attack::tls_to(&s, "site.localhost", b"http/1.1", tcp).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: site.localhost\r\n\r\n")
        .await?;
    let line = tokio::time::timeout(WAIT, attack::read_status_line(&mut slow)).await??;
    ensure!(attack::status_code(&line)? == 200, "first request: {line}");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: site.loc").await?;
    let started = tokio::time::Instant::now();

    let line = site_status(&s).await?;
    ensure!(attack::status_code(&line)? == 200, "neighbour: {line}");

    ensure!(
        closed_within(&mut slow, Duration::from_secs(12)).await,
        "a stalled second head kept its connection past the header timeout"
    );
    ensure!(
        started.elapsed() >= Duration::from_secs(1),
        "closed after {:?}, before its header timeout",
        started.elapsed()
    );
    Ok(())
}
