//! Isolation between the tunnels of one client: an attack on one tunnel (oversized heads,
//! visitors that never read, cancelled HTTP/2 streams) must neither end the client's session
//! nor slow down its other tunnels. Each test runs one tunneld and one tunnelc (client
//! `alice`) holding a victim tunnel and a neighbour tunnel, attacks the victim for 10 s and
//! measures the neighbour with [`Neighbour`] the whole time.

use anyhow::{ensure, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tunneld_integration_tests::attack::{
    self, healthy, http_tunnel, http_tunnels, server, tagged, tcp_tunnel, verdict, SessionMark,
    Via, ATTACK, NB_BODY,
};
use tunneld_integration_tests::h2raw::{self, frame};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::services;
use tunneld_integration_tests::{endpoint_of, TestServer};

/// The tests of this file run one at a time: each measures latency, and two 10 s attacks on
/// the same 2 cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of one attacking visitor's own wait for an answer.
const VISITOR_WAIT: Duration = Duration::from_secs(10);
/// The https frontend's default `limits.max_request_head`.
const MAX_HEAD: usize = 65536;
/// RST_STREAM error code CANCEL.
const CANCEL: u32 = 8;

/// One HTTP/1.1 request over TLS to `<name>.localhost`; the answer's status. The request is
/// written by its own task while the answer is read, so a server that answers before it
/// read the whole request is seen.
async fn status_of(s: &TestServer, name: &str, request: Vec<u8>) -> Result<u16> {
    let tcp = TcpStream::connect(s.web()).await.context("connect web")?;
    let tls = attack::tls_to(s, &format!("{name}.localhost"), b"http/1.1", tcp).await?;
    attack::status_code(&attack::status_line(tls, request, VISITOR_WAIT).await?)
}

/// `GET /` for `<name>.localhost` with one `X-Big` header of `size` bytes of value.
fn big_get(s: &TestServer, name: &str, size: usize) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {name}.localhost:{}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        s.web().port(),
        "a".repeat(size)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431_and_spares_the_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = server(false, &[]).await?;
    let victim = services::http().await;
    let neighbour = services::http_body(4096).await;
    let bighead = services::big_response_head().await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour), ("bighead", bighead)]);
    let (mut alice, _) = attack::alice(&s, Via::H2Reverse, &tunnels).await?;

    // Anything below the limit crosses the link.
    let below = status_of(&s, "victim", big_get(&s, "victim", 60_000)).await;
    ensure!(
        matches!(below, Ok(200)),
        "a 60,000-byte header below the {MAX_HEAD}-byte limit: {below:?}"
    );

    let mark = SessionMark::take(&s, Via::H2Reverse).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(4096)));
    let end = Instant::now() + ATTACK;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut visitors: JoinSet<(&'static str, Result<u16>)> = JoinSet::new();
    let s = Arc::new(s);
    for _ in 0..100 {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let (s1, s2) = (s.clone(), s.clone());
        visitors.spawn(async move {
            let req = big_get(&s1, "victim", 300_000);
            ("request", status_of(&s1, "victim", req).await)
        });
        visitors.spawn(async move {
            let req = big_get(&s2, "bighead", 0);
            ("response", status_of(&s2, "bighead", req).await)
        });
    }
    let report = probe.finish().await;
    let mut request_heads = Vec::new();
    let mut response_heads = Vec::new();
    while let Some(done) = visitors.join_next().await {
        let (kind, status) = done.context("visitor task")?;
        let status = status.map_err(|e| format!("{e:#}"));
        if kind == "request" {
            request_heads.push(status);
        } else {
            response_heads.push(status);
        }
    }
    let mut problems = Vec::new();
    healthy(
        &report,
        "neighbour http tunnel (same session) during oversized heads",
        &mut problems,
    );
    let summary = |v: &[std::result::Result<u16, String>]| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for r in v {
            let k = match r {
                Ok(c) => c.to_string(),
                Err(e) => format!("error: {e}"),
            };
            *counts.entry(k).or_default() += 1;
        }
        counts
    };
    if request_heads.is_empty() || request_heads.iter().any(|r| r != &Ok(431)) {
        problems.push(format!(
            "visitors with a 300,000-byte request header: want only 431, got {:?}",
            summary(&request_heads)
        ));
    }
    if response_heads.is_empty() || response_heads.iter().any(|r| r != &Ok(502)) {
        problems.push(format!(
            "visitors of a service answering with a 300,000-byte header: want only 502, got {:?}",
            summary(&response_heads)
        ));
    }
    let after = status_of(&s, "victim", big_get(&s, "victim", 60_000)).await;
    if !matches!(after, Ok(200)) {
        problems.push(format!(
            "after the attack, a 60,000-byte header to the victim: {after:?}"
        ));
    }
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!("neighbour: {report}");
    alice.shutdown().await.ok();
    verdict(problems)
}

/// A TCP connection for a visitor that never reads, with a small receive buffer, so the
/// visitor's own kernel buffer does not soak up MiBs before the stall reaches tunneld
/// (each stalled visitor still takes a few MiB through the tunnel: tunneld's send buffer).
async fn stalled_tcp(addr: SocketAddr) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(32 << 10)?;
    socket.connect(addr).await.context("connect")
}

/// A visitor that sends `GET /` over TLS to `<name>.localhost` and never reads.
async fn stalled_https_visitor(
    s: &TestServer,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = stalled_tcp(s.web()).await?;
    let mut tls = attack::tls_to(s, &format!("{name}.localhost"), b"http/1.1", tcp).await?;
    let req = format!(
        "GET /big HTTP/1.1\r\nHost: {name}.localhost:{}\r\n\r\n",
        s.web().port()
    );
    tls.write_all(req.as_bytes()).await?;
    tls.flush().await?;
    Ok(tls)
}

/// Stalled visitors of a victim, each opened by `open`: 6 at once, 24 more half-way through
/// the attack; then waits for the attack's end. The visitors, and the errors of those that
/// did not open.
async fn stall<T, F, Fut>(mut open: F) -> (Vec<T>, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut stalled = Vec::new();
    let mut open_errors = Vec::new();
    for i in 0..30 {
        if i == 6 {
            tokio::time::sleep_until(start + ATTACK / 2).await;
        }
        match open().await {
            Ok(v) => stalled.push(v),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    tokio::time::sleep_until(start + ATTACK).await;
    (stalled, open_errors)
}

/// Problems of the stalled-visitor attack itself: visitors that did not open, or a victim
/// service that wrote less than 6 blocks (the visitors never stalled it).
fn stall_problems(open_errors: &[String], wrote: u64, problems: &mut Vec<String>) {
    if !open_errors.is_empty() {
        problems.push(format!("stalled visitors not opened: {open_errors:?}"));
    }
    if wrote < 6 * (64 << 10) {
        problems.push(format!(
            "the attack never engaged: the victim service wrote only {wrote} bytes"
        ));
    }
}

/// 6 visitors of a 64 MiB download that never read, then 30; the neighbour http tunnel must
/// keep serving its whole 256 KiB body.
async fn stalled_http_visitors(via: Via) -> Result<()> {
    let s = server(false, &[]).await?;
    let (victim, written) = services::http_stream(64 << 20).await;
    let neighbour = services::http_body(NB_BODY).await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour)]);
    let (mut alice, _) = attack::alice(&s, via, &tunnels).await?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(NB_BODY)));
    let (stalled, open_errors) = stall(|| stalled_https_visitor(&s, "victim")).await;
    let report = probe.finish().await;
    let wrote = written.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    healthy(
        &report,
        &format!("neighbour http tunnel over {via:?} with 30 stalled visitors"),
        &mut problems,
    );
    stall_problems(&open_errors, wrote, &mut problems);
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?}: neighbour {report}; victim service wrote {wrote} bytes to {} stalled visitors",
        stalled.len()
    );
    drop(stalled);
    alice.shutdown().await.ok();
    verdict(problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_neighbours() -> Result<()> {
    let _serial = SERIAL.lock().await;
    stalled_http_visitors(Via::H2Reverse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_that_never_read_do_not_freeze_neighbours_over_yamux() -> Result<()> {
    let _serial = SERIAL.lock().await;
    stalled_http_visitors(Via::Yamux).await
}

/// A ports tunnel to a service that streams without end, 6 then 30 raw TCP visitors that
/// never read; neighbours: a tcp echo tunnel, and on websocket also an http tunnel reached on
/// the websocket port by Host. Answers the problems found, prefixed with the transport.
async fn stalled_tcp_visitors(via: Via) -> Result<Vec<String>> {
    let s = server(via == Via::Websocket, &[]).await?;
    let (victim, written) = services::endless().await;
    let echo = services::echo().await;
    let mut tunnels = format!("{}{}", tcp_tunnel("victim", victim), tcp_tunnel("nb", echo));
    let web = services::http_body(NB_BODY).await;
    if via == Via::Websocket {
        tunnels.push_str(&http_tunnel("web", web));
    }
    let (mut alice, got) = attack::alice(&s, via, &tunnels).await?;
    let victim_ep = endpoint_of(&got, "victim")?;
    let nb_ep = endpoint_of(&got, "nb")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::Echo(nb_ep));
    let by_host = (via == Via::Websocket).then(|| {
        let port = attack::ws_port(&s);
        Neighbour::start(Probe::HttpHost {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: format!("web.localhost:{port}"),
            body: Some(NB_BODY),
        })
    });
    let (stalled, open_errors) = stall(|| stalled_tcp(victim_ep)).await;
    let report = probe.finish().await;
    let web_report = match by_host {
        Some(n) => Some(n.finish().await),
        None => None,
    };
    let wrote = written.load(Ordering::Relaxed);
    let relayed = s.metrics().await.get(
        "tunneld_bytes_total",
        &[("frontend", "tcp"), ("direction", "out")],
    );
    let mut problems = Vec::new();
    healthy(
        &report,
        &format!("neighbour tcp echo tunnel over {via:?} with 30 stalled visitors"),
        &mut problems,
    );
    if let Some(r) = &web_report {
        healthy(
            r,
            "neighbour http tunnel on the websocket port with 30 stalled visitors",
            &mut problems,
        );
    }
    stall_problems(&open_errors, wrote, &mut problems);
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?} ports: echo neighbour {report}; http neighbour {}; victim service wrote {wrote} bytes to {} stalled visitors; tunneld relayed {relayed} bytes to visitors",
        web_report.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        stalled.len()
    );
    drop(stalled);
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_visitors_that_never_read_do_not_freeze_neighbours() -> Result<()> {
    let _serial = SERIAL.lock().await;
    verdict(stalled_tcp_visitors(Via::H2Reverse).await?)
}

/// The ports shape of the stalled-visitor test over yamux, then over the websocket transport
/// (each with its own tunneld; one after the other, so neither measures the other's load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_visitors_on_yamux_and_websocket() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut problems = stalled_tcp_visitors(Via::Yamux).await?;
    problems.extend(stalled_tcp_visitors(Via::Websocket).await?);
    verdict(problems)
}

/// What one cancelling visitor did.
#[derive(Debug, Default)]
struct CancelStats {
    connections: u32,
    streams: u32,
    goaways: u32,
    connect_errors: u32,
}

/// Until `deadline`: HTTP/2 connections to `host`, each carrying batches of 100 streams
/// cancelled 2 ms after their `HEADERS` with `RST_STREAM(CANCEL)`, alternately one stream at
/// a time and all 100 at once; a new connection when tunneld ends one.
async fn cancelling_visitor(
    web: SocketAddr,
    ca: std::path::PathBuf,
    host: String,
    deadline: Instant,
) -> Result<CancelStats> {
    let connector = attack::tls_connector(ca, b"h2")?;
    let block = h2raw::get_block(&format!("{host}:{}", web.port()));
    let mut stats = CancelStats::default();
    while Instant::now() < deadline && stats.connections < 500 {
        stats.connections += 1;
        let tls = async {
            let tcp = TcpStream::connect(web).await?;
            attack::tls_over(&connector, &host, tcp).await
        };
        let tls = match tokio::time::timeout(Duration::from_secs(2), tls).await {
            Ok(Ok(t)) => t,
            _ => {
                stats.connect_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (mut r, mut w) = tokio::io::split(tls);
        let ended = CancellationToken::new();
        let reader = tokio::spawn({
            let ended = ended.clone();
            async move {
                let mut goaway = false;
                while let Ok(Ok((kind, _, _, _))) =
                    tokio::time::timeout(Duration::from_secs(15), h2raw::read_frame(&mut r)).await
                {
                    if kind == h2raw::GOAWAY {
                        goaway = true;
                        break;
                    }
                }
                ended.cancel();
                goaway
            }
        });
        let mut start = h2raw::PREFACE.to_vec();
        start.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
        let mut id = 1u32;
        if w.write_all(&start).await.is_ok() {
            let mut batch = 0u32;
            'conn: while !ended.is_cancelled() && Instant::now() < deadline && id < 20_000 {
                batch += 1;
                if batch.is_multiple_of(2) {
                    // A burst: 100 HEADERS at once, 2 ms later their 100 RST_STREAMs.
                    let (mut heads, mut rsts) = (Vec::new(), Vec::new());
                    for k in 0..100 {
                        let sid = id + 2 * k;
                        heads.extend(frame(
                            h2raw::HEADERS,
                            h2raw::END_HEADERS | h2raw::END_STREAM,
                            sid,
                            &block,
                        ));
                        rsts.extend(frame(h2raw::RST_STREAM, 0, sid, &CANCEL.to_be_bytes()));
                    }
                    if w.write_all(&heads).await.is_err() {
                        break 'conn;
                    }
                    stats.streams += 100;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if w.write_all(&rsts).await.is_err() {
                        break 'conn;
                    }
                    id += 200;
                    continue;
                }
                // One by one: HEADERS, 2 ms later its RST_STREAM, 100 times.
                for _ in 0..100 {
                    let headers = frame(
                        h2raw::HEADERS,
                        h2raw::END_HEADERS | h2raw::END_STREAM,
                        id,
                        &block,
                    );
                    if w.write_all(&headers).await.is_err() {
                        break 'conn;
                    }
                    stats.streams += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let rst = frame(h2raw::RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                    if w.write_all(&rst).await.is_err() {
                        break 'conn;
                    }
                    id += 2;
                    if ended.is_cancelled() {
                        break 'conn;
                    }
                }
            }
        }
        drop(w);
        reader.abort();
        if let Ok(true) = reader.await {
            stats.goaways += 1;
        }
    }
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streams_do_not_end_the_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = server(false, &[]).await?;
    let victim = services::slow_http(Duration::from_millis(500)).await;
    let neighbour = services::http_body(4096).await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour)]);
    let (mut alice, _) = attack::alice(&s, Via::H2Reverse, &tunnels).await?;
    let mark = SessionMark::take(&s, Via::H2Reverse).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(4096)));
    let deadline = Instant::now() + ATTACK;
    let mut visitors = JoinSet::new();
    for _ in 0..3 {
        visitors.spawn(cancelling_visitor(
            s.web(),
            s.ca_file(),
            "victim.localhost".into(),
            deadline,
        ));
    }
    let mut stats = Vec::new();
    while let Some(done) = visitors.join_next().await {
        stats.push(done.context("visitor task")??);
    }
    let report = probe.finish().await;
    let mut problems = Vec::new();
    healthy(
        &report,
        "neighbour http tunnel (same session) during cancelled streams",
        &mut problems,
    );
    if stats.iter().map(|s| s.streams).sum::<u32>() < 300 {
        problems.push(format!("the attack never engaged: {stats:?}"));
    }
    problems.extend(mark.problems(&s, &mut alice).await?);
    // The victim itself still answers.
    let after = status_of(
        &s,
        "victim",
        format!(
            "GET / HTTP/1.1\r\nHost: victim.localhost:{}\r\nConnection: close\r\n\r\n",
            s.web().port()
        )
        .into_bytes(),
    )
    .await;
    if !matches!(after, Ok(200)) {
        problems.push(format!("after the attack, the victim answered {after:?}"));
    }
    eprintln!("neighbour: {report}; visitors: {stats:?}");
    alice.shutdown().await.ok();
    verdict(problems)
}

/// curl (a real HTTP/2 client) runs 100 parallel downloads from the victim and gives up after
/// a fraction of a second, again and again for the attack's length: every stream is
/// cancelled while tunnelc's DATA for it is in flight. tunneld must forget those streams
/// quietly: h2's guard against peers that provoke resets (`locally-reset streams reached
/// limit`) ended the whole link before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_downloads_do_not_end_the_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = server(false, &[]).await?;
    let (victim, written) = services::download(100 << 20).await;
    let neighbour = services::http_body(4096).await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour)]);
    let (mut alice, _) = attack::alice(&s, Via::H2Reverse, &tunnels).await?;
    let mark = SessionMark::take(&s, Via::H2Reverse).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(4096)));
    let url = format!("https://victim.localhost:{}/big", s.web().port());
    let ca = s.ca_file().display().to_string();
    let deadline = Instant::now() + ATTACK;
    let mut rounds = 0u32;
    while Instant::now() < deadline && rounds < 40 {
        rounds += 1;
        let give_up = format!("0.{}", 3 + rounds % 5);
        let mut args: Vec<&str> = vec![
            "-s",
            "--http2",
            "--parallel",
            "--parallel-max",
            "100",
            "-m",
            &give_up,
            "--cacert",
            &ca,
            // Each transfer reads slowly, so every stream has DATA in flight when curl gives
            // up, while curl's own decryption leaves the CPU to the neighbour's measurement.
            "--limit-rate",
            "256k",
            "-o",
            "/dev/null",
        ];
        args.extend(std::iter::repeat_n(url.as_str(), 100));
        // curl exits non-zero (28, timed out): that is the attack.
        let _ = tunneld_integration_tests::process::curl(&args).await?;
    }
    let report = probe.finish().await;
    let mut problems = Vec::new();
    healthy(
        &report,
        "neighbour http tunnel (same session) during cancelled downloads",
        &mut problems,
    );
    if written.load(Ordering::Relaxed) < 8 << 20 {
        problems.push(format!(
            "the attack never engaged: {} bytes served in {rounds} rounds",
            written.load(Ordering::Relaxed)
        ));
    }
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!("neighbour: {report}; curl rounds: {rounds}");
    alice.shutdown().await.ok();
    verdict(problems)
}
