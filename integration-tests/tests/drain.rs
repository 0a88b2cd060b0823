//! The drain on stop (what SIGTERM runs): downloads in flight over every transport finish,
//! tunnel clients can still reach their listeners until the drain ends, new visitors are
//! turned away, and a tunneld with tunnel clients but no visitors stops at once.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{self, http_tunnel, server, Via};
use tunneld_integration_tests::{services, TestClient, WAIT};

/// Each download's size: far more than the links' windows and the sockets' buffers hold, so
/// it is still in flight when the stop begins.
const SIZE: u64 = 24 << 20;

/// Sends `GET /` for `host`, reads the head and the first 256 KiB of the body: the
/// download is in flight.
async fn begin<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, host: &str) -> Result<u64> {
    io.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(
            io.read(&mut byte).await? == 1,
            "closed in the head: {head:?}"
        );
        head.push(byte[0]);
        ensure!(head.len() < 4096, "head too long");
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while got < 256 << 10 {
        let n = io.read(&mut buf).await?;
        ensure!(n > 0, "closed after {got} bytes");
        got += n as u64;
    }
    Ok(got)
}

/// Reads the rest of a download: the total body bytes.
async fn finish<S: AsyncRead + Unpin>(io: &mut S, mut got: u64) -> Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match io.read(&mut buf).await {
            Ok(0) => return Ok(got),
            Ok(n) => got += n as u64,
            // A TLS peer that closes without close_notify after the whole body: the count
            // tells whether anything was lost.
            Err(_) => return Ok(got),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_finish_over_every_transport_while_tunnel_listeners_stay_open() -> Result<()> {
    let s = server(true, &["limits.drain_timeout=30s"]).await?;
    let (svc, _) = services::http_stream(SIZE).await;
    let mut clients = Vec::new();
    for via in [Via::Yamux, Via::H2Reverse, Via::Websocket] {
        let name = format!("dl-{}", via.label());
        let (c, _) = attack::alice(&s, via, &http_tunnel(&name, svc)).await?;
        clients.push(c);
    }
    // One download per transport through the https port, and one more through the
    // websocket transport's own port.
    let mut tls = Vec::new();
    for via in [Via::Yamux, Via::H2Reverse, Via::Websocket] {
        let host = format!("dl-{}.localhost", via.label());
        let tcp = TcpStream::connect(s.web()).await?;
        let mut io = attack::tls_to(&s, &host, b"http/1.1", tcp).await?;
        let got = begin(&mut io, &host).await.with_context(|| host.clone())?;
        tls.push((host, io, got));
    }
    let mut ws_port = TcpStream::connect(("127.0.0.1", attack::ws_port(&s))).await?;
    let ws_got = begin(&mut ws_port, "dl-ws.localhost")
        .await
        .context("ws port")?;

    let started = Instant::now();
    let stop = s.running.stop();
    let s = &s;
    let checks = async move {
        // A new visitor is turned away at once (no answer, a closed connection).
        let tcp = TcpStream::connect(s.web()).await?;
        let turned_away = match attack::tls_to(s, "dl-edge.localhost", b"http/1.1", tcp).await {
            Err(_) => true,
            Ok(mut io) => {
                let _ = io
                    .write_all(b"GET / HTTP/1.1\r\nHost: dl-edge.localhost\r\n\r\n")
                    .await;
                let mut b = [0u8; 1];
                !matches!(tokio::time::timeout(WAIT, io.read(&mut b)).await, Ok(Ok(1)))
            }
        };
        ensure!(turned_away, "a new visitor was served during the drain");
        // A tunnel client still gets a session on every kind of listener.
        for via in [Via::Yamux, Via::H2Reverse, Via::Websocket] {
            let late = http_tunnel(&format!("late-{}", via.label()), svc);
            let mut c = TestClient::spawn(attack::client_config(s, via, &late)?);
            tokio::time::timeout(WAIT, c.connected())
                .await
                .context("connect during the drain")?
                .with_context(|| format!("{via:?} during the drain"))?;
            c.stop.cancel();
        }
        let mut totals = Vec::new();
        for (host, mut io, got) in tls {
            totals.push((host, finish(&mut io, got).await?));
        }
        totals.push(("ws port".into(), finish(&mut ws_port, ws_got).await?));
        Ok::<_, anyhow::Error>(totals)
    };
    let (drained, totals) = tokio::join!(stop, checks);
    for (what, got) in totals? {
        ensure!(got == SIZE, "{what}: {got} of {SIZE} bytes arrived");
    }
    ensure!(drained, "the drain timed out");
    ensure!(
        started.elapsed() < Duration::from_secs(25),
        "the drain took {:?}",
        started.elapsed()
    );
    drop(clients);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_tunnel_clients_but_no_visitors_does_not_wait() -> Result<()> {
    let s = server(true, &["limits.drain_timeout=30s"]).await?;
    let svc = services::http().await;
    let mut clients = Vec::new();
    for via in [Via::Yamux, Via::H2Reverse, Via::Websocket] {
        let name = format!("idle-{}", via.label());
        let (c, _) = attack::alice(&s, via, &http_tunnel(&name, svc)).await?;
        clients.push(c);
    }
    let started = Instant::now();
    ensure!(s.running.stop().await, "the drain timed out");
    // Nothing to wait for: the stop does not run into the 30 s drain timeout.
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "a stop without visitors took {:?}",
        started.elapsed()
    );
    drop(clients);
    Ok(())
}
