//! 1,000 concurrent visitors with default settings on every transport.

use crate::common::*;

/// The soft limit on open files of this process (`None`: unlimited or unknown).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Visitors of the 1,000-visitor test.
const CROWD: usize = 1000;

/// 1,000 visitors connect to one tcp echo tunnel, then each writes 16 bytes and reads them
/// back while all are open; problems found, prefixed with the transport.
async fn crowd(via: Via) -> Result<Vec<String>> {
    let s = server(true, &[]).await?;
    let echo = services::echo().await;
    let (mut alice, got) = attack::alice(&s, via, &tcp_tunnel("echo", echo)).await?;
    let ep = endpoint_of(&got, "echo")?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(CROWD);
    for i in 0..CROWD {
        conns.push(
            connect_from(ep, None)
                .await
                .with_context(|| format!("[{via:?}] visitor {i} connects"))?,
        );
    }
    let connected = started.elapsed();
    let mut visitors = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        visitors.spawn(async move {
            let fut = echo_on(&mut c, i as u64);
            let r = match tokio::time::timeout(Duration::from_secs(20), fut).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("no echo within 20 s")),
            };
            (i, r, c)
        });
    }
    let mut ok = 0usize;
    let mut errors = Vec::new();
    let mut held = Vec::with_capacity(CROWD);
    while let Some(done) = visitors.join_next().await {
        let (i, r, c) = done.context("visitor task")?;
        match r {
            Ok(()) => ok += 1,
            Err(e) if errors.len() < 5 => errors.push(format!("visitor {i}: {e:#}")),
            Err(_) => {}
        }
        held.push(c);
    }
    let took = started.elapsed();
    let m = s.metrics().await;
    let active = m.get("tunneld_streams_active", &[("frontend", "tcp")]);
    let refused = m.get("tunneld_streams_refused_total", &[]) + 0.0;
    let reasons: Vec<String> = ["tunnel_cap", "address_cap"]
        .iter()
        .map(|r| {
            format!(
                "{r}={}",
                m.get("tunneld_streams_refused_total", &[("reason", r)]) + 0.0
            )
        })
        .collect();
    let failures = m.get("tunneld_stream_open_failures_total", &[]);
    drop(held);
    let mut problems = Vec::new();
    if ok != CROWD {
        problems.push(format!(
            "{ok} of {CROWD} concurrent visitors got their echo; first errors: {errors:?}; tunneld_streams_refused_total {reasons:?}, tunneld_stream_open_failures_total={failures}"
        ));
    }
    if active != CROWD as f64 {
        problems.push(format!(
            "tunneld_streams_active{{frontend=tcp}} was {active} with all {CROWD} visitors open"
        ));
    }
    let seen = attack::drain_events(&mut alice, usize::MAX, |ev| {
        matches!(ev, ClientEvent::Disconnected { .. })
    });
    if !seen.is_empty() {
        problems.push(format!("tunnelc lost its session: {seen:?}"));
    }
    eprintln!(
        "{via:?}: {ok}/{CROWD} visitors, all connected in {connected:?}, done in {took:?}, active {active}, refused {refused}"
    );
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_visitors_with_default_settings() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Each visitor takes 4 descriptors in this process: the visitor, tunneld's side,
    // tunnelc's connection to the service, the service's side.
    let need = 4 * CROWD as u64 + 500;
    if let Some(limit) = open_files_limit() {
        if limit < need {
            let why = format!(
                "the open-files limit is {limit}, this test needs about {need} (run under `ulimit -n 8192`)"
            );
            if ci() {
                bail!("{why}");
            }
            eprintln!("SKIPPED a_thousand_concurrent_visitors_with_default_settings: {why}");
            return Ok(());
        }
    }
    let mut problems = Vec::new();
    for via in [Via::Yamux, Via::H2Reverse, Via::Websocket] {
        problems.extend(crowd(via).await?);
    }
    verdict(problems)
}
