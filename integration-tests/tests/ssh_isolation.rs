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

/// A visitor reading far slower than the SSH client sends (a fast local service, a slow
/// visitor) gets the whole download: its channel's SSH window follows what it reads, so the
/// client waits instead of tunneld holding the difference. The backlog caps are set to
/// twice the window, the least allowed: had tunneld refilled the window as data arrived, the
/// visitor would have been cut within the first few hundred KiB. The neighbour forward of
/// the same ssh process keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_slower_than_the_ssh_client_gets_every_byte_uncut() -> Result<()> {
    if !peer_or_skip("ssh", "ssh slow visitor") {
        return Ok(());
    }
    const SIZE: usize = 8 << 20;
    const WINDOW: usize = 64 << 10;
    let dir = temp_dir("ssh-slow-visitor");
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
    let probe = Neighbour::start(Probe::Echo(nb));

    let mut visitor = stalled_tcp(SocketAddr::from(([127, 0, 0, 1], vport))).await?;
    visitor
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    // 4 KiB every 2 ms at most (2 MB/s): a small fraction of what ssh sends on loopback,
    // for as long as the neighbour probe needs (over 5 s).
    let mut got = Vec::with_capacity(SIZE + 512);
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
    let report = probe.finish().await;
    let m = s.metrics().await;
    let cuts = m.get("tunneld_ssh_backlog_cuts_total", &[]);
    eprintln!(
        "ssh slow visitor: {} bytes, cuts {cuts}; echo neighbour {report}",
        got.len()
    );
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?
        + 4;
    let body = &got[body_at..];
    anyhow::ensure!(
        body.len() == SIZE,
        "the visitor got {} of {SIZE} bytes (backlog cuts: {cuts})",
        body.len()
    );
    let block = tunneld_integration_tests::pattern(64 << 10, 9);
    anyhow::ensure!(
        body.chunks(block.len()).all(|c| c == &block[..c.len()]),
        "the download's bytes differ from what the service sent"
    );
    anyhow::ensure!(cuts == 0.0, "{cuts} visitors were cut");
    report.assert_healthy("neighbour echo forward of the same ssh client")?;
    drop(ssh);
    Ok(())
}
