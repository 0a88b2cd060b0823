//! A probe of a neighbour tunnel while an attack runs on another tunnel of the same client:
//! a background task issues one small request every 50 ms (each bounded by 2 s, each on a
//! new connection) and records whether it succeeded and how long it took, until stopped.
//!
//! ```ignore
//! let n = Neighbour::start(Probe::Echo(addr));
//! // ... the attack ...
//! n.finish().await.assert_healthy("echo neighbour")?;
//! ```

use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Time between two requests.
pub const PERIOD: Duration = Duration::from_millis(50);
/// Deadline of one request (connect, TLS, request, whole answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A probe stops on its own after this long, even if never finished.
pub const MAX_RUN: Duration = Duration::from_secs(120);
/// And after this many requests.
pub const MAX_REQUESTS: u64 = 2400;
/// Errors kept in a [`Report`].
const KEEP_ERRORS: usize = 8;
/// The largest answer a probe reads.
const MAX_ANSWER: usize = 16 << 20;

/// What one probe request does.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Connect, write 16 bytes, read the same 16 bytes back (a tunnel to
    /// [`crate::services::echo`]).
    Echo(SocketAddr),
    /// `GET /` over TLS (ALPN http/1.1) to `https://<host>:<port>/` through an
    /// `https-subdomain` listener at `addr`, with SNI `host`, trusting `ca`; status 200, and
    /// with `body` exactly that many body bytes.
    Https {
        addr: SocketAddr,
        host: String,
        ca: PathBuf,
        body: Option<usize>,
    },
    /// Plain HTTP/1.1 `GET /` to `addr` with `Host: <host>` (the websocket transport's own
    /// port routes visitors by Host); status 200, and with `body` exactly that many body
    /// bytes.
    HttpHost {
        addr: SocketAddr,
        host: String,
        body: Option<usize>,
    },
}

impl Probe {
    /// [`Probe::Https`] for `<name>.localhost` on a test server's `web` frontend.
    pub fn https(server: &crate::TestServer, name: &str, body: Option<usize>) -> Self {
        Probe::Https {
            addr: server.web(),
            host: format!("{name}.localhost"),
            ca: server.ca_file(),
            body,
        }
    }
}

/// The prepared form of a probe (TLS config built once).
enum Ready {
    Echo(SocketAddr),
    Https {
        addr: SocketAddr,
        host: String,
        connector: tokio_rustls::TlsConnector,
        body: Option<usize>,
    },
    HttpHost {
        addr: SocketAddr,
        host: String,
        body: Option<usize>,
    },
}

/// One finished request.
#[derive(Debug, Clone)]
struct Outcome {
    /// Since the probe started.
    at: Duration,
    took: Duration,
    error: Option<String>,
}

/// What a probe saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    /// Over all requests; a failed one counts with the time it took (at most 2 s).
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// How long the probe ran.
    pub ran: Duration,
    /// When (since the start) the first failure ended, if any.
    pub first_failure: Option<Duration>,
    /// The first few errors, each with when it happened.
    pub errors: Vec<String>,
}

impl Report {
    pub fn attempted(&self) -> u64 {
        self.ok + self.failed
    }

    /// At least 100 requests attempted, at least 99 % of them answered correctly, and p99 of
    /// the latency under 250 ms.
    pub fn assert_healthy(&self, what: &str) -> Result<()> {
        let n = self.attempted();
        if n < 100 {
            bail!("{what}: only {n} requests attempted (want >= 100): {self}");
        }
        if self.ok * 100 < n * 99 {
            bail!(
                "{what}: {} of {n} requests failed (want <= 1 %): {self}",
                self.failed
            );
        }
        if self.p99 >= Duration::from_millis(250) {
            bail!("{what}: p99 latency {:?} (want < 250 ms): {self}", self.p99);
        }
        Ok(())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} failed={} p50={:?} p99={:?} max={:?} ran={:?}",
            self.ok, self.failed, self.p50, self.p99, self.max, self.ran
        )?;
        if let Some(t) = self.first_failure {
            write!(f, " first_failure_at={t:?}")?;
        }
        if !self.errors.is_empty() {
            write!(f, " errors={:?}", self.errors)?;
        }
        Ok(())
    }
}

/// A running probe.
pub struct Neighbour {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Report>,
}

impl Neighbour {
    /// Starts probing at once: the first request goes out immediately.
    pub fn start(probe: Probe) -> Neighbour {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { run(probe, s).await });
        Neighbour { stop, task }
    }

    /// Stops issuing requests, waits for those in flight (each bounded by 2 s) and reports.
    pub async fn finish(self) -> Report {
        self.stop.cancel();
        match tokio::time::timeout(REQUEST_TIMEOUT * 3, self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => Report {
                failed: 1,
                errors: vec![format!("probe task failed: {e}")],
                ..Report::default()
            },
            Err(_) => Report {
                failed: 1,
                errors: vec!["probe task did not end".into()],
                ..Report::default()
            },
        }
    }
}

async fn run(probe: Probe, stop: CancellationToken) -> Report {
    let start = Instant::now();
    let ready = match prepare(probe) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return Report {
                failed: 1,
                errors: vec![format!("probe setup: {e:#}")],
                ..Report::default()
            }
        }
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight: JoinSet<Outcome> = JoinSet::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let end = start + MAX_RUN;
    let mut issued = 0u64;
    let mut n = 0u64;
    while issued < MAX_REQUESTS {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => {
                let ready = ready.clone();
                n += 1;
                let seq = n;
                inflight.spawn(async move {
                    let t0 = Instant::now();
                    let result = tokio::time::timeout(REQUEST_TIMEOUT, once(&ready, seq)).await;
                    let error = match result {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("{e:#}")),
                        Err(_) => Some(format!("timed out after {REQUEST_TIMEOUT:?}")),
                    };
                    Outcome { at: t0 - start, took: t0.elapsed(), error }
                });
                issued += 1;
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                outcomes.push(done.unwrap_or_else(|e| Outcome {
                    at: start.elapsed(),
                    took: Duration::ZERO,
                    error: Some(format!("request task failed: {e}")),
                }));
            }
        }
    }
    // Each request is bounded by REQUEST_TIMEOUT; the outer bound is a safety net.
    let drain = tokio::time::timeout(REQUEST_TIMEOUT * 2, async {
        while let Some(done) = inflight.join_next().await {
            outcomes.push(done.unwrap_or_else(|e| Outcome {
                at: start.elapsed(),
                took: Duration::ZERO,
                error: Some(format!("request task failed: {e}")),
            }));
        }
    })
    .await;
    if drain.is_err() {
        let left = inflight.len();
        inflight.abort_all();
        for _ in 0..left {
            outcomes.push(Outcome {
                at: start.elapsed(),
                took: REQUEST_TIMEOUT * 2,
                error: Some("request never ended".into()),
            });
        }
    }
    summarize(outcomes, start.elapsed())
}

fn summarize(mut outcomes: Vec<Outcome>, ran: Duration) -> Report {
    outcomes.sort_by_key(|o| o.at);
    let mut r = Report {
        ran,
        ..Report::default()
    };
    for o in &outcomes {
        match &o.error {
            None => r.ok += 1,
            Some(e) => {
                r.failed += 1;
                if r.first_failure.is_none() {
                    r.first_failure = Some(o.at + o.took);
                }
                if r.errors.len() < KEEP_ERRORS {
                    let e: String = e.chars().take(200).collect();
                    r.errors.push(format!("at {:?}: {e}", o.at));
                }
            }
        }
    }
    let mut lat: Vec<Duration> = outcomes.iter().map(|o| o.took).collect();
    lat.sort();
    let pct = |p: usize| -> Duration {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        let i = (lat.len() * p).div_ceil(100).saturating_sub(1);
        lat[i.min(lat.len() - 1)]
    };
    r.p50 = pct(50);
    r.p99 = pct(99);
    r.max = lat.last().copied().unwrap_or_default();
    r
}

fn prepare(probe: Probe) -> Result<Ready> {
    Ok(match probe {
        Probe::Echo(a) => Ready::Echo(a),
        Probe::HttpHost { addr, host, body } => Ready::HttpHost { addr, host, body },
        Probe::Https {
            addr,
            host,
            ca,
            body,
        } => {
            let cfg = tunneld_core::tls::client_config(
                &tunneld_core::tls::ClientTrust::CaFile(ca),
                None,
                &[b"http/1.1"],
            )
            .map_err(|e| anyhow!("tls config: {e}"))?;
            Ready::Https {
                addr,
                host,
                connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
                body,
            }
        }
    })
}

async fn once(probe: &Ready, seq: u64) -> Result<()> {
    match probe {
        Ready::Echo(addr) => {
            let mut s = TcpStream::connect(addr).await.context("connect")?;
            let data = crate::pattern(16, seq);
            s.write_all(&data).await.context("write")?;
            let mut back = [0u8; 16];
            s.read_exact(&mut back).await.context("read echo")?;
            if back[..] != data[..] {
                bail!("echo differs");
            }
            Ok(())
        }
        Ready::HttpHost { addr, host, body } => {
            let s = TcpStream::connect(addr).await.context("connect")?;
            get(s, host, *body).await
        }
        Ready::Https {
            addr,
            host,
            connector,
            body,
        } => {
            let tcp = TcpStream::connect(addr).await.context("connect")?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| anyhow!("server name {host}: {e}"))?;
            let tls = connector.connect(name, tcp).await.context("tls")?;
            let authority = format!("{host}:{}", addr.port());
            get(tls, &authority, *body).await
        }
    }
}

/// `GET /` with `Host: host` and `Connection: close`; checks for 200 and the body length.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    want_body: Option<usize>,
) -> Result<()> {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.context("write request")?;
    s.flush().await.context("flush")?;
    let (status, body) = read_response(&mut s).await?;
    if status != 200 {
        bail!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    if let Some(n) = want_body {
        if body.len() != n {
            bail!("body of {} bytes, want {n}", body.len());
        }
    }
    Ok(())
}

/// Reads one HTTP/1.1 response: (status, body). Body by Content-Length, chunked, or until
/// the peer closes.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 << 10];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            bail!("response head over 1 MiB");
        }
        let n = read_some(s, &mut chunk).await.context("read head")?;
        if n == 0 {
            bail!(
                "closed before the response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf[..buf.len().min(120)])
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {:?}", head.lines().next()))?;
    let mut length = None;
    let mut chunked = false;
    for line in head.lines().skip(1) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = Some(v.trim().parse::<usize>().context("content-length")?);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut rest = buf.split_off(head_end);
    if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                let n = read_some(s, &mut chunk).await.context("read chunk size")?;
                if n == 0 {
                    bail!("closed inside a chunked body after {} bytes", body.len());
                }
                rest.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                return Ok((status, body));
            }
            if body.len() + size > MAX_ANSWER {
                bail!("body over {MAX_ANSWER} bytes");
            }
            while rest.len() < size + 2 {
                let n = read_some(s, &mut chunk).await.context("read chunk")?;
                if n == 0 {
                    bail!("closed inside a chunk after {} body bytes", body.len());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
    }
    if let Some(len) = length {
        if len > MAX_ANSWER {
            bail!("Content-Length {len} over {MAX_ANSWER}");
        }
        while rest.len() < len {
            let n = read_some(s, &mut chunk).await.context("read body")?;
            if n == 0 {
                bail!("closed after {} of {len} body bytes", rest.len());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        return Ok((status, rest));
    }
    loop {
        let n = read_some(s, &mut chunk).await.context("read body")?;
        if n == 0 {
            return Ok((status, rest));
        }
        rest.extend_from_slice(&chunk[..n]);
        if rest.len() > MAX_ANSWER {
            bail!("body over {MAX_ANSWER} bytes");
        }
    }
}

/// A read where a TLS peer closing without close_notify counts as the end.
pub async fn read_some<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    match s.read(buf).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
