//! HTTP/2 visitors holding zero-window streams do not freeze a neighbour.

use crate::common::*;

/// HTTP/2 frame types and settings the h2raw helpers do not name.
const PING: u8 = 6;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;

/// What one zero-window HTTP/2 visitor saw.
#[derive(Debug, Default)]
struct WindowStats {
    streams: u32,
    status_200: u32,
    other_headers: u32,
    data_bytes: u64,
    resets: u32,
    goaway: bool,
}

/// One HTTP/2 connection to `host` on the `web` frontend: 100 `GET`s it never gives window
/// for (its initial stream window is 0 with `zero_window`; else the default 65,535 and never
/// a WINDOW_UPDATE). It answers SETTINGS and PING and reads every frame until `stop`.
async fn zero_window_visitor(
    s: Arc<TestServer>,
    host: String,
    source: IpAddr,
    zero_window: bool,
    answered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<WindowStats> {
    let tls = tls_from(&s, &host, b"h2", Some(source)).await?;
    let (mut r, mut w) = tokio::io::split(tls);
    let mut stats = WindowStats::default();
    let mut start = h2raw::PREFACE.to_vec();
    let mut settings = Vec::new();
    if zero_window {
        settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        settings.extend_from_slice(&0u32.to_be_bytes());
    }
    start.extend(frame(h2raw::SETTINGS, 0, 0, &settings));
    let block = h2raw::get_block(&format!("{host}:{}", s.web().port()));
    for k in 0..100u32 {
        start.extend(frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1 + 2 * k,
            &block,
        ));
        stats.streams += 1;
    }
    w.write_all(&start).await.context("write streams")?;
    w.flush().await?;
    loop {
        let (kind, flags, stream, payload) = tokio::select! {
            _ = stop.cancelled() => break,
            f = h2raw::read_frame(&mut r) => match f {
                Ok(f) => f,
                Err(_) => break,
            },
        };
        match kind {
            h2raw::SETTINGS if flags & h2raw::ACK == 0 => {
                w.write_all(&frame(h2raw::SETTINGS, h2raw::ACK, 0, &[]))
                    .await?;
            }
            PING if flags & h2raw::ACK == 0 => {
                w.write_all(&frame(PING, h2raw::ACK, 0, &payload)).await?;
            }
            h2raw::HEADERS if stream != 0 => {
                if payload.first() == Some(&0x88) {
                    stats.status_200 += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.other_headers += 1;
                }
            }
            h2raw::DATA => stats.data_bytes += payload.len() as u64,
            h2raw::RST_STREAM => stats.resets += 1,
            h2raw::GOAWAY => {
                stats.goaway = true;
                break;
            }
            _ => {}
        }
    }
    Ok(stats)
}

/// Finding 2, HTTP/2 shape: 4 connections x 100 streams of a 64 MiB download that get no
/// flow-control window (two with SETTINGS_INITIAL_WINDOW_SIZE 0, two that never send
/// WINDOW_UPDATE); the neighbour http tunnel of the same tunnelc (h2-reverse) keeps
/// serving its whole body.
///
/// Two phases, each measured by its own probe: the ramp (from the first attacking stream
/// until every stream is answered and the victim service stopped writing: the 400 streams'
/// windows, about 100 MiB, cross the link while the neighbour shares it), where no neighbour
/// request may fail; then 10 s of the established attack, where the neighbour must be
/// healthy (>= 99 %, p99 < 250 ms). The attackers come from 127.0.0.2-5 and the neighbour's
/// visitors from 127.0.0.1: what is measured is flow control, not the per-address stream
/// cap (which, by design, also refuses the attacker's own address on every tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_zero_window_streams_do_not_freeze_neighbours() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = Arc::new(server(true, &[]).await?);
    let (victim, written) = services::download(64 << 20).await;
    let neighbour = services::http_body(NB_BODY).await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour)]);
    let (mut alice, _) = attack::alice(&s, Via::H2Reverse, &tunnels).await?;
    let sessions = SessionCount::take(&s, Via::H2Reverse).await;
    let ramp_probe = Neighbour::start(Probe::https(&s, "nb", Some(NB_BODY)));
    let started = Instant::now();
    let stop = CancellationToken::new();
    let answered = Arc::new(AtomicU64::new(0));
    let mut visitors = JoinSet::new();
    for i in 0..4u8 {
        visitors.spawn(zero_window_visitor(
            s.clone(),
            "victim.localhost".into(),
            IpAddr::from([127, 0, 0, 2 + i]),
            i < 2,
            answered.clone(),
            stop.clone(),
        ));
    }
    let mut problems = Vec::new();
    // Established: all 400 streams answered and the service made no progress for 500 ms.
    let deadline = started + WAIT;
    let mut last = written.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        if answered.load(Ordering::Relaxed) >= 400
            && quiet_since.elapsed() >= Duration::from_millis(500)
        {
            break;
        }
        if Instant::now() > deadline || visitors.is_empty() {
            problems.push(format!(
                "the attack never settled: {} of 400 streams answered, the service wrote {now} bytes",
                answered.load(Ordering::Relaxed)
            ));
            break;
        }
    }
    let ramp_took = started.elapsed();
    let ramp = ramp_probe.finish().await;
    if ramp.failed > 0 {
        problems.push(format!(
            "neighbour requests failed while the attack ramped up: {ramp}"
        ));
    }
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(NB_BODY)));
    tokio::time::sleep(ATTACK).await;
    let report = probe.finish().await;
    stop.cancel();
    let mut stats = Vec::new();
    while let Some(done) = visitors.join_next().await {
        match done.context("visitor task")? {
            Ok(st) => stats.push(st),
            Err(e) => problems.push(format!("zero-window visitor: {e:#}")),
        }
    }
    let wrote = written.load(Ordering::Relaxed);
    attack::healthy(
        &report,
        "neighbour http tunnel during 400 zero-window streams",
        &mut problems,
    );
    let ok: u32 = stats.iter().map(|st| st.status_200).sum();
    if ok < 400 {
        problems.push(format!(
            "the attack did not fully engage: {ok} of 400 streams answered 200: {stats:?}"
        ));
    }
    if stats.iter().any(|st| st.goaway || st.resets > 0) {
        problems.push(format!(
            "tunneld reset streams or ended a visitor connection within 10 s: {stats:?}"
        ));
    }
    if wrote > last {
        problems.push(format!(
            "the victim service kept writing after the attack settled ({last} then {wrote} bytes)"
        ));
    }
    problems.extend(sessions.changed(&s).await);
    note(&mut problems, assert_no_reconnect(&mut alice));
    eprintln!(
        "ramp ({ramp_took:?}): {ramp}\nestablished attack: {report}\nvictim service wrote {wrote} bytes; visitors: {stats:?}"
    );
    alice.shutdown().await.ok();
    verdict(problems)
}
