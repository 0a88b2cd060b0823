//! Chatty visitors: many visitors of one tunnel each writing a few bytes at a time and waiting
//! for the echo. Over yamux every such write is its own small frame, which both sides gather
//! into shared TLS records, putting a flush off by one turn of the scheduler
//! (`transports/yamux/src/coalesce.rs`). Those frames must still come back, each in its own
//! order, and a neighbour tunnel of the same client must keep its pace meanwhile.

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

/// Visitors of the chatty tunnel.
const CHATTY: usize = 32;
/// Bound of one echo's wait.
const ECHO_WAIT: Duration = Duration::from_secs(10);

/// Round trips of the lone visitor after the crowd, all within [`ECHO_WAIT`]: with nothing
/// else on the session, a frame held back without a wake-up would wait for the next
/// keepalive.
const LONE: u64 = 200;

/// One chatty visitor until `until` or `most` echoes: writes of 1 to 7 bytes, each read back
/// before the next. The number of echoes.
async fn chatter(addr: SocketAddr, seed: usize, until: Instant, most: u64) -> Result<u64> {
    let mut c = TcpStream::connect(addr).await.context("connect")?;
    c.set_nodelay(true)?;
    let mut echoes = 0u64;
    let mut back = [0u8; 8];
    while Instant::now() < until && echoes < most {
        let len = 1 + (seed + echoes as usize) % 7;
        let sent: Vec<u8> = (0..len)
            .map(|k| (seed as u8) ^ (echoes as u8).wrapping_add(k as u8))
            .collect();
        c.write_all(&sent).await.context("write")?;
        tokio::time::timeout(ECHO_WAIT, c.read_exact(&mut back[..len]))
            .await
            .with_context(|| format!("echo {echoes} not back within {ECHO_WAIT:?}"))?
            .with_context(|| format!("echo {echoes}"))?;
        ensure!(
            back[..len] == sent[..],
            "echo {echoes} came back as {:?}, sent {sent:?}",
            &back[..len]
        );
        echoes += 1;
    }
    Ok(echoes)
}

async fn chatty_visitors(via: Via) -> Result<Vec<String>> {
    let s = server(false, &[]).await?;
    let chatty = services::echo().await;
    let echo = services::echo().await;
    let tunnels = format!("{}{}", tcp_tunnel("chatty", chatty), tcp_tunnel("nb", echo));
    let (mut alice, got) = attack::alice(&s, via, &tunnels).await?;
    let chatty_ep = endpoint_of(&got, "chatty")?;
    let nb_ep = endpoint_of(&got, "nb")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::Echo(nb_ep));
    let until = Instant::now() + ATTACK;
    let mut visitors = JoinSet::new();
    for seed in 0..CHATTY {
        visitors.spawn(chatter(chatty_ep, seed, until, u64::MAX));
    }
    let mut problems = Vec::new();
    let mut echoes = 0u64;
    while let Some(done) = visitors.join_next().await {
        match done {
            Ok(Ok(n)) => echoes += n,
            Ok(Err(e)) => problems.push(format!("chatty visitor: {e:#}")),
            Err(e) => problems.push(format!("chatty visitor task: {e}")),
        }
    }
    let report = probe.finish().await;
    healthy(
        &report,
        &format!("neighbour tcp echo tunnel over {via:?} with {CHATTY} chatty visitors"),
        &mut problems,
    );
    // Each visitor waits for its echo, so a tiny count means frames were held, not sent (a
    // floor far below what a loaded debug build makes; the lone visitor below is the strict
    // check).
    if echoes < 10 * CHATTY as u64 {
        problems.push(format!(
            "{CHATTY} chatty visitors got only {echoes} echoes in {ATTACK:?}"
        ));
    }
    let started = Instant::now();
    match tokio::time::timeout(
        ECHO_WAIT,
        chatter(chatty_ep, CHATTY, started + ECHO_WAIT, LONE),
    )
    .await
    {
        Ok(Ok(n)) if n == LONE => {}
        Ok(Ok(n)) => problems.push(format!("the lone visitor got {n} of {LONE} echoes")),
        Ok(Err(e)) => problems.push(format!("the lone visitor: {e:#}")),
        Err(_) => problems.push(format!(
            "the lone visitor's {LONE} echoes took over {ECHO_WAIT:?}"
        )),
    }
    let lone = started.elapsed();
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!("{via:?}: {echoes} echoes to {CHATTY} chatty visitors; neighbour {report}; {LONE} echoes of a lone visitor in {lone:?}");
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_visitors_over_yamux_get_every_echo_and_spare_the_neighbour() -> Result<()> {
    verdict(chatty_visitors(Via::Yamux).await?)
}
