//! Visitors that never read: a victim's stalled downloads must not freeze its neighbours.

use anyhow::{Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{
    self, healthy, http_tunnel, http_tunnels, server, tagged, tcp_tunnel, verdict, SessionMark,
    Via, ATTACK, NB_BODY,
};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::services;
use tunneld_integration_tests::{endpoint_of, TestServer};

use crate::common::SERIAL;

/// A TCP connection for a visitor that never reads, with a small receive buffer, so the
/// visitor's own kernel buffer does not soak up MiBs before the stall reaches tunneld
/// (each stalled visitor still takes a few MiB through the tunnel: tunneld's send buffer).
async fn stalled_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(32 << 10)?;
    socket.connect(addr).await.context("connect")
}

/// A visitor that sends `GET /` over TLS to `<name>.localhost` and never reads.
async fn stalled_https_visitor(
    s: &TestServer,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = stalled_tcp(s.web()).await?;
    let mut tls = attack::tls_to(s, &format!("{name}.localhost"), b"http/1.1", tcp).await?;
    let req = format!(
        "GET /big HTTP/1.1\r\nHost: {name}.localhost:{}\r\n\r\n",
        s.web().port()
    );
    tls.write_all(req.as_bytes()).await?;
    tls.flush().await?;
    Ok(tls)
}

/// Stalled visitors of a victim, each opened by `open`: 6 at once, 24 more half-way through
/// the attack; then waits for the attack's end. The visitors, and the errors of those that
/// did not open.
async fn stall<T, F, Fut>(mut open: F) -> (Vec<T>, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut stalled = Vec::new();
    let mut open_errors = Vec::new();
    for i in 0..30 {
        if i == 6 {
            tokio::time::sleep_until(start + ATTACK / 2).await;
        }
        match open().await {
            Ok(v) => stalled.push(v),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    tokio::time::sleep_until(start + ATTACK).await;
    (stalled, open_errors)
}

/// Problems of the stalled-visitor attack itself: visitors that did not open, or a victim
/// service that wrote less than 6 blocks (the visitors never stalled it).
fn stall_problems(open_errors: &[String], wrote: u64, problems: &mut Vec<String>) {
    if !open_errors.is_empty() {
        problems.push(format!("stalled visitors not opened: {open_errors:?}"));
    }
    if wrote < 6 * (64 << 10) {
        problems.push(format!(
            "the attack never engaged: the victim service wrote only {wrote} bytes"
        ));
    }
}

/// 6 visitors of a 64 MiB download that never read, then 30; the neighbour http tunnel must
/// keep serving its whole 256 KiB body.
async fn stalled_http_visitors(via: Via) -> Result<()> {
    let s = server(false, &[]).await?;
    let (victim, written) = services::http_stream(64 << 20).await;
    let neighbour = services::http_body(NB_BODY).await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour)]);
    let (mut alice, _) = attack::alice(&s, via, &tunnels).await?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(NB_BODY)));
    let (stalled, open_errors) = stall(|| stalled_https_visitor(&s, "victim")).await;
    let report = probe.finish().await;
    let wrote = written.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    healthy(
        &report,
        &format!("neighbour http tunnel over {via:?} with 30 stalled visitors"),
        &mut problems,
    );
    stall_problems(&open_errors, wrote, &mut problems);
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?}: neighbour {report}; victim service wrote {wrote} bytes to {} stalled visitors",
        stalled.len()
    );
    drop(stalled);
    alice.shutdown().await.ok();
    verdict(problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_neighbours() -> Result<()> {
    let _serial = SERIAL.lock().await;
    stalled_http_visitors(Via::H2Reverse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_neighbours_over_yamux() -> Result<()> {
    let _serial = SERIAL.lock().await;
    stalled_http_visitors(Via::Yamux).await
}

/// A ports tunnel to a service that streams without end, 6 then 30 raw TCP visitors that
/// never read; neighbours: a tcp echo tunnel, and on websocket also an http tunnel reached on
/// the websocket port by Host. Answers the problems found, prefixed with the transport.
async fn stalled_tcp_visitors(via: Via) -> Result<Vec<String>> {
    let s = server(via == Via::Websocket, &[]).await?;
    let (victim, written) = services::endless().await;
    let echo = services::echo().await;
    let mut tunnels = format!("{}{}", tcp_tunnel("victim", victim), tcp_tunnel("nb", echo));
    let web = services::http_body(NB_BODY).await;
    if via == Via::Websocket {
        tunnels.push_str(&http_tunnel("web", web));
    }
    let (mut alice, got) = attack::alice(&s, via, &tunnels).await?;
    let victim_ep = endpoint_of(&got, "victim")?;
    let nb_ep = endpoint_of(&got, "nb")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::Echo(nb_ep));
    let by_host = (via == Via::Websocket).then(|| {
        let port = attack::ws_port(&s);
        Neighbour::start(Probe::HttpHost {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: format!("web.localhost:{port}"),
            body: Some(NB_BODY),
        })
    });
    let (stalled, open_errors) = stall(|| stalled_tcp(victim_ep)).await;
    let report = probe.finish().await;
    let web_report = match by_host {
        Some(n) => Some(n.finish().await),
        None => None,
    };
    let wrote = written.load(Ordering::Relaxed);
    let relayed = s.metrics().await.get(
        "tunneld_bytes_total",
        &[("frontend", "tcp"), ("direction", "out")],
    );
    let mut problems = Vec::new();
    healthy(
        &report,
        &format!("neighbour tcp echo tunnel over {via:?} with 30 stalled visitors"),
        &mut problems,
    );
    if let Some(r) = &web_report {
        healthy(
            r,
            "neighbour http tunnel on the websocket port with 30 stalled visitors",
            &mut problems,
        );
    }
    stall_problems(&open_errors, wrote, &mut problems);
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?} ports: echo neighbour {report}; http neighbour {}; victim service wrote {wrote} bytes to {} stalled visitors; tunneld relayed {relayed} bytes to visitors",
        web_report.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        stalled.len()
    );
    drop(stalled);
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_visitors_that_never_read_do_not_freeze_neighbours() -> Result<()> {
    let _serial = SERIAL.lock().await;
    verdict(stalled_tcp_visitors(Via::H2Reverse).await?)
}

/// The ports shape of the stalled-visitor test over yamux, then over the websocket transport
/// (each with its own tunneld; one after the other, so neither measures the other's load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_visitors_on_yamux_and_websocket() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut problems = stalled_tcp_visitors(Via::Yamux).await?;
    problems.extend(stalled_tcp_visitors(Via::Websocket).await?);
    verdict(problems)
}
