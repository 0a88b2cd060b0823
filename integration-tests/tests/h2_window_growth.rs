//! Stream windows of an h2-reverse link grow only for readers that keep up (patched h2,
//! vendor/README.md). tunneld's own link client ([`link::connect`], with the settings
//! tunneld uses) talks to an HTTP/2 server made with the h2 crate playing tunnelc: it answers
//! each `CONNECT` and sends as fast as its window allows, noting the most window it was ever
//! given at once. No window larger than the initial one can be seen unless tunneld grew it.
//! A visitor's own HTTP/2 upload through the https frontend must never see one.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunneld_core::http2::H2Tuning;
use tunneld_core::io::BoxIo;
use tunneld_core::limits::DataLimits;
use tunneld_core::session::{OpenStream, StreamHeader};
use tunneld_transport_h2_reverse::link::{self, H2Opener, STREAM_HEADER};

/// Bytes each stream is sent.
const BODY: usize = 16 << 20;
/// The initial stream window tunneld announces (its default).
const INITIAL: usize = 256 << 10;

/// What the server did on one stream.
#[derive(Default)]
struct Sent {
    /// Bytes sent.
    bytes: AtomicUsize,
    /// The most window the stream had at once.
    peak: AtomicUsize,
}

type Log = Arc<Mutex<HashMap<String, Arc<Sent>>>>;

fn entry(log: &Log, name: &str) -> Arc<Sent> {
    let mut map = log.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_string()).or_default().clone()
}

/// tunnelc's part: answers every `CONNECT` with 200 and sends [`BODY`] bytes on it, each time
/// as much as the window allows, then keeps the stream open until tunneld ends it (so no
/// stream ends, and gives its growth back, before the test lets it).
async fn server(listener: TcpListener, log: Log) -> Result<()> {
    let (tcp, _) = listener.accept().await?;
    let mut conn = h2::server::Builder::new()
        .max_send_buffer_size(BODY)
        .handshake::<_, Bytes>(tcp)
        .await?;
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next?;
        let name = req
            .headers()
            .get(STREAM_HEADER)
            .and_then(|v| serde_json::from_slice::<StreamHeader>(v.as_bytes()).ok())
            .map(|h| h.tunnel)
            .context("a CONNECT without a stream header")?;
        let sent = entry(&log, &name);
        tokio::spawn(async move {
            let zeros = Bytes::from(vec![0u8; BODY]);
            let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                return;
            };
            let mut left = BODY;
            while left > 0 {
                send.reserve_capacity(left);
                let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    _ => return,
                };
                sent.peak.fetch_max(n, Ordering::Relaxed);
                let n = n.min(left);
                if n == 0 || send.send_data(zeros.slice(..n), false).is_err() {
                    continue;
                }
                sent.bytes.fetch_add(n, Ordering::Relaxed);
                left -= n;
            }
            let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        });
    }
    Ok(())
}

/// tunneld's end of a link to a fresh [`server`], with `tuning`.
async fn link(tuning: &H2Tuning) -> Result<(Arc<H2Opener>, Log, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let log = Log::default();
    tokio::spawn(server(listener, log.clone()));
    let tcp = TcpStream::connect(addr).await?;
    let (opener, driver) = link::connect(
        Box::new(tcp),
        tuning,
        &DataLimits::default(),
        Duration::from_secs(30),
        (false, None),
        None,
    )
    .await?;
    tokio::spawn(driver);
    Ok((opener, log, addr))
}

async fn open(opener: &H2Opener, name: &str, addr: SocketAddr) -> Result<BoxIo> {
    let header = StreamHeader {
        tunnel: name.to_string(),
        target: None,
        visitor: addr,
        public: addr,
        proxy_protocol: None,
    };
    Ok(opener.open(header).await?)
}

/// Reads the whole body as fast as it comes.
async fn drain(io: &mut BoxIo) -> Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    while got < BODY {
        match io.read(&mut buf).await? {
            0 => bail!("the stream ended after {got} bytes, not {BODY}"),
            n => got += n,
        }
    }
    Ok(())
}

async fn bounded<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .context("the test took over 60 s")?
}

/// Downloads read as fast as they arrive get windows above the initial one, never above
/// `stream_window_max`, one after another (growth returns when a stream ends), while a
/// stream whose reader took 16 KiB and stopped keeps the initial window: it was sent that
/// window and the 16 KiB it gave back, no more (without the check that nothing waits
/// unread, that release, with the window used up, would have grown it). Growth depends on
/// the reader catching up, so a download that did not grow is tried again, three times at
/// most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_keeps_up_grows_and_a_stalled_one_does_not() -> Result<()> {
    bounded(async {
        let tuning = H2Tuning::default();
        assert_eq!(tuning.stream_window as usize, INITIAL);
        let max = tuning.stream_window_max as usize;
        let (opener, log, addr) = link(&tuning).await?;
        let mut still = open(&opener, "still", addr).await?;
        const TASTE: usize = 16 << 10;
        still.read_exact(&mut vec![0u8; TASTE]).await?;
        for i in 0..6 {
            let mut peaks = Vec::new();
            for attempt in 0..3 {
                let name = format!("fast-{i}-{attempt}");
                let mut io = open(&opener, &name, addr).await?;
                drain(&mut io).await?;
                let peak = entry(&log, &name).peak.load(Ordering::Relaxed);
                if peak > max {
                    bail!("{name}: the most window at once was {peak}, over {max}");
                }
                peaks.push(peak);
                if peak > INITIAL {
                    break;
                }
            }
            if peaks.iter().all(|p| *p <= INITIAL) {
                bail!("download {i} never grew its window: the most at once {peaks:?}");
            }
        }
        let stalled = entry(&log, "still").bytes.load(Ordering::Relaxed);
        if !(INITIAL..=INITIAL + TASTE).contains(&stalled) {
            bail!(
                "the stream read {TASTE} bytes and then not at all was sent {stalled} bytes, \
                 not its window {INITIAL} and at most the {TASTE} it gave back"
            );
        }
        still.shutdown().await.ok();
        Ok(())
    })
    .await
}

/// Streams of one link grow by at most `window_growth_budget` together; a stream's growth
/// returns to the budget when it ends. With a budget of one doubling (256 KiB): of two
/// parallel downloads, at most one grows, and after they end a later download grows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_is_budgeted_per_link_and_returned_when_a_stream_ends() -> Result<()> {
    bounded(async {
        let tuning = H2Tuning {
            window_growth_budget: INITIAL as u32,
            ..H2Tuning::default()
        };
        let (opener, log, addr) = link(&tuning).await?;
        let mut a = open(&opener, "a", addr).await?;
        let mut b = open(&opener, "b", addr).await?;
        let (ra, rb) = tokio::join!(drain(&mut a), drain(&mut b));
        ra?;
        rb?;
        let grown: Vec<usize> = ["a", "b"]
            .iter()
            .map(|n| {
                entry(&log, n)
                    .peak
                    .load(Ordering::Relaxed)
                    .saturating_sub(INITIAL)
            })
            .collect();
        if grown.iter().sum::<usize>() > INITIAL {
            bail!("two streams grew by {grown:?} together, over the budget {INITIAL}");
        }
        if grown.iter().all(|g| *g == 0) {
            bail!("neither parallel download grew");
        }
        // The one that grew took the whole budget; it comes back when the streams end.
        drop((a, b));
        for i in 0..5 {
            let name = format!("later-{i}");
            let mut io = open(&opener, &name, addr).await?;
            drain(&mut io).await?;
            if entry(&log, &name).peak.load(Ordering::Relaxed) > INITIAL {
                return Ok(());
            }
        }
        bail!("no later download grew: the ended streams kept their growth")
    })
    .await
}

/// A visitor's own HTTP/2 connection never grows its streams' windows, even when the
/// frontend's `h2:` block leaves the growth keys out (they would default to the links'
/// 2 MiB and 8 MiB): an h2 client uploads 8 MiB through the https frontend as fast as its
/// window allows, and is never given more than the frontend's 256 KiB stream window at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitors_own_streams_never_grow_their_windows() -> Result<()> {
    use tunneld_integration_tests::{attack, h2body, services};
    bounded(async {
        let s = attack::server(false, &["frontends.web.h2.stream_window=262144"]).await?;
        let service = services::http().await;
        let tunnels = attack::http_tunnels(&[("up", service)]);
        let (alice, _) = attack::alice(&s, attack::Via::H2Reverse, &tunnels).await?;
        let connector = attack::tls_connector(s.ca_file(), b"h2")?;
        let tcp = TcpStream::connect(s.web()).await?;
        let tls = attack::tls_over(&connector, "up.localhost", tcp).await?;
        let (mut send, conn) = h2::client::Builder::new()
            .max_send_buffer_size(BODY)
            .handshake::<_, Bytes>(tls)
            .await?;
        tokio::spawn(conn);
        let req = http::Request::post(format!("https://up.localhost:{}/", s.web().port()))
            .header(http::header::CONTENT_LENGTH, BODY)
            .body(())?;
        let (resp, mut body) = send.send_request(req, false)?;
        let zeros = Bytes::from(vec![0u8; BODY]);
        let (mut left, mut peak) = (BODY, 0);
        while left > 0 {
            body.reserve_capacity(left);
            let n = match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(n) => n?,
                None => bail!("the upload's stream ended with {left} bytes to send"),
            };
            peak = peak.max(n);
            let n = n.min(left);
            if n > 0 {
                body.send_data(zeros.slice(..n), false)?;
                left -= n;
            }
        }
        body.send_data(Bytes::new(), true)?;
        let resp = resp.await?;
        let status = resp.status();
        let text = h2body::read_all(&mut resp.into_body()).await?;
        let text = String::from_utf8_lossy(&text);
        if status != 200 || !text.contains(&format!("body={BODY}")) {
            bail!("the upload was answered {status}: {text}");
        }
        if peak > INITIAL {
            bail!("the visitor was given {peak} bytes of window at once, over its {INITIAL}");
        }
        alice.shutdown().await.ok();
        Ok(())
    })
    .await
}
