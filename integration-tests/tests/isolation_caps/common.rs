//! What the isolation-cap tests share: the turn they take (`SERIAL`), visitors from a
//! chosen source address, idle connections held open, and metric waits.

pub(crate) use anyhow::{anyhow, bail, ensure, Context, Result};
pub(crate) use std::net::{IpAddr, SocketAddr};
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tokio::net::TcpStream;
pub(crate) use tokio::sync::mpsc;
pub(crate) use tokio::task::JoinSet;
pub(crate) use tokio::time::Instant;
pub(crate) use tokio_util::sync::CancellationToken;
pub(crate) use tunneld_client::client::ClientEvent;
pub(crate) use tunneld_integration_tests::attack::{
    self, assert_no_reconnect, echo_on, http_tunnel, http_tunnels, note, server, status_line,
    tagged, tcp_tunnel, verdict, SessionCount, Via, ATTACK, NB_BODY, WS_KEY,
};
pub(crate) use tunneld_integration_tests::h2raw::{self, frame};
pub(crate) use tunneld_integration_tests::metrics::Samples;
pub(crate) use tunneld_integration_tests::neighbour::{Neighbour, Probe};
pub(crate) use tunneld_integration_tests::process::Proc;
pub(crate) use tunneld_integration_tests::{
    endpoint_of, port_block, server_yaml, services, temp_dir, TestClient, TestServer, WAIT,
    WEB_FRONTEND,
};

/// One test of this file at a time.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of one visitor's own round trip.
pub(crate) const VISITOR_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A TCP connection to `addr` from `source` (any address of 127.0.0.0/8) or from the default.
pub(crate) async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    tokio::time::timeout(VISITOR_WAIT, socket.connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))
}

/// One echo round trip of 16 bytes on a new connection, within [`VISITOR_WAIT`].
pub(crate) async fn echo_round(addr: SocketAddr, source: Option<IpAddr>, seed: u64) -> Result<()> {
    let fut = async {
        let mut s = connect_from(addr, source).await?;
        echo_on(&mut s, seed).await
    };
    tokio::time::timeout(VISITOR_WAIT, fut)
        .await
        .map_err(|_| anyhow!("no echo within {VISITOR_WAIT:?}"))?
}

/// TLS from `source` to the `web` listener with SNI `sni` and one ALPN id, trusting
/// tunneld's CA.
pub(crate) async fn tls_from(
    s: &TestServer,
    sni: &str,
    alpn: &[u8],
    source: Option<IpAddr>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(s.web(), source).await.context("connect web")?;
    attack::tls_to(s, sni, alpn, tcp).await
}

/// A visitor that sends nothing must be closed by tunneld without a byte of data.
pub(crate) async fn refused_visitor(addr: SocketAddr, source: Option<IpAddr>) -> Result<()> {
    let mut s = connect_from(addr, source).await?;
    let mut b = [0u8; 64];
    match tokio::time::timeout(VISITOR_WAIT, s.read(&mut b)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(Ok(n)) => bail!("got {n} bytes instead of a close"),
        Ok(Err(e)) => bail!("read: {e}"),
        Err(_) => bail!("still open after {VISITOR_WAIT:?}: not refused"),
    }
}

/// Connections that never send a byte; each reports once when tunneld closes it.
pub(crate) struct Idle {
    pub(crate) writers: Vec<tokio::net::tcp::OwnedWriteHalf>,
    pub(crate) readers: JoinSet<()>,
    pub(crate) closed: mpsc::UnboundedReceiver<std::result::Result<(), String>>,
}

impl Idle {
    pub(crate) async fn open(addr: SocketAddr, n: usize, source: Option<IpAddr>) -> Result<Idle> {
        let (tx, closed) = mpsc::unbounded_channel();
        let mut idle = Idle {
            writers: Vec::with_capacity(n),
            readers: JoinSet::new(),
            closed,
        };
        for i in 0..n {
            let s = connect_from(addr, source)
                .await
                .with_context(|| format!("idle connection {i}"))?;
            let (mut r, w) = s.into_split();
            idle.writers.push(w);
            let tx = tx.clone();
            idle.readers.spawn(async move {
                let mut b = [0u8; 64];
                let outcome = match r.read(&mut b).await {
                    Ok(0) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                    Ok(n) => Err(format!("an idle visitor got {n} bytes")),
                    Err(e) => Err(format!("an idle visitor's read failed: {e}")),
                };
                let _ = tx.send(outcome);
            });
        }
        Ok(idle)
    }

    /// Waits until `want` of the connections were closed without data.
    pub(crate) async fn wait_closed(&mut self, want: usize) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        let mut got = 0;
        while got < want {
            match tokio::time::timeout_at(deadline, self.closed.recv()).await {
                Ok(Some(Ok(()))) => got += 1,
                Ok(Some(Err(e))) => bail!("{e}"),
                Ok(None) => bail!("reader tasks ended"),
                Err(_) => bail!("only {got} of the {want} refused idle visitors were closed"),
            }
        }
        Ok(())
    }

    /// Closes every connection.
    pub(crate) async fn close(mut self) {
        self.readers.shutdown().await;
        drop(self.writers);
    }
}

/// Polls a metric (every 20 ms, within [`WAIT`]) until it equals `want`.
pub(crate) async fn metric_reaches(
    s: &TestServer,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Result<()> {
    let v = s
        .metrics_until(|m| m.get(name, labels) == want)
        .await
        .get(name, labels);
    if v != want {
        bail!("{name}{labels:?} is {v}, want {want}");
    }
    Ok(())
}

/// Echo round trips until one succeeds (streams are given back as their visitors' closes
/// travel through the tunnel), within [`WAIT`]; the attempts it took.
pub(crate) async fn serves_again(addr: SocketAddr, source: Option<IpAddr>) -> Result<u32> {
    let deadline = Instant::now() + WAIT;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match echo_round(addr, source, 1000 + u64::from(attempts)).await {
            Ok(()) => return Ok(attempts),
            Err(e) if Instant::now() > deadline => {
                bail!("still refused after {attempts} attempts: {e:#}")
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// A tunneld (yamux) with the stream cap `limit` (a `--set`), and alice with tcp tunnels `a`
/// and `b` to echo services: the server, alice, and the endpoints of `a` and `b`.
pub(crate) async fn echo_pair(
    limit: &str,
) -> Result<(TestServer, TestClient, SocketAddr, SocketAddr)> {
    let s = TestServer::start_full("", &[limit.into()]).await?;
    let (a_local, b_local) = (services::echo().await, services::echo().await);
    let tunnels = format!("{}{}", tcp_tunnel("a", a_local), tcp_tunnel("b", b_local));
    let (alice, got) = attack::alice(&s, Via::Yamux, &tunnels).await?;
    Ok((s, alice, endpoint_of(&got, "a")?, endpoint_of(&got, "b")?))
}

/// `tunneld_streams_refused_total` is `want` for `reason` and 0 for `other`.
pub(crate) fn assert_refused(m: &Samples, reason: &str, want: f64, other: &str) -> Result<()> {
    let refused = m.get("tunneld_streams_refused_total", &[("reason", reason)]);
    ensure!(
        refused == want,
        "tunneld_streams_refused_total{{reason={reason}}} = {refused}, want {want}"
    );
    let n = m.get("tunneld_streams_refused_total", &[("reason", other)]);
    ensure!(n == 0.0, "{other} refusals: {n}");
    Ok(())
}

/// Once the silent visitors leave: tunnel `a` serves `who` (visitors from `source`) again,
/// every stream is given back, one more round trip to `last` (address, seed) passes, and
/// tunnelc kept its session.
pub(crate) async fn serves_after_idle(
    s: &TestServer,
    mut alice: TestClient,
    idle: Idle,
    a: SocketAddr,
    source: Option<IpAddr>,
    last: (SocketAddr, u64),
    who: &str,
) -> Result<()> {
    idle.close().await;
    let attempts = serves_again(a, source)
        .await
        .with_context(|| format!("{who} after the silent visitors left"))?;
    metric_reaches(s, "tunneld_streams_active", &[("frontend", "tcp")], 0.0)
        .await
        .context("every stream given back")?;
    echo_round(last.0, source, last.1)
        .await
        .with_context(|| format!("{who} once every stream is back"))?;
    eprintln!("{who} served again after {attempts} attempt(s)");
    assert_no_reconnect(&mut alice)?;
    alice.shutdown().await.ok();
    Ok(())
}
