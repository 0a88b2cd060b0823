//! Many idle visitors through one tunnelc (issue 20's 10,000): per transport, visitors are
//! opened until the count is reached or one fails, each proven end to end by an echoed byte
//! from a sink service in its own process (`tunneld-bench sink`, so this process holds only
//! the visitors' descriptors). Then the memory of both sides, and one fresh visitor's round
//! trip while the crowd is held.

use crate::systems::{self, field, Proc, Transport};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Visitors being opened at once.
const OPENING: usize = 64;
/// The longest one visitor's echo may take.
const ECHO_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize)]
pub struct CrowdRow {
    pub system: String,
    /// Visitors asked for.
    pub visitors: usize,
    /// Visitors that got their echo and were held open together.
    pub held: usize,
    pub open_secs: f64,
    pub rss_server_mib: Option<f64>,
    pub rss_client_mib: Option<f64>,
    /// Both sides' RSS growth per held visitor.
    pub per_visitor_kib: Option<f64>,
    /// One more visitor's round trip while the crowd is held (one of it closed first when
    /// the opening stopped at a cap).
    pub fresh_echo_ms: Option<f64>,
    /// Why the next visitor failed, when fewer than asked were held.
    pub stopped_by: Option<String>,
}

/// `tunneld-bench sink`: echoes each connection's first byte, then holds it until it closes.
pub async fn sink() -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening addr={}", l.local_addr()?);
    loop {
        let mut s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: say so and go on with the ones held.
                eprintln!("sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {
                let mut rest = [0u8; 64];
                while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
            }
        });
    }
}

/// One visitor: connected, its byte echoed back through the tunnel.
async fn visit(addr: SocketAddr) -> Result<TcpStream> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        s.write_all(b"C").await.context("write")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .context("closed before the echo")?;
        anyhow::Ok(s)
    };
    tokio::time::timeout(ECHO_WAIT, go)
        .await
        .map_err(|_| anyhow!("no echo within {ECHO_WAIT:?}"))?
}

/// Opens up to `n` visitors, `OPENING` at a time; stops at the first failure.
async fn open(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<String>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut tasks = tokio::task::JoinSet::new();
    let mut held = Vec::with_capacity(n);
    let mut failed = None;
    for _ in 0..n {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        // Collect what finished, so a failure stops the opening early.
        while let Some(done) = tasks.try_join_next() {
            match done {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => failed = failed.or(Some(format!("{e:#}"))),
                Err(e) => failed = failed.or(Some(e.to_string())),
            }
        }
        if failed.is_some() {
            break;
        }
        tasks.spawn(async move {
            let r = visit(addr).await;
            drop(permit);
            r
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => failed = failed.or(Some(format!("{e:#}"))),
            Err(e) => failed = failed.or(Some(e.to_string())),
        }
    }
    (held, failed)
}

/// The visitors still open (none read EOF or an error), and what stopped the crowd, with
/// a note when some were lost while held.
fn still_open(
    held: Vec<TcpStream>,
    stopped_by: Option<String>,
) -> (Vec<TcpStream>, Option<String>) {
    let n = held.len();
    let mut scratch = [0u8; 1];
    let alive: Vec<TcpStream> = held
        .into_iter()
        .filter(|s| {
            matches!(s.try_read(&mut scratch), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .collect();
    let lost = n - alive.len();
    let stopped_by = match (lost, stopped_by) {
        (0, s) => s,
        (l, Some(s)) => Some(format!("{s}; and {l} held visitors were closed")),
        (l, None) => Some(format!("{l} held visitors were closed")),
    };
    (alive, stopped_by)
}

/// One more visitor's echo time beside the crowd (tried for a few seconds, since a place
/// made at a cap frees once tunneld sees the close).
async fn fresh_echo(addr: SocketAddr) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = Instant::now();
        match visit(addr).await {
            Ok(_) => return Some(fresh.elapsed().as_secs_f64() * 1000.0),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => return None,
        }
    }
}

/// The crowd rows: websocket (conversations per session up to 65535), h2-reverse (streams per
/// link up to 65535) and yamux (streams per session up to 16384) to the ports frontend.
pub async fn rows(bins: &Path, work: &Path, n: usize) -> Result<Vec<CrowdRow>> {
    let me = std::env::current_exe()?;
    let mut out = Vec::new();
    for t in [Transport::Websocket, Transport::H2Reverse, Transport::Yamux] {
        let dir = work.join(format!("crowd-{}", t.kind()));
        std::fs::create_dir_all(&dir)?;
        let mut sink = Proc::spawn(&me, &["sink"], &dir.join("sink.log"), "sink")?;
        let line = sink.line_with("listening").await?;
        let sink_addr: SocketAddr = field(&line, "addr")
            .ok_or_else(|| anyhow!("sink printed {line}"))?
            .parse()?;
        // Room for the crowd and the fresh visitor (the transports' own ceilings stand).
        let room = (n + 16).min(65535);
        let sys = systems::tunneld_sized(t, room, bins, sink_addr, &dir).await?;
        let crate::endpoint::Endpoint::Tcp(addr) = sys.endpoint else {
            bail!("{}: not a TCP endpoint", sys.name);
        };
        eprintln!("holding {n} idle visitors through {} ...", sys.name);
        let before = sys.rss_kib();
        let started = Instant::now();
        let (held, stopped_by) = open(addr, n).await;
        let open_secs = started.elapsed().as_secs_f64();
        // Let both sides settle (buffers given back after the echoes).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let with = sys.rss_kib();
        let (mut held, stopped_by) = still_open(held, stopped_by);
        let held_count = held.len();
        let stopped_by = match stopped_by {
            Some(s) if t == Transport::Yamux && held_count >= systems::YAMUX_CEILING => Some(
                format!("{s} (every one of yamux's {held_count} streams a session in use)"),
            ),
            s => s,
        };
        if stopped_by.is_some() {
            // At a cap: one place is made for the fresh visitor.
            held.pop();
        }
        let fresh_echo_ms = fresh_echo(addr).await;
        let per_visitor_kib = match (before, with, held_count) {
            ((Some(bs), Some(bc)), (Some(ws), Some(wc)), h) if h > 0 => {
                Some(((ws + wc) as f64 - (bs + bc) as f64) / h as f64)
            }
            _ => None,
        };
        let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        out.push(CrowdRow {
            system: sys.name.clone(),
            visitors: n,
            held: held_count,
            open_secs,
            rss_server_mib: mib(with.0),
            rss_client_mib: mib(with.1),
            per_visitor_kib,
            fresh_echo_ms,
            stopped_by,
        });
        drop(held);
        drop(sys);
    }
    Ok(out)
}

/// The crowd table.
pub fn markdown(rows: &[CrowdRow]) -> String {
    let f = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "–".into())
    };
    let mut out = String::from("\nIdle visitors held at once through one tunnelc (ports frontend; each proven by an echoed byte):\n\n| system | visitors held / asked | seconds to open | RSS server / client MiB | KiB per visitor (both sides) | one more visitor's echo ms | stopped by |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} / {} | {:.1} | {} / {} | {} | {} | {} |\n",
            r.system,
            r.held,
            r.visitors,
            r.open_secs,
            f(r.rss_server_mib, 1),
            f(r.rss_client_mib, 1),
            f(r.per_visitor_kib, 1),
            f(r.fresh_echo_ms, 2),
            r.stopped_by.as_deref().unwrap_or("–"),
        ));
    }
    out
}
