//! Bulk visitors: several visitors of one tunnel each pushing megabytes through it in 128 KiB
//! writes and reading them back. Over yamux each such read becomes one large frame whose
//! 12-byte header goes to TLS in the same write as the body, with small frames of other
//! streams gathered around it (`transports/yamux/src/coalesce.rs`); every byte must come back
//! in order, and a neighbour tunnel of the same client must keep its pace meanwhile. The same
//! over h2-reverse, whose HTTP/2 connection runs on the session's task.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{
    self, healthy, server, tagged, tcp_tunnel, verdict, SessionMark, Via, ATTACK,
};
use tunneld_integration_tests::endpoint_of;
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::services;

/// Visitors of the bulk tunnel at once.
const BULK: usize = 4;
/// Bytes a bulk visitor sends and reads back on one connection; it opens another until the
/// attack's time is up.
const EACH: usize = 8 << 20;
/// One write of a bulk visitor (a visitor's read at tunneld is at most this).
const CHUNK: usize = 128 << 10;
/// Bound of one connection's whole round trip.
const BULK_WAIT: Duration = Duration::from_secs(60);

/// The period of a visitor's byte pattern: a prime, so no chunk or read size lines up with it
/// and a frame delivered to the wrong place in the stream shows.
const PERIOD: usize = 65_521;

/// Visitor `seed`'s pattern, one period plus a chunk: the bytes from stream offset `o` on are
/// `ring[o % PERIOD..]`. No two seeds alike, so a frame of another stream shows too.
fn ring(seed: usize) -> Vec<u8> {
    (0..PERIOD + CHUNK)
        .map(|i| {
            let i = i % PERIOD;
            (i.wrapping_mul(31) ^ (i >> 9) ^ seed.wrapping_mul(97)) as u8
        })
        .collect()
}

/// Connections of [`EACH`] bytes one after another until `until`: how many came back whole.
async fn bulk_until(addr: SocketAddr, seed: usize, until: Instant) -> Result<u64> {
    let mut rounds = 0u64;
    while Instant::now() < until {
        let seed = seed + 1000 * rounds as usize;
        match tokio::time::timeout(BULK_WAIT, bulk(addr, seed)).await {
            Ok(r) => r.with_context(|| format!("connection {rounds}"))?,
            Err(_) => anyhow::bail!("connection {rounds}: not back within {BULK_WAIT:?}"),
        }
        rounds += 1;
    }
    Ok(rounds)
}

/// Sends [`EACH`] bytes in [`CHUNK`] writes while reading the echo back and comparing it.
async fn bulk(addr: SocketAddr, seed: usize) -> Result<()> {
    let pattern = std::sync::Arc::new(ring(seed));
    let s = TcpStream::connect(addr).await.context("connect")?;
    let (mut r, mut w) = s.into_split();
    let source = pattern.clone();
    let writer = tokio::spawn(async move {
        for start in (0..EACH).step_by(CHUNK) {
            let from = start % PERIOD;
            w.write_all(&source[from..from + CHUNK]).await?;
        }
        w.shutdown().await
    });
    let mut got = vec![0u8; 64 << 10];
    let mut at = 0usize;
    while at < EACH {
        let n = r.read(&mut got).await.context("read the echo")?;
        ensure!(n > 0, "the echo ended after {at} of {EACH} bytes");
        let from = at % PERIOD;
        if got[..n] != pattern[from..from + n] {
            let k = (0..n)
                .find(|&k| got[k] != pattern[from + k])
                .unwrap_or_default();
            anyhow::bail!("the echo differs at byte {}", at + k);
        }
        at += n;
    }
    // Nothing more than was sent: the echo ends where the visitor's writes ended.
    let n = r.read(&mut got).await.context("read the echo's end")?;
    ensure!(n == 0, "{n} bytes came back beyond the {EACH} sent");
    writer.await.context("writer task")?.context("write")?;
    Ok(())
}

async fn bulk_visitors(via: Via) -> Result<Vec<String>> {
    let s = server(false, &[]).await?;
    let bulky = services::echo().await;
    let echo = services::echo().await;
    let tunnels = format!("{}{}", tcp_tunnel("bulk", bulky), tcp_tunnel("nb", echo));
    let (mut alice, got) = attack::alice(&s, via, &tunnels).await?;
    let bulk_ep = endpoint_of(&got, "bulk")?;
    let nb_ep = endpoint_of(&got, "nb")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::Echo(nb_ep));
    let until = Instant::now() + ATTACK;
    let mut visitors = JoinSet::new();
    for seed in 0..BULK {
        visitors.spawn(async move {
            bulk_until(bulk_ep, seed, until)
                .await
                .with_context(|| format!("bulk visitor {seed}"))
        });
    }
    let mut problems = Vec::new();
    let mut whole = 0u64;
    while let Some(done) = visitors.join_next().await {
        match done {
            Ok(Ok(n)) => whole += n,
            Ok(Err(e)) => problems.push(format!("{e:#}")),
            Err(e) => problems.push(format!("bulk visitor task: {e}")),
        }
    }
    if whole < BULK as u64 {
        problems.push(format!(
            "{BULK} bulk visitors brought back only {whole} connections of {} MiB in {ATTACK:?}",
            EACH >> 20
        ));
    }
    let report = probe.finish().await;
    healthy(
        &report,
        &format!("neighbour tcp echo tunnel over {via:?} with {BULK} bulk visitors"),
        &mut problems,
    );
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?}: {BULK} bulk visitors, {whole} connections of {} MiB each way; neighbour {report}",
        EACH >> 20
    );
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_visitors_over_yamux_arrive_intact_and_spare_the_neighbour() -> Result<()> {
    verdict(bulk_visitors(Via::Yamux).await?)
}

/// Over h2-reverse the link's HTTP/2 connection runs on the session's task with the relays
/// of small exchanges; bulk relays leave it, and every byte must still arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_visitors_over_h2_reverse_arrive_intact_and_spare_the_neighbour() -> Result<()> {
    verdict(bulk_visitors(Via::H2Reverse).await?)
}
