//! HTTP/2 streams cancelled by the thousand (raw frames and curl's parallel downloads) must
//! not end the session or slow the neighbour.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tunneld_integration_tests::attack::{
    self, healthy, http_tunnels, server, verdict, SessionMark, Via, ATTACK,
};
use tunneld_integration_tests::h2raw::{self, frame};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::services;

use crate::common::{status_of, SERIAL};

/// RST_STREAM error code CANCEL.
const CANCEL: u32 = 8;

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
