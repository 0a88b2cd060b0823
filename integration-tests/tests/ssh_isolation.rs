//! The neighbour test of the ssh transport: visitors of one forward that never read what its
//! local service streams must not freeze another forward of the same `ssh` process (one SSH
//! connection carries both).

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::ssh::{base_args, keygen, peer_or_skip, server, Ssh};
use tunneld_integration_tests::{services, temp_dir};

/// How long the attack holds its visitors.
const ATTACK: Duration = Duration::from_secs(6);

async fn stalled_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(32 << 10)?;
    socket.connect(addr).await.context("connect")
}

/// `ssh -R` of `victim` to port `vport` and of an echo service to `nport` (both allocated
/// from the server's range), once both answer: the ssh process and the echo forward's
/// address.
async fn two_forwards(
    s: &tunneld_integration_tests::TestServer,
    key: &std::path::Path,
    victim: SocketAddr,
) -> Result<(Ssh, SocketAddr, u16)> {
    let echo = services::echo().await;
    let (vport, nport) = (s.range.0 + 1, s.range.0 + 2);
    let mut args = base_args(s.running.transports["ssh"].port(), key);
    args.extend(
        [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0.0.0.0:{vport}:{victim}"),
            "-R",
            &format!("0.0.0.0:{nport}:{echo}"),
            "alice@127.0.0.1",
        ]
        .map(String::from),
    );
    // Ready once both forwards answer (without -v, ssh prints nothing to wait for).
    let ssh = Ssh::spawn("ssh", &args, &[])?;
    let nb = SocketAddr::from(([127, 0, 0, 1], nport));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(nb).await.is_err()
        || TcpStream::connect(("127.0.0.1", vport)).await.is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "forwards never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((ssh, nb, vport))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_the_same_ssh_clients_other_forward() -> Result<()> {
    if !peer_or_skip("ssh", "ssh neighbour") {
        return Ok(());
    }
    let dir = temp_dir("ssh-neighbour");
    let (key, public) = keygen(&dir, "alice", "ed25519")?;
    let s = server(&[&public], &[]).await?;
    let (victim, written) = services::endless().await;
    let (ssh, nb, vport) = two_forwards(&s, &key, victim).await?;
    let probe = Neighbour::start(Probe::Echo(nb));
    let start = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..30 {
        if i == 6 {
            tokio::time::sleep_until(start + ATTACK / 2).await;
        }
        stalled.push(stalled_tcp(SocketAddr::from(([127, 0, 0, 1], vport))).await?);
    }
    tokio::time::sleep_until(start + ATTACK).await;
    let report = probe.finish().await;
    let wrote = written.load(Ordering::Relaxed);
    let m = s.metrics().await;
    eprintln!(
        "ssh: echo neighbour {report}; the victim service wrote {wrote} bytes to {} stalled visitors; backlog cuts {}",
        stalled.len(),
        m.get("tunneld_ssh_backlog_cuts_total", &[])
    );
    anyhow::ensure!(
        wrote >= 6 * (64 << 10),
        "the attack never engaged: {wrote} bytes"
    );
    report.assert_healthy("neighbour echo forward of the same ssh client")?;
    drop(stalled);
    drop(ssh);
    Ok(())
}

/// Downloads `size` bytes from the `services::download` forward at `port`, reading 4 KiB at
/// most every 2 ms (about 1-2 MB/s, a small fraction of what ssh sends on loopback), and
/// checks every byte; the body's length.
async fn slow_download(port: u16, size: usize) -> Result<usize> {
    let mut visitor = stalled_tcp(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    visitor
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut got = Vec::with_capacity(size + 512);
    let mut buf = vec![0u8; 4 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = tokio::time::timeout_at(deadline, visitor.read(&mut buf))
            .await
            .context("the download stalled")?
            .context("the visitor's read failed (cut?)")?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?
        + 4;
    let body = &got[body_at..];
    anyhow::ensure!(
        body.len() == size,
        "a visitor got {} of {size} bytes",
        body.len()
    );
    let block = tunneld_integration_tests::pattern(64 << 10, 9);
    anyhow::ensure!(
        body.chunks(block.len()).all(|c| c == &block[..c.len()]),
        "the download's bytes differ from what the service sent"
    );
    Ok(body.len())
}

/// Visitors reading far slower than the SSH client sends (a fast local service, slow
/// visitors) get their whole downloads: each channel's SSH window follows what its visitor
/// reads, and the session's window budget is shared among them, so the client waits
/// instead of tunneld holding the difference. The caps are the least allowed (a visitor's
/// backlog twice its window, the session's budget that again) and eight visitors need four
/// times the budget's full windows: had tunneld refilled the windows as data arrived, or cut
/// the biggest visitor once the session held too much, visitors would have been cut within
/// the first few hundred KiB. The neighbour forward of the same ssh process keeps answering
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_slower_than_the_ssh_client_get_every_byte_uncut() -> Result<()> {
    if !peer_or_skip("ssh", "ssh slow visitors") {
        return Ok(());
    }
    // More than the kernel's socket buffers between tunneld and a visitor hold (up to 4 MiB
    // on loopback): the rest waits in tunneld or at the client.
    const SIZE: usize = 8 << 20;
    const VISITORS: usize = 8;
    const WINDOW: usize = 256 << 10;
    let dir = temp_dir("ssh-slow-visitors");
    let (key, public) = keygen(&dir, "alice", "ed25519")?;
    let s = server(
        &[&public],
        &[
            format!("transports.ssh.window_size={WINDOW}"),
            format!("transports.ssh.max_backlog={}", 2 * WINDOW),
            format!("transports.ssh.max_session_backlog={}", 2 * WINDOW),
        ],
    )
    .await?;
    let (download, _) = services::download(SIZE as u64).await;
    let (ssh, nb, vport) = two_forwards(&s, &key, download).await?;
    let start = tokio::time::Instant::now();
    let probe = Neighbour::start(Probe::Echo(nb));
    let downloads = futures::future::join_all((0..VISITORS).map(|_| slow_download(vport, SIZE)));
    let results = downloads.await;
    // The probe needs 5 s of requests to judge; the downloads may end sooner.
    tokio::time::sleep_until(start + Duration::from_secs(6)).await;
    let report = probe.finish().await;
    let cuts = s.metrics().await.get("tunneld_ssh_backlog_cuts_total", &[]);
    eprintln!(
        "ssh slow visitors: {:?} in {:?}, cuts {cuts}; echo neighbour {report}",
        results
            .iter()
            .map(|r| r.as_ref().map_err(|e| format!("{e:#}")))
            .collect::<Vec<_>>(),
        start.elapsed()
    );
    for r in results {
        r.with_context(|| format!("(backlog cuts: {cuts})"))?;
    }
    anyhow::ensure!(cuts == 0.0, "{cuts} visitors were cut");
    report.assert_healthy("neighbour echo forward of the same ssh client")?;
    drop(ssh);
    Ok(())
}
