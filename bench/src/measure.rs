//! The figures of one row of the main table: throughput (upload, then download), HTTP load,
//! setup latency and
//! memory (idle, under load, with idle visitor connections, after they close).

use crate::process::TICKS_PER_SEC;
use crate::report::Row;
use crate::systems::System;
use crate::{load, profile, service, Settings};
use anyhow::Result;
use std::time::Duration;

fn kib_to_mib(v: Option<u64>) -> Option<f64> {
    v.map(|k| k as f64 / 1024.0)
}

fn both(v: (Option<u64>, Option<u64>)) -> Option<u64> {
    match v {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// CPU milliseconds both sides spent per unit of work between two readings of their CPU
/// time (`None` for a system without processes, or no work).
fn cpu_ms_per(before: Option<u64>, after: Option<u64>, units: f64) -> Option<f64> {
    let spent = after?.checked_sub(before?)? as f64 * 1000.0 / TICKS_PER_SEC;
    (units > 0.0).then(|| spent / units)
}

/// Both sides' resident memory once it stops falling: sampled every 250 ms until it has
/// not dropped for 2 s (at most 30 s), so what the allocator returns late still counts.
async fn settled_rss(sys: &System) -> (Option<u64>, Option<u64>) {
    let mut last = sys.rss_kib();
    let mut unchanged = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while unchanged < 8 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sys.rss_kib();
        if both(now) < both(last) {
            unchanged = 0;
        } else {
            unchanged += 1;
        }
        last = now;
    }
    last
}

pub async fn measure(
    sys: &System,
    tls: bool,
    svc: &service::Service,
    s: &Settings,
    profile: Option<(&profile::Profiler, &str)>,
) -> Result<Row> {
    load::wait_ready(&sys.endpoint, Duration::from_secs(60)).await?;
    let idle = sys.rss_kib();
    let anon = sys.anon_kib();

    let mut tput = Vec::new();
    let cpu = both(sys.cpu_ticks());
    for _ in 0..s.reps {
        tput.push(load::throughput(&sys.endpoint, s.bytes).await?);
    }
    let gib = (s.reps as u64 * s.bytes) as f64 / (1u64 << 30) as f64;
    let cpu_ms_per_gib = cpu_ms_per(cpu, both(sys.cpu_ticks()), gib);
    let mut down = Vec::new();
    let cpu = both(sys.cpu_ticks());
    for _ in 0..s.reps {
        down.push(load::download(&sys.endpoint, s.bytes).await?);
    }
    let download_cpu_ms_per_gib = cpu_ms_per(cpu, both(sys.cpu_ticks()), gib);

    let mut rps = Vec::new();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    let mut peak: Option<u64> = None;
    let cpu = both(sys.cpu_ticks());
    let mut requests = 0;
    for _ in 0..s.reps {
        let http = load::http(
            &sys.endpoint,
            s.http_conns,
            Duration::from_secs_f64(s.http_secs),
        );
        tokio::pin!(http);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let (r, mut lat) = loop {
            tokio::select! {
                r = &mut http => break r?,
                _ = tick.tick() => {
                    if let Some(now) = both(sys.rss_kib()) {
                        peak = Some(peak.map_or(now, |p| p.max(now)));
                    }
                }
            }
        };
        rps.push(r);
        requests += lat.len();
        p50.push(load::percentile(&mut lat, 50.0) as f64 / 1000.0);
        p99.push(load::percentile(&mut lat, 99.0) as f64 / 1000.0);
    }

    // Microseconds a request: milliseconds per thousand.
    let cpu_us_per_req = cpu_ms_per(cpu, both(sys.cpu_ticks()), requests as f64 / 1000.0);

    let mut setup = load::setup_latency(&sys.endpoint, s.setups).await?;

    let before = both(sys.rss_kib());
    let conns = load::open_idle(&sys.endpoint, s.idle, &svc.idle).await?;
    // Let both sides settle (buffers shrink after the handshake bursts).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = sys.rss_kib();
    let with_conns = both(held);
    drop(conns);
    let closed = settled_rss(sys).await;
    // Last, so the profiled (uncounted) run disturbs none of the figures above.
    if let Some((p, label)) = profile {
        let pids = sys.pids();
        let load = load::http(
            &sys.endpoint,
            s.http_conns,
            Duration::from_secs_f64(s.http_secs),
        );
        if let Err(e) = p.record(label, &pids, load).await {
            eprintln!("profiling {label} failed (the row's figures stand): {e:#}");
        }
    }
    let per_conn = match (before, with_conns) {
        (Some(b), Some(w)) => Some((w as f64 - b as f64) / s.idle as f64),
        _ => None,
    };
    Ok(Row {
        system: sys.name.clone(),
        tls,
        throughput_gbit_s: load::median(tput),
        cpu_ms_per_gib,
        download_gbit_s: load::median(down),
        download_cpu_ms_per_gib,
        http_req_s: load::median(rps),
        cpu_us_per_req,
        http_p50_ms: load::median(p50),
        http_p99_ms: load::median(p99),
        setup_p50_ms: load::percentile(&mut setup, 50.0) as f64 / 1000.0,
        setup_p99_ms: load::percentile(&mut setup, 99.0) as f64 / 1000.0,
        rss_idle_server_mib: kib_to_mib(idle.0),
        rss_idle_client_mib: kib_to_mib(idle.1),
        anon_idle_server_mib: kib_to_mib(anon.0),
        anon_idle_client_mib: kib_to_mib(anon.1),
        rss_loaded_mib: kib_to_mib(peak),
        rss_conns_server_mib: kib_to_mib(held.0),
        rss_conns_client_mib: kib_to_mib(held.1),
        rss_closed_server_mib: kib_to_mib(closed.0),
        rss_closed_client_mib: kib_to_mib(closed.1),
        idle_conns: s.idle,
        per_conn_kib: per_conn,
    })
}
