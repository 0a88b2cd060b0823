//! The neighbour test of the ssh transport: visitors of one forward that never read what its
//! local service streams must not freeze another forward of the same `ssh` process (one SSH
//! connection carries both).

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_the_same_ssh_clients_other_forward() -> Result<()> {
    if !peer_or_skip("ssh", "ssh neighbour") {
        return Ok(());
    }
    let dir = temp_dir("ssh-neighbour");
    let (key, public) = keygen(&dir, "alice", "ed25519")?;
    let s = server(&[&public], &[]).await?;
    let (victim, written) = services::endless().await;
    let echo = services::echo().await;
    let (vport, nport) = (s.range.0 + 1, s.range.0 + 2);
    let mut args = base_args(s.running.transports["ssh"].port(), &key);
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
    let mut ssh = Ssh::spawn("ssh", &args, &[])?;
    ssh.line_with("Authenticated").await.ok();
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
