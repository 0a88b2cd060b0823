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

/// A test server (`sets` on top of `ssh::server`'s) that knows alice's new ed25519 key, made
/// in a directory named for `test`: the server and the key's path.
async fn server_for_alice(
    test: &str,
    sets: &[String],
) -> Result<(tunneld_integration_tests::TestServer, std::path::PathBuf)> {
    let (key, public) = keygen(&temp_dir(test), "alice", "ed25519")?;
    Ok((server(&[&public], sets).await?, key))
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
    let (s, key) = server_for_alice("ssh-neighbour", &[]).await?;
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
        "ssh: echo neighbour {report}; the victim service wrote {wrote} bytes to {} stalled visitors; backlog cuts {}, waiting {}",
        stalled.len(),
        m.get("tunneld_ssh_backlog_cuts_total", &[]),
        m.get("tunneld_ssh_backlog_bytes", &[])
    );
    anyhow::ensure!(
        wrote >= 6 * (64 << 10),
        "the attack never engaged: {wrote} bytes"
    );
    report.assert_healthy("neighbour echo forward of the same ssh client")?;
    // What the stalled visitors hold shows, within the session's bound (twice the default
    // 64 MiB budget), and goes once they leave.
    let waiting = m.get("tunneld_ssh_backlog_bytes", &[]);
    anyhow::ensure!(
        (f64::from(64 << 10)..=f64::from(128 << 20)).contains(&waiting),
        "tunneld_ssh_backlog_bytes {waiting} while 30 visitors stall"
    );
    drop(stalled);
    let after = s
        .metrics_until(|m| m.get("tunneld_ssh_backlog_bytes", &[]) == 0.0)
        .await
        .get("tunneld_ssh_backlog_bytes", &[]);
    anyhow::ensure!(
        after == 0.0,
        "{after} bytes still waiting after the visitors left"
    );
    drop(ssh);
    Ok(())
}

/// Downloads `size` bytes from the `services::download` forward at `port`, when `slow`
/// reading 4 KiB at most every 2 ms (about 1-2 MB/s, a small fraction of what ssh sends on
/// loopback), and checks every byte; the body's length.
async fn download(port: u16, size: usize, slow: bool) -> Result<usize> {
    let mut visitor = stalled_tcp(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    visitor
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut got = Vec::with_capacity(size + 512);
    let mut buf = vec![0u8; if slow { 4 << 10 } else { 64 << 10 }];
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
        if slow {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
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
/// instead of tunneld holding the difference. A visitor's backlog cap is the least allowed
/// (twice its window), and eight visitors' full windows are twice the session's budget: had
/// tunneld refilled the windows as data arrived, or cut the biggest visitor once the session
/// held too much, visitors would have been cut part way. The neighbour forward of the same
/// ssh process keeps answering meanwhile.
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
    let (s, key) = server_for_alice(
        "ssh-slow-visitors",
        &[
            format!("transports.ssh.window_size={WINDOW}"),
            format!("transports.ssh.max_backlog={}", 2 * WINDOW),
            format!("transports.ssh.max_session_backlog={}", 4 * WINDOW),
        ],
    )
    .await?;
    let (service, _) = services::download(SIZE as u64).await;
    let (ssh, nb, vport) = two_forwards(&s, &key, service).await?;
    let start = tokio::time::Instant::now();
    let probe = Neighbour::start(Probe::Echo(nb));
    let downloads = futures::future::join_all((0..VISITORS).map(|_| download(vport, SIZE, true)));
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

/// Keys exchanged anew in the middle of bulk downloads (tunneld starts it after
/// `rekey_limit` bytes, here 1 MiB): the client may still send everything its channels'
/// windows allow until it sees tunneld's KEXINIT, and the session survives each exchange
/// (russh's own bound, twice its configured window, would have ended it: its window is
/// only the channels' opening 64 KiB, the rest granted by tunneld).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_downloads_survive_key_exchanges_tunneld_starts() -> Result<()> {
    if !peer_or_skip("ssh", "ssh rekey") {
        return Ok(());
    }
    const SIZE: usize = 24 << 20;
    let (s, key) =
        server_for_alice("ssh-rekey", &["transports.ssh.rekey_limit=1048576".into()]).await?;
    let (service, _) = services::download(SIZE as u64).await;
    let (ssh, nb, vport) = two_forwards(&s, &key, service).await?;
    let results = futures::future::join_all((0..3).map(|_| download(vport, SIZE, false))).await;
    for r in results {
        r.context("a download through the rekeying session")?;
    }
    services::echo_message(&mut TcpStream::connect(nb).await?, b"still there")
        .await
        .context("the session after the downloads")?;
    drop(ssh);
    Ok(())
}

/// What one SSH session's visitors can leave unread at tunneld is bounded however many
/// come: a new visitor is refused while the session's channels' windows, with the new
/// one's opening window, would pass twice its window budget; once one leaves, the next is
/// taken. (Here each channel's window is 32 KiB and the budget 64 KiB: four at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_visitors_while_its_window_budget_lasts() -> Result<()> {
    if !peer_or_skip("ssh", "ssh window budget") {
        return Ok(());
    }
    let (s, key) = server_for_alice(
        "ssh-budget",
        &[
            "transports.ssh.window_size=32768".into(),
            "transports.ssh.max_backlog=65536".into(),
            "transports.ssh.max_session_backlog=65536".into(),
        ],
    )
    .await?;
    let (ssh, echo, _) = two_forwards(&s, &key, services::echo().await).await?;
    let visit = || async move {
        let mut c = TcpStream::connect(echo).await?;
        services::echo_message(&mut c, b"hello").await?;
        anyhow::Ok(c)
    };
    // The readiness checks' channels close on their own: wait until four fit again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut held = Vec::new();
    while held.len() < 4 {
        match visit().await {
            Ok(c) => held.push(c),
            Err(e) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "only {} visitors held: {e:#}",
                    held.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    anyhow::ensure!(visit().await.is_err(), "a fifth visitor was taken");
    let refused = s.metrics().await.get(
        "tunneld_stream_open_failures_total",
        &[("reason", "stream_cap")],
    );
    anyhow::ensure!(refused >= 1.0, "no refusal counted: {refused}");
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = visit().await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no visitor taken after one left: {e:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ssh);
    Ok(())
}
