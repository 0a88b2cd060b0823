//! Alternated pairs. Issue 20's targets are ratios (tunneld yamux+tls against rathole tls,
//! HTTPS over yamux against nginx with one worker), and a shared 2-core machine drifts
//! 10-20 % within minutes: two rows measured minutes apart can disagree by that much about
//! the same binaries. Here both sides of each targeted ratio are started once and measured
//! by turns (subject first in one round, baseline first in the next), each round giving a
//! ratio, and the table reports every round's ratio and their median.

use crate::https::{self, Public};
use crate::systems::{self, System, Transport};
use crate::{load, Settings};
use anyhow::Result;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct PairRow {
    pub subject: String,
    pub baseline: String,
    /// What was compared (a rate, or a latency or cost where lower is better).
    pub figure: String,
    /// Subject over baseline, one per round.
    pub ratios: Vec<f64>,
    pub median: f64,
}

pub(crate) fn row(subject: &str, baseline: &str, figure: &str, ratios: Vec<f64>) -> PairRow {
    PairRow {
        subject: subject.into(),
        baseline: baseline.into(),
        figure: figure.into(),
        median: load::median(ratios.clone()),
        ratios,
    }
}

/// `a / b`, when both were measured.
pub(crate) fn over(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

/// The pairs: tunneld yamux+tls against rathole tls (`rathole`: its binary; two plain
/// relays stand in without it, and a note says so), and HTTPS over yamux against nginx with
/// one worker (when h2load and nginx are installed).
pub async fn rows(
    bins: &Path,
    rathole: Option<&Path>,
    service: SocketAddr,
    work: &Path,
    s: &Settings,
    rounds: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<PairRow>> {
    let dir = work.join("pairs");
    for sub in ["tunneld", "rathole", "relays", "https-yamux", "nginx-1"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let subject = systems::tunneld(Transport::Yamux, bins, service, &dir.join("tunneld")).await?;
    let started = match rathole {
        Some(b) => systems::rathole(b, true, service, &dir.join("rathole"))
            .await
            .map_err(|e| format!("could not start ({e:#})")),
        None => Err("is not installed (or --no-peers)".to_string()),
    };
    let baseline = match started {
        Ok(sys) => sys,
        Err(why) => {
            notes.push(format!(
                "alternated pairs: rathole tls {why}; two plain relays stand in"
            ));
            systems::relays(service, &dir.join("relays")).await?
        }
    };
    eprintln!("alternating {} and {} ...", subject.name, baseline.name);
    let mut out = ports(&subject, &baseline, rounds, s).await?;
    drop((subject, baseline));
    if let Some(n) = https::h2load_missing() {
        notes.push(format!("alternated pairs: {n}"));
        return Ok(out);
    }
    let Some(nginx) = https::nginx_path() else {
        notes.push("alternated pairs: nginx is not installed; HTTPS pair skipped".into());
        return Ok(out);
    };
    let subject = https::tunneld("yamux", true, bins, service, &dir.join("https-yamux")).await?;
    let baseline = https::nginx(&nginx, 1, service, &dir.join("nginx-1")).await?;
    eprintln!("alternating {} and {} ...", subject.name, baseline.name);
    out.extend(https_pair(&subject, &baseline, rounds, s, &dir).await?);
    Ok(out)
}

/// Throughput (upload and download), HTTP req/s and HTTP p99 of `subject` over `baseline`,
/// by turns.
async fn ports(
    subject: &System,
    baseline: &System,
    rounds: usize,
    s: &Settings,
) -> Result<Vec<PairRow>> {
    for sys in [subject, baseline] {
        load::wait_ready(&sys.endpoint, Duration::from_secs(60)).await?;
    }
    let secs = Duration::from_secs_f64(s.http_secs);
    let (mut tput, mut down, mut rps, mut p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Whoever went second last round goes first now.
        let order = if round % 2 == 0 {
            [subject, baseline]
        } else {
            [baseline, subject]
        };
        let mut t = [0.0; 2];
        let mut r = [0.0; 2];
        let mut p = [0.0; 2];
        for sys in order {
            let i = usize::from(!std::ptr::eq(sys, subject));
            t[i] = load::throughput(&sys.endpoint, s.bytes).await?;
        }
        let mut d = [0.0; 2];
        for sys in order {
            let i = usize::from(!std::ptr::eq(sys, subject));
            d[i] = load::download(&sys.endpoint, s.bytes).await?;
        }
        for sys in order {
            let i = usize::from(!std::ptr::eq(sys, subject));
            let (req_s, mut lat) = load::http(&sys.endpoint, s.http_conns, secs).await?;
            r[i] = req_s;
            p[i] = load::percentile(&mut lat, 99.0) as f64;
        }
        tput.extend(over(t[0], t[1]));
        down.extend(over(d[0], d[1]));
        rps.extend(over(r[0], r[1]));
        p99.extend(over(p[0], p[1]));
    }
    let (a, b) = (&subject.name, &baseline.name);
    Ok(vec![
        row(a, b, "throughput", tput),
        row(a, b, "download throughput", down),
        row(a, b, "HTTP req/s", rps),
        row(a, b, "HTTP p99 latency (lower is better)", p99),
    ])
}

/// HTTP/1.1 and HTTP/2 req/s and CPU a request of `subject` over `baseline`, by turns.
async fn https_pair(
    subject: &Public,
    baseline: &Public,
    rounds: usize,
    s: &Settings,
    dir: &Path,
) -> Result<Vec<PairRow>> {
    let mut rates = [Vec::new(), Vec::new()];
    let mut costs = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [(subject, 0), (baseline, 1)]
        } else {
            [(baseline, 1), (subject, 0)]
        };
        for (v, h2) in [false, true].into_iter().enumerate() {
            let mut runs = [None, None];
            for (public, i) in order {
                let d = dir.join(if i == 0 { "subject" } else { "baseline" });
                std::fs::create_dir_all(&d)?;
                runs[i] = Some(https::h2load(public, h2, s.http_conns, s.http_secs, &d).await?);
            }
            if let [Some(a), Some(b)] = runs {
                rates[v].extend(over(a.req_s, b.req_s));
                if let (Some(ca), Some(cb)) = (a.cpu_us, b.cpu_us) {
                    costs[v].extend(over(ca, cb));
                }
            }
        }
    }
    let (a, b) = (&subject.name, &baseline.name);
    let [h1, h2] = rates;
    let [h1_cpu, h2_cpu] = costs;
    Ok(vec![
        row(a, b, "HTTPS HTTP/1.1 req/s", h1),
        row(a, b, "HTTPS HTTP/2 req/s", h2),
        row(
            a,
            b,
            "HTTPS HTTP/1.1 CPU a request (lower is better)",
            h1_cpu,
        ),
        row(a, b, "HTTPS HTTP/2 CPU a request (lower is better)", h2_cpu),
    ])
}

/// The pairs' table.
pub fn markdown(rows: &[PairRow]) -> String {
    let mut out = String::from(
        "\nAlternated pairs (both sides started once and measured by turns; each round a ratio, subject over baseline; the median):\n\n| subject | baseline | figure | rounds | ratio per round | median ratio |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let each: Vec<String> = r.ratios.iter().map(|v| format!("{v:.2}")).collect();
        let median = if r.ratios.is_empty() {
            "–".to_string()
        } else {
            format!("{:.2}×", r.median)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {median} |\n",
            r.subject,
            r.baseline,
            r.figure,
            r.ratios.len(),
            each.join(", "),
        ));
    }
    out
}
