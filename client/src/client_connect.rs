//! tunnelc over the `connect` transport: for each rendezvous id, keep `parked` connections
//! waiting at tunneld; when a visitor takes one, hand it to the local service and park the
//! next at once. Errors back off with jitter and move that connection on to the next of
//! `server` and `servers` (round robin); refusals that retrying cannot fix end tunnelc.

use crate::client::{tls_client, ClientEvent};
use crate::config::client::ClientConfig;
use crate::rotation::ServerRotation;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_core::splice::{splice, SpliceCounters};
use tunneld_core::totp;
use tunneld_transport_connect::{park, ParkOptions};

/// Hands out TOTP codes, each at most once: the current step's, then the next one's, then
/// waits for time to move on (tunneld accepts a code once, within one step either side).
struct CodeSource {
    secret: Vec<u8>,
    step: u64,
    last: tokio::sync::Mutex<Option<u64>>,
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl CodeSource {
    async fn next(&self) -> String {
        let mut last = self.last.lock().await;
        loop {
            let now = totp::counter_at((unix_millis() / 1000) as u64, self.step);
            let candidate = last.map_or(now, |l| (l + 1).max(now));
            if candidate <= now + 1 {
                *last = Some(candidate);
                return totp::code(&self.secret, candidate);
            }
            // Usable once step `candidate - 1` begins.
            let at_ms = u128::from((candidate - 1) * self.step) * 1000;
            let wait = at_ms.saturating_sub(unix_millis()) as u64;
            tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        }
    }
}

struct Worker {
    /// One per tunneld address (`server`, then `servers`), tried round robin.
    targets: Arc<Vec<ParkOptions>>,
    id: String,
    local: String,
    codes: Option<Arc<CodeSource>>,
    announced: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<ClientEvent>,
    fatal: mpsc::Sender<anyhow::Error>,
    stop: CancellationToken,
    timeout: Duration,
    reconnect: (Duration, Duration),
}

pub async fn run(
    cfg: ClientConfig,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let targets = cfg
        .server_list()
        .into_iter()
        .map(|server| {
            let (tls, server_name) =
                tls_client(&cfg.for_server(&server), &[tunneld_transport_connect::ALPN])?;
            Ok(ParkOptions {
                server,
                server_name,
                tls,
                token: cfg.token.as_ref().map(|t| t.0.clone()),
                timeout: cfg.connect_timeout,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let with_token = Arc::new(targets);
    let (fatal_tx, mut fatal_rx) = mpsc::channel(1);
    let workers = CancellationToken::new();
    for (id, r) in &cfg.rendezvous {
        // An id with its own secret parks with codes, whether or not a token is set (the id
        // need not belong to the token's client); the others park with the token.
        let codes = match &r.secret {
            Some(s) => Some(Arc::new(CodeSource {
                secret: totp::decode_secret(&s.0)
                    .map_err(|e| anyhow::anyhow!("rendezvous.{id}.secret: {e}"))?,
                step: r.step,
                last: tokio::sync::Mutex::new(None),
            })),
            None => None,
        };
        let targets = match codes {
            Some(_) => Arc::new(
                with_token
                    .iter()
                    .map(|o| ParkOptions {
                        token: None,
                        ..o.clone()
                    })
                    .collect(),
            ),
            None => with_token.clone(),
        };
        let announced = Arc::new(AtomicBool::new(false));
        for _ in 0..r.parked {
            let w = Worker {
                targets: targets.clone(),
                id: id.clone(),
                local: r.local.clone(),
                codes: codes.clone(),
                announced: announced.clone(),
                events: events.clone(),
                fatal: fatal_tx.clone(),
                stop: workers.clone(),
                timeout: cfg.connect_timeout,
                reconnect: (cfg.reconnect.initial, cfg.reconnect.max),
            };
            tokio::spawn(w.run());
        }
    }
    drop(fatal_tx);
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        Some(e) = fatal_rx.recv() => Err(e),
    };
    workers.cancel();
    result
}

impl Worker {
    async fn run(self) {
        let mut rotation =
            ServerRotation::new(self.targets.len(), self.reconnect.0, self.reconnect.1);
        // The server this connection last parked at, logged when it changes.
        let mut parked_at: Option<usize> = None;
        loop {
            let current = rotation.current();
            let opts = &self.targets[current];
            let code = match &self.codes {
                Some(c) => tokio::select! {
                    _ = self.stop.cancelled() => return,
                    c = c.next() => Some(c),
                },
                None => None,
            };
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = park(opts, &self.id, code.as_deref()) => r,
            };
            let parked = match attempt {
                Ok(p) => p,
                Err(e) => {
                    if e.is_permanent(opts.token.is_some()) {
                        let _ = self
                            .fatal
                            .try_send(anyhow::anyhow!("rendezvous {}: {e}", self.id));
                        return;
                    }
                    // A 503 means more connections are wanted than tunneld keeps per id (or
                    // old ones of this host are not reaped yet): wait the longest backoff
                    // instead of evicting siblings (at the same server). Any other error moves
                    // on to the next server.
                    let full = matches!(
                        e,
                        tunneld_transport_connect::ParkError::Refused { status: 503, .. }
                    );
                    let wait = if full {
                        self.reconnect.1
                    } else {
                        rotation.next_after_failure().1
                    };
                    tracing::warn!(id = %self.id, server = %opts.server, retry_in = ?wait, "cannot park: {e}");
                    let _ = self.events.send(ClientEvent::Disconnected {
                        reason: format!("rendezvous {}: {e}", self.id),
                        retry_in: wait,
                    });
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            if self.targets.len() > 1 && parked_at != Some(current) {
                tracing::info!(id = %self.id, server = %opts.server, "parked");
                parked_at = Some(current);
            }
            if !self.announced.swap(true, Ordering::Relaxed) {
                let _ = self.events.send(ClientEvent::Parked {
                    id: self.id.clone(),
                });
            }
            let since = Instant::now();
            let mut stream = parked.stream;
            let mut first = parked.surplus;
            if first.is_empty() {
                // The visitor's first bytes, straight from TLS's own buffer: a read buffer of
                // ours would be held by every parked connection while it waits (16 KiB each
                // before, docs/benchmarks.md, "Buffers off the connection tasks").
                let read = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = stream.fill_buf() => r.map(<[u8]>::to_vec),
                };
                match read {
                    Ok(b) if !b.is_empty() => {
                        stream.consume(b.len());
                        first = b;
                    }
                    _ => {
                        // tunneld closed it (shutdown, or a newer connection evicted it). Soon
                        // after parking: a failure of this server, so the next one, after a wait.
                        if since.elapsed() < Duration::from_secs(1) {
                            let wait = rotation.next_after_failure().1;
                            tokio::select! {
                                _ = self.stop.cancelled() => return,
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                        continue;
                    }
                }
            }
            rotation.succeeded();
            let (local, timeout, id) = (self.local.clone(), self.timeout, self.id.clone());
            // Boxed before the task takes it: a value the task captures keeps its room in the
            // task for the task's life, even once moved out (1.1 KiB a visitor).
            let visitor: tunneld_core::io::BoxIo = Box::new(stream);
            tokio::spawn(async move {
                serve_visitor(visitor, first, &local, timeout, &id).await;
            });
        }
    }
}

/// Connects the visitor (already holding its first bytes) to the local service.
async fn serve_visitor(
    mut visitor: tunneld_core::io::BoxIo,
    first: Vec<u8>,
    local: &str,
    timeout: Duration,
    id: &str,
) {
    // Boxed, only while it runs: inline, it would size this visitor's task for its life.
    let connecting = Box::pin(tokio::time::timeout(timeout, TcpStream::connect(local)));
    let mut service = match connecting.await {
        Ok(Ok(s)) => s,
        failed => {
            let detail = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::warn!(%id, %local, "local service unreachable: {detail}");
            // The visitor is a stranger: the local address and the OS error stay in the log.
            let body = "the hidden service is not reachable\n";
            let answer = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = visitor.write_all(answer.as_bytes()).await;
            let _ = visitor.shutdown().await;
            return;
        }
    };
    let _ = service.set_nodelay(true);
    if service.write_all(&first).await.is_err() {
        return;
    }
    // Not held while the visitor is spliced.
    drop(first);
    if let Err(e) = splice(&mut visitor, &mut service, SpliceCounters::default()).await {
        tracing::debug!(%id, error = %e, "rendezvous visitor ended with an error");
    }
}
