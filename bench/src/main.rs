//! `tunneld-bench`: measures tunneld (with tunnelc, also across a two-node cluster, and with
//! stock OpenSSH on the `ssh` transport) beside a direct connection, two plain relays, rathole
//! and bore, in one run on loopback, and prints a markdown table (also written with a JSON
//! file). `scripts/bench` builds everything in release mode and runs it; see
//! docs/benchmarks.md for the method.
#![forbid(unsafe_code)]

mod cluster;
mod crowd;
mod endpoint;
mod https;
mod load;
mod measure;
mod openssh;
mod pairs;
mod process;
mod profile;
mod relay;
mod rendezvous;
mod report;
mod service;
mod systems;
mod transport_turns;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use report::Report;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use systems::{System, Transport};

#[derive(Parser)]
#[command(about = "Benchmarks tunneld against a direct connection, two relays, rathole and bore")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Tiny sizes and short runs (seconds), for the test suite.
    #[arg(long)]
    smoke: bool,
    /// Where tunneld and tunnelc are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where rathole and bore are installed (`<dir>/bin/rathole`, `<dir>/bin/bore`).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Install rathole and bore from crates.io into the peers directory when missing.
    #[arg(long)]
    install_peers: bool,
    /// Skip rathole and bore even when installed.
    #[arg(long)]
    no_peers: bool,
    /// Repetitions of each throughput and HTTP run (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Idle visitor connections for the memory figures (default 1000; 20 in smoke mode).
    #[arg(long)]
    idle: Option<usize>,
    /// Idle visitors held at once through one tunnelc in the crowd rows (default 10000; 50
    /// in smoke mode). The runner holds one descriptor per visitor: raise `ulimit -n` above
    /// it (scripts/bench raises the soft limit to the hard one).
    #[arg(long)]
    crowd: Option<usize>,
    /// Only these systems (comma-separated: direct, relays, rathole-tls, rathole-tcp, bore,
    /// tunneld-yamux, tunneld-h2, tunneld-ws, tunneld-connect-named, tunneld-connect-parked,
    /// tunneld-yamux-cluster, tunneld-ssh, https, crowd, pairs, transport-turns).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds of the alternated pairs (tunneld yamux+tls and rathole tls, HTTPS over yamux
    /// and nginx with one worker, and the transports to ports against each other, measured
    /// by turns; default 5, 1 in smoke mode; 0: none).
    #[arg(long)]
    rounds: Option<usize>,
    /// Where results.md and results.json go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also profile each tunneld row (one extra, uncounted HTTP run under Linux perf): flame
    /// graphs, folded stacks and the hottest functions of tunneld and tunnelc in
    /// `<out>/profiles/` (installs inferno into the peers directory when missing).
    #[arg(long)]
    profile: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// A plain TCP relay to `--to` (used for the two-relay baseline).
    Relay {
        #[arg(long)]
        to: SocketAddr,
    },
    /// A service that echoes each connection's first byte and holds it (the crowd rows).
    Sink,
}

struct Settings {
    bytes: u64,
    reps: usize,
    http_conns: usize,
    http_secs: f64,
    setups: usize,
    idle: usize,
    crowd: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Some(Cmd::Relay { to }) => rt.block_on(relay::run(to)),
        Some(Cmd::Sink) => rt.block_on(crowd::sink()),
        None => rt.block_on(run(cli)),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}, loopback")
}

fn peer(
    dir: &Path,
    name: &str,
    krate: &str,
    install: bool,
    notes: &mut Vec<String>,
) -> Option<PathBuf> {
    let bin = dir.join("bin").join(name);
    if !bin.exists() && install {
        eprintln!(
            "installing {krate} into {} (cached afterwards)",
            dir.display()
        );
        // `--locked` first (the versions its authors tested); rathole's lock file holds a
        // `time` that no longer builds on current toolchains, so then without it.
        let install = |locked: bool| {
            let mut c = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            );
            c.arg("install");
            if locked {
                c.arg("--locked");
            }
            matches!(c.arg("--root").arg(dir).arg(krate).status(), Ok(s) if s.success())
        };
        if !install(true) && !install(false) {
            notes.push(format!("{name}: `cargo install {krate}` failed; skipped"));
            return None;
        }
    }
    if bin.exists() {
        Some(bin)
    } else {
        notes.push(format!(
            "{name}: not installed at {}; run with --install-peers to compare",
            bin.display()
        ));
        None
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = if cli.smoke {
        Settings {
            bytes: 4 << 20,
            reps: cli.reps.unwrap_or(1),
            http_conns: 8,
            http_secs: 0.3,
            setups: 10,
            idle: cli.idle.unwrap_or(20),
            crowd: cli.crowd.unwrap_or(50),
        }
    } else {
        Settings {
            bytes: 1 << 30,
            reps: cli.reps.unwrap_or(3),
            http_conns: 64,
            http_secs: 4.0,
            setups: 200,
            idle: cli.idle.unwrap_or(1000),
            crowd: cli.crowd.unwrap_or(10_000),
        }
    };
    let exe = std::env::current_exe()?;
    let bins = match cli.bin_dir {
        Some(d) => d,
        None => exe.parent().context("program directory")?.to_path_buf(),
    };
    // Cargo's target directory: the binaries' parent, or its parent when that is tagged as
    // one too (`target/<host tuple>/release` -> `target`; cargo tags both).
    let up = bins.parent().unwrap_or(&bins);
    let target = up
        .parent()
        .filter(|t| t.join("CACHEDIR.TAG").exists())
        .unwrap_or(up)
        .to_path_buf();
    let peers_dir = cli.peers_dir.unwrap_or_else(|| target.join("bench-peers"));
    let out = cli.out.unwrap_or_else(|| target.join("bench"));
    std::fs::create_dir_all(&out)?;
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let mut notes = Vec::new();
    let (rathole, bore) = if cli.no_peers {
        notes.push("rathole and bore skipped (--no-peers)".into());
        (None, None)
    } else {
        (
            peer(
                &peers_dir,
                "rathole",
                "rathole",
                cli.install_peers,
                &mut notes,
            ),
            peer(
                &peers_dir,
                "bore",
                "bore-cli",
                cli.install_peers,
                &mut notes,
            ),
        )
    };
    let profiler = if cli.profile {
        Some(profile::Profiler::new(&peers_dir, &out)?)
    } else {
        None
    };
    let ssh_missing = openssh::missing();
    notes.extend(ssh_missing.clone());
    let svc = service::start().await?;

    let mut rows = Vec::new();
    let kinds: Vec<&str> = vec![
        "direct",
        "relays",
        "rathole-tls",
        "rathole-tcp",
        "bore",
        "tunneld-yamux",
        "tunneld-h2",
        "tunneld-ws",
        "tunneld-connect-named",
        "tunneld-connect-parked",
        "tunneld-yamux-cluster",
        "tunneld-ssh",
    ];
    for kind in kinds {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == kind) {
            continue;
        }
        let dir = work.join(kind);
        std::fs::create_dir_all(&dir)?;
        let started: Result<Option<(System, bool)>> = async {
            Ok(match kind {
                "direct" => Some((systems::direct(svc.addr), false)),
                "relays" => Some((systems::relays(svc.addr, &dir).await?, false)),
                "rathole-tls" => match &rathole {
                    Some(b) => Some((systems::rathole(b, true, svc.addr, &dir).await?, true)),
                    None => None,
                },
                "rathole-tcp" => match &rathole {
                    Some(b) => Some((systems::rathole(b, false, svc.addr, &dir).await?, false)),
                    None => None,
                },
                "bore" => match &bore {
                    Some(b) => Some((systems::bore(b, svc.addr, &dir).await?, false)),
                    None => None,
                },
                "tunneld-yamux-cluster" => match cluster::missing() {
                    Some(why) => {
                        notes.push(why);
                        None
                    }
                    None => Some((cluster::tunneld_cluster(&bins, svc.addr, &dir).await?, true)),
                },
                "tunneld-connect-named" | "tunneld-connect-parked" => {
                    let via = if kind.ends_with("named") {
                        rendezvous::Via::Named
                    } else {
                        rendezvous::Via::Parked
                    };
                    let sys = rendezvous::tunneld_connect(via, &bins, svc.addr, &dir).await?;
                    Some((sys, true))
                }
                "tunneld-ssh" if ssh_missing.is_some() => None,
                "tunneld-ssh" => Some((openssh::tunneld_ssh(&bins, svc.addr, &dir).await?, true)),
                _ => {
                    let t = match kind {
                        "tunneld-h2" => Transport::H2Reverse,
                        "tunneld-ws" => Transport::Websocket,
                        _ => Transport::Yamux,
                    };
                    Some((systems::tunneld(t, &bins, svc.addr, &dir).await?, t.tls()))
                }
            })
        }
        .await;
        let (system, tls) = match started {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) if kind.starts_with("rathole") || kind == "bore" => {
                notes.push(format!("{kind}: could not start ({e:#}); skipped"));
                continue;
            }
            Err(e) => return Err(e.context(format!("starting {kind}"))),
        };
        eprintln!("measuring {} ...", system.name);
        let prof = profiler.as_ref().filter(|_| kind.starts_with("tunneld"));
        let measured = measure::measure(&system, tls, &svc, &settings, prof.map(|p| (p, kind)))
            .await
            .with_context(|| format!("measuring {}", system.name));
        drop(system);
        match measured {
            Ok(row) => rows.push(row),
            // A whole run is not thrown away for one row; the smoke test still fails on it.
            Err(e) if !cli.smoke => {
                eprintln!("{e:#}");
                notes.push(format!("{e:#}: the row is left out"));
            }
            Err(e) => return Err(e),
        }
    }
    let https = if cli.only.is_empty() || cli.only.iter().any(|o| o == "https") {
        https_rows(
            &bins,
            svc.addr,
            &work,
            &settings,
            profiler.as_ref(),
            &mut notes,
        )
        .await?
    } else {
        Vec::new()
    };
    let crowd = if cli.only.is_empty() || cli.only.iter().any(|o| o == "crowd") {
        crowd::rows(&bins, &work, settings.crowd).await?
    } else {
        Vec::new()
    };
    let rounds = cli.rounds.unwrap_or(if cli.smoke { 1 } else { 5 });
    let wanted = |kind: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == kind);
    let mut pairs = match rounds {
        0 => Vec::new(),
        _ if !wanted("pairs") => Vec::new(),
        rounds => {
            let rathole = rathole.as_deref();
            pairs::rows(
                &bins, rathole, svc.addr, &work, &settings, rounds, &mut notes,
            )
            .await?
        }
    };
    if rounds > 0 && wanted("transport-turns") {
        let ssh = ssh_missing.is_none();
        let strict = cli.smoke;
        pairs.extend(
            transport_turns::rows(
                &bins, svc.addr, &work, &settings, rounds, ssh, strict, &mut notes,
            )
            .await?,
        );
    }
    let report = Report {
        machine: machine(),
        settings: format!(
            "throughput {} MiB x{} (median), HTTP {} connections x {}s x{} (median), {} fresh connections for setup latency, {} idle connections for memory",
            settings.bytes >> 20,
            settings.reps,
            settings.http_conns,
            settings.http_secs,
            settings.reps,
            settings.setups,
            settings.idle
        ),
        rows,
        https,
        crowd,
        pairs,
        notes,
    };
    let md = report.markdown();
    print!("{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("wrote {}/results.md and results.json", out.display());
    Ok(())
}

/// The HTTPS rows (h2load visitors): tunneld's https-subdomain frontend over h2-reverse,
/// yamux and websocket (with and without kept-alive connections), and nginx terminating TLS
/// in front of the same service (1 and 2 workers).
async fn https_rows(
    bins: &Path,
    service: std::net::SocketAddr,
    work: &Path,
    s: &Settings,
    profiler: Option<&profile::Profiler>,
    notes: &mut Vec<String>,
) -> Result<Vec<https::HttpsRow>> {
    if let Some(n) = https::h2load_missing() {
        notes.push(n);
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for kind in [
        "https-h2",
        "https-h2-noreuse",
        "https-yamux",
        "https-yamux-noreuse",
        "https-websocket",
        "websocket-host",
        "rendezvous-visitors",
        "nginx-1",
        "nginx-2",
    ] {
        let dir = work.join(kind);
        std::fs::create_dir_all(&dir)?;
        let public = match kind {
            "https-h2" => https::tunneld("h2-reverse", true, bins, service, &dir).await?,
            // The same without tunnelc's kept-alive connections: what they are worth.
            "https-h2-noreuse" => https::tunneld("h2-reverse", false, bins, service, &dir).await?,
            "https-yamux" => https::tunneld("yamux", true, bins, service, &dir).await?,
            // Without tunneld's kept-alive streams: a stream and a local connection a request.
            "https-yamux-noreuse" => https::tunneld("yamux", false, bins, service, &dir).await?,
            "https-websocket" => https::tunneld("websocket", true, bins, service, &dir).await?,
            // The websocket setup again, visitors by Host on the transport's own plain port.
            "websocket-host" => https::tunneld("websocket", true, bins, service, &dir)
                .await?
                .websocket_by_host()?,
            "rendezvous-visitors" => {
                let (public, header) = rendezvous::visitors(bins, service, &dir).await?;
                public.h1_with(header)
            }
            _ => match https::nginx_path() {
                Some(n) => {
                    let workers = if kind == "nginx-1" { 1 } else { 2 };
                    match https::nginx(&n, workers, service, &dir).await {
                        Ok(p) => p,
                        Err(e) => {
                            notes.push(format!("{kind}: could not start ({e:#}); skipped"));
                            continue;
                        }
                    }
                }
                None => {
                    notes.push(format!("{kind}: nginx is not installed; skipped"));
                    continue;
                }
            },
        };
        eprintln!("measuring {} ...", public.name);
        match https::measure(&public, s.http_conns, s.http_secs, &dir).await {
            Ok(row) => out.push(row),
            // The tunneld rows must measure; a peer that fails is left out with a note.
            Err(e) if kind.starts_with("nginx") => {
                notes.push(format!("{}: {e:#}; skipped", public.name));
            }
            Err(e) => return Err(e.context(format!("measuring {}", public.name))),
        }
        if let (Some(p), false) = (profiler, kind.starts_with("nginx")) {
            // Its own directory: h2load's output of the measured run stays as it was.
            let pdir = dir.join("profiled");
            std::fs::create_dir_all(&pdir)?;
            let load = https::h2load(&public, false, s.http_conns, s.http_secs, &pdir);
            if let Err(e) = p.record(kind, &public.pids(), load).await {
                eprintln!("profiling {kind} failed (the row's figures stand): {e:#}");
            }
        }
    }
    Ok(out)
}
