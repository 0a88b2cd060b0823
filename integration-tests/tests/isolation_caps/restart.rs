//! tunnelc survives `kill -9` of tunneld in the middle of a websocket download.

use crate::common::*;

/// tunneld as a process with a websocket transport on a fixed port.
struct Daemon {
    config: String,
    ws: u16,
    dir: std::path::PathBuf,
    runs: u32,
}

impl Daemon {
    fn new() -> Result<Daemon> {
        let dir = temp_dir("ws-kill");
        let range = port_block();
        let ws = port_block().0;
        let file = dir.join("server.yaml");
        std::fs::write(&file, server_yaml(&dir.join("state"), range, WEB_FRONTEND))?;
        Ok(Daemon {
            config: file.display().to_string(),
            ws,
            dir,
            runs: 0,
        })
    }

    /// Starts tunneld and waits for `ready`.
    async fn start(&mut self) -> Result<Proc> {
        self.runs += 1;
        let mut args = vec!["--config".to_string(), self.config.clone()];
        let listen = format!("127.0.0.1:{}", self.ws);
        for set in attack::transport_sets(Some(&listen)) {
            args.extend(["--set".to_string(), set]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = Proc::spawn(
            "tunneld",
            &args,
            self.dir.join(format!("tunneld-{}.err", self.runs)),
        )?;
        p.line_starting("ready")
            .await
            .with_context(|| format!("tunneld run {} on port {}", self.runs, self.ws))?;
        Ok(p)
    }
}

/// `GET <path>` to the websocket port for `host`; the status line and the body length read
/// (the body is read until the close).
async fn ws_get(port: u16, host: &str, path: &str) -> Result<(String, usize)> {
    let fut = async {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        c.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        let line = text.lines().next().unwrap_or("").to_string();
        let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
        Ok::<_, anyhow::Error>((line, body))
    };
    tokio::time::timeout(VISITOR_WAIT, fut)
        .await
        .map_err(|_| anyhow!("no answer within {VISITOR_WAIT:?}"))?
}

/// Finding 6: `tunnelc http` (TPoT key) over the websocket transport while a 200 MiB download
/// runs through it; tunneld is killed with SIGKILL (after 16 MiB) and restarted on the same
/// port, 6 times (the panic showed in 2 of 6 rounds; a round takes about 1.3 s). tunnelc
/// keeps running, reconnects, serves, and never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelc_survives_tunneld_kill_during_websocket_download() -> Result<()> {
    const ROUNDS: u32 = 6;
    let _serial = SERIAL.lock().await;
    let (local, _) = services::download(200 << 20).await;
    let mut d = Daemon::new()?;
    let mut tunneld = d.start().await?;
    let server_url = format!("http://localhost:{}", d.ws);
    let target = local.to_string();
    let mut tunnelc = Proc::spawn(
        "tunnelc",
        &[
            "http",
            &target,
            "--server",
            &server_url,
            "-k",
            WS_KEY,
            "-s",
            "dl",
        ],
        d.dir.join("tunnelc.err"),
    )?;
    tunnelc.line_starting("connected").await?;
    let url = tunnelc.line_starting("http").await?;
    ensure!(url == format!("http://dl.localhost:{}", d.ws), "{url}");
    let host = format!("dl.localhost:{}", d.ws);
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        // A download that reads as fast as it can, counting bytes.
        let received = Arc::new(AtomicU64::new(0));
        let mut c = TcpStream::connect(("127.0.0.1", d.ws)).await?;
        c.write_all(format!("GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let count = received.clone();
        let (progress_tx, mut progress) = mpsc::unbounded_channel::<u64>();
        let download = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 << 10];
            let mut reported = 0u64;
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let total = count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if total >= reported + (1 << 20) {
                            reported = total;
                            let _ = progress_tx.send(total);
                        }
                    }
                }
            }
        });
        // Kill tunneld once 16 MiB went through.
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, progress.recv()).await {
                Ok(Some(n)) if n >= 16 << 20 => break,
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "round {round}: the download ended after {} bytes",
                    received.load(Ordering::Relaxed)
                ),
                Err(_) => bail!(
                    "round {round}: only {} bytes downloaded in {WAIT:?}",
                    received.load(Ordering::Relaxed)
                ),
            }
        }
        tunneld.signal("KILL")?;
        tunneld.wait().await?;
        let at_kill = received.load(Ordering::Relaxed);
        tokio::time::timeout(WAIT, download)
            .await
            .map_err(|_| anyhow!("round {round}: the download did not end with tunneld"))??;
        ensure!(
            at_kill < 200 << 20,
            "round {round}: the download finished before the kill"
        );
        tunneld = d.start().await?;
        tunnelc
            .line_starting("connected")
            .await
            .with_context(|| format!("round {round}: tunnelc reconnects"))?;
        let again = tunnelc.line_starting("http").await?;
        ensure!(again == url, "round {round}: {again}, want {url}");
        let (line, body) = ws_get(d.ws, &host, "/small")
            .await
            .with_context(|| format!("round {round}: a request after the restart"))?;
        ensure!(
            line.starts_with("HTTP/1.1 200 ") && body == 2,
            "round {round}: {line} with {body} body bytes"
        );
        ensure!(
            tunnelc.child.try_wait()?.is_none(),
            "round {round}: tunnelc exited: {}",
            tunnelc.stderr()
        );
        rounds.push(at_kill);
    }
    let err = tunnelc.stderr();
    ensure!(!err.contains("panicked"), "tunnelc panicked: {err}");
    eprintln!("downloaded bytes at each kill: {rounds:?}");
    tunnelc.signal("TERM")?;
    let _ = tunnelc.wait().await;
    drop(tunneld);
    Ok(())
}
