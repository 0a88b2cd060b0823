//! The transports by turns. Issue 20 asks every transport to stay within 1.5× of the best
//! on the same frontend, and the table's rows are measured minutes apart on a machine that
//! drifts 10-20 % in that time: one run's ports rows put yamux+tls at 82k req/s and
//! h2-reverse at 52.5k, while the two measured back to back were within 1.25× of each other.
//! Here every transport that carries a tcp tunnel to the ports frontend (yamux+tls,
//! h2-reverse+tls, websocket and, when OpenSSH is installed, ssh) is started once and all
//! are measured in each round, in an order rotated by one each round. Each round gives, per
//! figure, each transport's ratio over yamux+tls and the spread (the best transport's figure
//! over the worst's); the table reports every round's and their median.

use crate::pairs::{over, row, PairRow};
use crate::systems::{self, System, Transport};
use crate::{load, openssh, Settings};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What the spread rows name as their subject and baseline.
pub const BEST: &str = "the best transport";
pub const WORST: &str = "the worst transport";

/// The figures compared, in the order each round measures them.
const FIGURES: [&str; 3] = ["throughput", "download throughput", "HTTP req/s"];

/// Starts the transports and measures them by turns (`ssh`: whether OpenSSH is there). A
/// measurement that fails ends the run when `strict` (smoke mode); otherwise `notes` says
/// which, and its round is left out of that figure's ratios.
#[allow(clippy::too_many_arguments)]
pub async fn rows(
    bins: &Path,
    service: SocketAddr,
    work: &Path,
    s: &Settings,
    rounds: usize,
    ssh: bool,
    strict: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<PairRow>> {
    let dir = work.join("transport-turns");
    let mut systems = Vec::new();
    for t in [Transport::Yamux, Transport::H2Reverse, Transport::Websocket] {
        let d = dir.join(t.kind());
        std::fs::create_dir_all(&d)?;
        systems.push(systems::tunneld(t, bins, service, &d).await?);
    }
    if ssh {
        let d = dir.join("ssh");
        std::fs::create_dir_all(&d)?;
        systems.push(openssh::tunneld_ssh(bins, service, &d).await?);
    }
    for sys in &systems {
        load::wait_ready(&sys.endpoint, Duration::from_secs(60)).await?;
    }
    let names: Vec<&str> = systems.iter().map(|sys| sys.name.as_str()).collect();
    eprintln!("measuring {} by turns ...", names.join(", "));
    // figures[f][round][system]
    let mut figures = vec![Vec::new(); FIGURES.len()];
    for round in 0..rounds {
        let order: Vec<usize> = (0..systems.len())
            .map(|i| (i + round) % systems.len())
            .collect();
        for (f, figure) in figures.iter_mut().enumerate() {
            let mut got = vec![0.0; systems.len()];
            for &i in &order {
                let what = || {
                    format!(
                        "by turns, round {}: {}, {}",
                        round + 1,
                        systems[i].name,
                        FIGURES[f]
                    )
                };
                got[i] = match measure(&systems[i], f, s).await.with_context(what) {
                    Ok(v) => v,
                    Err(e) if !strict => {
                        eprintln!("{e:#}");
                        notes.push(format!("{e:#}: the round is left out of its ratios"));
                        0.0
                    }
                    Err(e) => return Err(e),
                };
            }
            figure.push(got);
        }
    }
    Ok(table(&names, &figures))
}

/// Figure `f` of one system, once.
async fn measure(sys: &System, f: usize, s: &Settings) -> Result<f64> {
    Ok(match f {
        0 => load::throughput(&sys.endpoint, s.bytes).await?,
        1 => load::download(&sys.endpoint, s.bytes).await?,
        _ => {
            let secs = Duration::from_secs_f64(s.http_secs);
            load::http(&sys.endpoint, s.http_conns, secs).await?.0
        }
    })
}

/// Per figure: each transport over the first (yamux+tls), then the spread.
fn table(names: &[&str], figures: &[Vec<Vec<f64>>]) -> Vec<PairRow> {
    let mut out = Vec::new();
    for (figure, rounds) in FIGURES.iter().zip(figures) {
        for (i, name) in names.iter().enumerate().skip(1) {
            let ratios = rounds.iter().filter_map(|r| over(r[i], r[0])).collect();
            out.push(row(name, names[0], figure, ratios));
        }
        let spreads = rounds.iter().filter_map(|r| spread(r)).collect();
        out.push(row(
            BEST,
            WORST,
            &format!("{figure} (target ≤ 1.5)"),
            spreads,
        ));
    }
    out
}

/// The best figure over the worst, when every transport was measured.
fn spread(figures: &[f64]) -> Option<f64> {
    let best = figures.iter().copied().fold(f64::MIN, f64::max);
    let worst = figures.iter().copied().fold(f64::MAX, f64::min);
    over(best, worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_over_the_first_and_the_spread_per_round() {
        let names = ["y", "h", "w"];
        let round = |a: f64, b: f64, c: f64| vec![a, b, c];
        let figures = vec![
            vec![round(10.0, 5.0, 8.0), round(10.0, 10.0, 10.0)],
            vec![round(4.0, 6.0, 3.0), round(4.0, 2.0, 4.0)],
            vec![round(1.0, 0.0, 1.0), round(3.0, 2.0, 1.5)],
        ];
        let rows = table(&names, &figures);
        let got: Vec<(&str, &str, &str, Vec<f64>)> = rows
            .iter()
            .map(|r| {
                let ratios = r.ratios.iter().map(|v| (v * 100.0).round() / 100.0);
                let (s, b, f) = (r.subject.as_str(), r.baseline.as_str(), r.figure.as_str());
                (s, b, f, ratios.collect())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("h", "y", "throughput", vec![0.5, 1.0]),
                ("w", "y", "throughput", vec![0.8, 1.0]),
                (BEST, WORST, "throughput (target ≤ 1.5)", vec![2.0, 1.0]),
                ("h", "y", "download throughput", vec![1.5, 0.5]),
                ("w", "y", "download throughput", vec![0.75, 1.0]),
                (
                    BEST,
                    WORST,
                    "download throughput (target ≤ 1.5)",
                    vec![2.0, 2.0]
                ),
                // A failed measure (0) leaves that round out of the ratios that need it.
                ("h", "y", "HTTP req/s", vec![0.67]),
                ("w", "y", "HTTP req/s", vec![1.0, 0.5]),
                (BEST, WORST, "HTTP req/s (target ≤ 1.5)", vec![2.0]),
            ]
        );
        assert_eq!(rows[2].median, 2.0, "the upper middle of two");
    }
}
