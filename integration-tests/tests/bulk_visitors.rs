//! Bulk visitors: several visitors of one tunnel each pushing megabytes through it in 128 KiB
//! writes and reading them back. Over yamux each such read becomes one large frame whose
//! 12-byte header goes to TLS in the same write as the body, with small frames of other
//! streams gathered around it (`transports/yamux/src/coalesce.rs`); every byte must come back
//! in order, and a neighbour tunnel of the same client must keep its pace meanwhile. The same
//! over h2-reverse, whose HTTP/2 connection runs on the session's task. And an HTTP/2
//! visitor of the https frontend, whose streams run on its connection's task: a download on
//! one stream and a stream whose service never answers hold none of the others.

use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{
    self, healthy, server, tagged, tcp_tunnel, verdict, SessionMark, Via, ATTACK,
};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::{endpoint_of, WAIT};
use tunneld_integration_tests::{h2body, services};

/// Visitors of the bulk tunnel at once.
const BULK: usize = 4;
/// Bytes a bulk visitor sends and reads back on one connection; it opens another until the
/// attack's time is up.
const EACH: usize = 8 << 20;
/// One write of a bulk visitor (a visitor's read at tunneld is at most this).
const CHUNK: usize = 128 << 10;
/// Bound of one connection's whole round trip.
const BULK_WAIT: Duration = Duration::from_secs(60);

/// The period of a visitor's byte pattern: a prime, so no chunk or read size lines up with it
/// and a frame delivered to the wrong place in the stream shows.
const PERIOD: usize = 65_521;

/// Visitor `seed`'s pattern, one period plus a chunk: the bytes from stream offset `o` on are
/// `ring[o % PERIOD..]`. No two seeds alike, so a frame of another stream shows too.
fn ring(seed: usize) -> Vec<u8> {
    (0..PERIOD + CHUNK)
        .map(|i| {
            let i = i % PERIOD;
            (i.wrapping_mul(31) ^ (i >> 9) ^ seed.wrapping_mul(97)) as u8
        })
        .collect()
}

/// Connections of [`EACH`] bytes one after another until `until`: how many came back whole.
async fn bulk_until(addr: SocketAddr, seed: usize, until: Instant) -> Result<u64> {
    let mut rounds = 0u64;
    while Instant::now() < until {
        let seed = seed + 1000 * rounds as usize;
        match tokio::time::timeout(BULK_WAIT, bulk(addr, seed)).await {
            Ok(r) => r.with_context(|| format!("connection {rounds}"))?,
            Err(_) => anyhow::bail!("connection {rounds}: not back within {BULK_WAIT:?}"),
        }
        rounds += 1;
    }
    Ok(rounds)
}

/// Sends [`EACH`] bytes in [`CHUNK`] writes while reading the echo back and comparing it.
async fn bulk(addr: SocketAddr, seed: usize) -> Result<()> {
    let pattern = std::sync::Arc::new(ring(seed));
    let s = TcpStream::connect(addr).await.context("connect")?;
    let (mut r, mut w) = s.into_split();
    let source = pattern.clone();
    let writer = tokio::spawn(async move {
        for start in (0..EACH).step_by(CHUNK) {
            let from = start % PERIOD;
            w.write_all(&source[from..from + CHUNK]).await?;
        }
        w.shutdown().await
    });
    let mut got = vec![0u8; 64 << 10];
    let mut at = 0usize;
    while at < EACH {
        let n = r.read(&mut got).await.context("read the echo")?;
        ensure!(n > 0, "the echo ended after {at} of {EACH} bytes");
        let from = at % PERIOD;
        if got[..n] != pattern[from..from + n] {
            let k = (0..n)
                .find(|&k| got[k] != pattern[from + k])
                .unwrap_or_default();
            anyhow::bail!("the echo differs at byte {}", at + k);
        }
        at += n;
    }
    // Nothing more than was sent: the echo ends where the visitor's writes ended.
    let n = r.read(&mut got).await.context("read the echo's end")?;
    ensure!(n == 0, "{n} bytes came back beyond the {EACH} sent");
    writer.await.context("writer task")?.context("write")?;
    Ok(())
}

async fn bulk_visitors(via: Via) -> Result<Vec<String>> {
    let s = server(false, &[]).await?;
    let bulky = services::echo().await;
    let echo = services::echo().await;
    let tunnels = format!("{}{}", tcp_tunnel("bulk", bulky), tcp_tunnel("nb", echo));
    let (mut alice, got) = attack::alice(&s, via, &tunnels).await?;
    let bulk_ep = endpoint_of(&got, "bulk")?;
    let nb_ep = endpoint_of(&got, "nb")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::Echo(nb_ep));
    let until = Instant::now() + ATTACK;
    let mut visitors = JoinSet::new();
    for seed in 0..BULK {
        visitors.spawn(async move {
            bulk_until(bulk_ep, seed, until)
                .await
                .with_context(|| format!("bulk visitor {seed}"))
        });
    }
    let mut problems = Vec::new();
    let mut whole = 0u64;
    while let Some(done) = visitors.join_next().await {
        match done {
            Ok(Ok(n)) => whole += n,
            Ok(Err(e)) => problems.push(format!("{e:#}")),
            Err(e) => problems.push(format!("bulk visitor task: {e}")),
        }
    }
    if whole < BULK as u64 {
        problems.push(format!(
            "{BULK} bulk visitors brought back only {whole} connections of {} MiB in {ATTACK:?}",
            EACH >> 20
        ));
    }
    let report = probe.finish().await;
    healthy(
        &report,
        &format!("neighbour tcp echo tunnel over {via:?} with {BULK} bulk visitors"),
        &mut problems,
    );
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!(
        "{via:?}: {BULK} bulk visitors, {whole} connections of {} MiB each way; neighbour {report}",
        EACH >> 20
    );
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_visitors_over_yamux_arrive_intact_and_spare_the_neighbour() -> Result<()> {
    verdict(bulk_visitors(Via::Yamux).await?)
}

/// Over h2-reverse the link's HTTP/2 connection runs on the session's task with the relays
/// of small exchanges; bulk relays leave it, and every byte must still arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_visitors_over_h2_reverse_arrive_intact_and_spare_the_neighbour() -> Result<()> {
    verdict(bulk_visitors(Via::H2Reverse).await?)
}

/// Bytes of the HTTP/2 visitor's download.
const DOWNLOAD: usize = 64 << 20;
/// The HTTP/2 visitor asks the neighbour tunnel once every this many bytes of the download.
const ASK_EVERY: usize = 4 << 20;

/// A request of an HTTP/2 visitor answered in full: its status and body.
async fn h2_get(
    send: &h2::client::SendRequest<bytes::Bytes>,
    url: String,
) -> Result<(http::StatusCode, Vec<u8>)> {
    let mut send = send.clone().ready().await?;
    let (resp, _) = send.send_request(http::Request::get(url).body(())?, true)?;
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .context("no answer")??;
    let status = resp.status();
    let got = h2body::read_all(&mut resp.into_body()).await?;
    Ok((status, got))
}

/// Reads a whole download of `want.len()` bytes (its answer's head within [`WAIT`], then
/// no read stalled for [`BULK_WAIT`]) and compares it with `want`.
async fn read_all(resp: h2::client::ResponseFuture, want: std::sync::Arc<Vec<u8>>) -> Result<()> {
    let resp = tokio::time::timeout(WAIT, resp).await.context("head")??;
    ensure!(resp.status() == 200, "{}", resp.status());
    let mut body = resp.into_body();
    let mut at = 0usize;
    while let Some(chunk) = tokio::time::timeout(BULK_WAIT, body.data())
        .await
        .with_context(|| format!("stalled at byte {at}"))?
    {
        let chunk = chunk?;
        ensure!(
            at + chunk.len() <= want.len() && chunk[..] == want[at..at + chunk.len()],
            "differs within bytes {at}..{}",
            at + chunk.len()
        );
        body.flow_control().release_capacity(chunk.len())?;
        at += chunk.len();
    }
    ensure!(at == want.len(), "ended at byte {at} of {}", want.len());
    Ok(())
}

/// An HTTP/1.1 service with three paths: `/big` answers [`DOWNLOAD`] bytes of
/// `pattern(.., 1)`, `/never` never answers, anything else 1000 bytes.
async fn three_paths() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let big = std::sync::Arc::new(tunneld_integration_tests::pattern(DOWNLOAD, 1));
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let big = big.clone();
            tokio::spawn(async move {
                let (r, mut w) = c.into_split();
                let mut r = tokio::io::BufReader::new(r);
                loop {
                    // The request's head, line by line (no request here has a body).
                    let mut lines = Vec::new();
                    loop {
                        let mut line = String::new();
                        let read = tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line);
                        if read.await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        lines.push(line);
                    }
                    let body: &[u8] = match lines.first().and_then(|l| l.split(' ').nth(1)) {
                        Some("/never") => return std::future::pending().await,
                        Some("/big") => &big,
                        _ => &big[..1000],
                    };
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if w.write_all(head.as_bytes()).await.is_err()
                        || w.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/2 visitor's streams run on its connection's task at tunneld (frontends/https): on
/// one connection, a 64 MiB download in progress and a request whose service never answers
/// leave the connection's other requests answered (one every 4 MiB of a download the visitor
/// reads in step with them; then back to back beside a download read as fast as it comes,
/// with another visitor's connection to a neighbour tunnel); every byte of both arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_visitors_streams_share_its_connection_without_holding_each_other() -> Result<()> {
    let s = server(false, &[]).await?;
    let site = three_paths().await;
    let nb = services::http_body(1000).await;
    let tunnels = attack::http_tunnels(&[("site", site), ("nb", nb)]);
    let (mut alice, _) = attack::alice(&s, Via::Yamux, &tunnels).await?;
    let mark = SessionMark::take(&s, Via::Yamux).await?;
    let port = s.web().port();
    let url = move |name: &str, path: &str| format!("https://{name}.localhost:{port}{path}");
    let visitor = |sni: &'static str| {
        let s = &s;
        async move {
            let tcp = TcpStream::connect(s.web()).await?;
            let tls = attack::tls_to(s, sni, b"h2", tcp).await?;
            // Streams keep HTTP/2's default window; the connection's is as large as a
            // browser's, so a download the visitor reads no further (it awaits another
            // answer first) holds its own stream only.
            let (send, conn) = h2::client::Builder::new()
                .initial_connection_window_size(16 << 20)
                .handshake(tls)
                .await?;
            Ok::<_, anyhow::Error>((send, tokio::spawn(conn)))
        }
    };
    let (send, conn) = visitor("site.localhost").await?;

    let mut ready = send.clone().ready().await?;
    let (waiting, _) =
        ready.send_request(http::Request::get(url("site", "/never")).body(())?, true)?;
    let mut waiting = std::pin::pin!(waiting);
    let (download, _) =
        ready.send_request(http::Request::get(url("site", "/big")).body(())?, true)?;
    let download = tokio::time::timeout(WAIT, download)
        .await
        .context("the download's head")??;
    ensure!(download.status() == 200, "download: {}", download.status());
    let mut body = download.into_body();
    let want = tunneld_integration_tests::pattern(DOWNLOAD, 1);
    let (mut at, mut asked) = (0usize, 0usize);
    while at < DOWNLOAD {
        let chunk = tokio::time::timeout(BULK_WAIT, body.data())
            .await
            .with_context(|| format!("the download stalled at byte {at}"))?
            .with_context(|| format!("the download ended at byte {at} of {DOWNLOAD}"))??;
        ensure!(
            at + chunk.len() <= DOWNLOAD && chunk[..] == want[at..at + chunk.len()],
            "the download differs within bytes {at}..{}",
            at + chunk.len()
        );
        body.flow_control().release_capacity(chunk.len())?;
        at += chunk.len();
        // Mid-download (its window just reopened, more of it on the way): another request
        // on the same connection.
        if at < DOWNLOAD && at / ASK_EVERY > asked {
            asked += 1;
            let (status, got) = h2_get(&send, url("site", "/small"))
                .await
                .with_context(|| format!("request {asked} beside the download, at byte {at}"))?;
            ensure!(
                status == 200 && got[..] == want[..1000],
                "request {asked} beside the download: {status}, {} bytes",
                got.len()
            );
        }
    }
    ensure!(
        asked >= DOWNLOAD / ASK_EVERY - 1,
        "only {asked} requests went out beside the download"
    );
    let end = tokio::time::timeout(WAIT, body.data())
        .await
        .context("the download's end")?;
    ensure!(end.is_none(), "the download went on past {DOWNLOAD} bytes");

    // A second download, read as fast as it comes on a task of its own: requests on the
    // same connection, and on another visitor's connection to the neighbour tunnel, are
    // answered one after another until it ends.
    let (other, other_conn) = visitor("nb.localhost").await?;
    let mut ready = send.clone().ready().await?;
    let (second, _) =
        ready.send_request(http::Request::get(url("site", "/big")).body(())?, true)?;
    let want = std::sync::Arc::new(want);
    let reader = tokio::spawn(read_all(second, want.clone()));
    let mut beside = 0u32;
    while !reader.is_finished() {
        let (status, got) = h2_get(&send, url("site", "/small"))
            .await
            .context("a request beside the second download")?;
        ensure!(
            status == 200 && got[..] == want[..1000],
            "a request beside the second download: {status}, {} bytes",
            got.len()
        );
        let (status, got) = h2_get(&other, url("nb", "/"))
            .await
            .context("another visitor beside the second download")?;
        ensure!(
            status == 200 && got.len() == 1000,
            "another visitor: {status}, {} bytes",
            got.len()
        );
        beside += 1;
    }
    tokio::time::timeout(BULK_WAIT, reader)
        .await
        .context("the second download")?
        .context("reader task")??;
    eprintln!("{beside} pairs of requests answered beside the second download");

    // The request that waits on a silent service still waits: neither answered nor reset.
    ensure!(
        futures::poll!(waiting.as_mut()).is_pending(),
        "the request to the silent service was ended"
    );
    drop((send, other));
    conn.abort();
    other_conn.abort();
    let problems = mark.problems(&s, &mut alice).await?;
    alice.shutdown().await.ok();
    verdict(problems)
}
