//! tunneld: the public side of the tunnels.
#![forbid(unsafe_code)]

/// jemalloc with a background thread gives freed memory back to the OS within seconds
/// (glibc's malloc kept it all after a burst of connections); its settings are in
/// .cargo/config.toml, the figures in docs/benchmarks.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tunneld_client::cli_docs::DocsCmd;
use tunneld_client::logging;
use tunneld_daemon::config::server::{LogFormat, ServerConfig};
use tunneld_daemon::reload::Source;
use tunneld_daemon::state_cli::{RendezvousCmd, StateCmd, TokenCmd};
use tunneld_daemon::{server, state_cli};

/// Reverse-tunnel daemon: tunnel clients connect out to it, visitors reach their services
/// through it.
#[derive(Parser, Debug)]
#[command(name = "tunneld", version)]
struct Cli {
    /// YAML configuration; without it the embedded default (config.example.yaml) is used.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
    /// Override one key, e.g. --set admin.listen=127.0.0.1:9000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Log filter (overrides log.level; RUST_LOG overrides both).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage tokens kept in the state store (<state_dir>/state.db); a running tunneld sees
    /// changes at once.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Manage rendezvous ids (kept in the state store; a running tunneld sees changes at
    /// once).
    #[command(subcommand)]
    Rendezvous(RendezvousCmd),
    /// Check or back up the state store.
    #[command(subcommand)]
    State(StateCmd),
    /// `completions SHELL` and `man`: generated from these definitions, before any
    /// configuration is read.
    #[command(flatten)]
    Docs(DocsCmd),
}

/// Whether a command may create the state store: only those that add something. The others
/// name the file they use and never create one (a `token list` in the wrong directory must
/// not leave a `state/state.db` behind).
fn creates_store(cmd: &Command) -> bool {
    use tunneld_daemon::ssh_key_cli::SshKeyCmd;
    matches!(
        cmd,
        Command::Token(TokenCmd::Add { .. })
            | Command::Token(TokenCmd::SshKey(SshKeyCmd::Add { .. }))
            | Command::Rendezvous(RendezvousCmd::Add { .. })
    )
}

fn command(cfg: &ServerConfig, cmd: Command) -> anyhow::Result<()> {
    let file = cfg.state_dir.join(tunneld_state::FILE);
    if let Some(c) = &cfg.cluster {
        // Cluster mode: the store is the cluster's Redis (it is there or the open fails).
        let redis = tunneld_daemon::config::cluster::redact(&c.redis);
        eprintln!("state store: {redis} (prefix {})", c.prefix);
    } else if !creates_store(&cmd) {
        if !file.exists() {
            anyhow::bail!(
                "no state store at {} (nothing was created): tunneld makes it at its first start, or `tunneld token add`; check --config and state_dir",
                file.display()
            );
        }
        eprintln!("state store: {}", file.display());
    }
    let store = server::open_store(cfg)?;
    match cmd {
        Command::Token(c) => state_cli::token(cfg, &*store, c),
        Command::Rendezvous(c) => state_cli::rendezvous(&*store, c),
        Command::State(c) => {
            let shown = match &cfg.cluster {
                Some(c) => {
                    std::path::PathBuf::from(tunneld_daemon::config::cluster::redact(&c.redis))
                }
                None => file,
            };
            state_cli::state_cmd(&*store, &shown, c)
        }
        Command::Docs(_) => Ok(()), // answered in main, before the configuration is read
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Docs(d)) = &cli.command {
        use clap::CommandFactory;
        d.run_and_exit(Cli::command());
    }
    let cfg = match ServerConfig::load(cli.config.as_deref(), &cli.sets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tunneld: invalid configuration:");
            for line in &e.lines {
                eprintln!("  {line}");
            }
            std::process::exit(1);
        }
    };
    if let Some(cmd) = cli.command {
        if let Err(e) = command(&cfg, cmd) {
            eprintln!("tunneld: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if cli.check {
        println!(
            "configuration ok: {} transport(s), {} frontend(s)",
            cfg.transports.len(),
            cfg.frontends.len()
        );
        return;
    }
    let level = cli.log_level.clone().or_else(|| cfg.log.level.clone());
    let source = cli.config.clone().map(|file| Source {
        file,
        sets: cli.sets.clone(),
    });
    let threads = cfg.worker_threads;
    logging::run_main_exiting(
        "tunneld",
        level.as_deref(),
        cli.log_format.unwrap_or(cfg.log.format),
        threads,
        run(cfg, source),
        1,
    );
}

async fn run(cfg: ServerConfig, source: Option<Source>) -> anyhow::Result<()> {
    let ssh_keys = ssh_host_keys(&cfg);
    // Installed first: a SIGHUP while starting must not end tunneld (its default action).
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;
    let running = server::start(cfg).await?;
    running.reloader.set_source(source);
    for (name, addr) in &running.transports {
        println!("listening transport={name} addr={addr}");
    }
    for (name, addr) in &running.frontends {
        println!("listening frontend={name} addr={addr}");
    }
    if let Some(a) = running.admin {
        println!("listening admin addr={a}");
    }
    if let Some(c) = &running.cluster {
        println!("listening cluster node={} addr={}", c.cfg.node, c.link_addr);
    }
    if let Some(c) = running.control {
        println!("listening control addr={}", c.api);
        if let Some(w) = c.web {
            println!("listening web addr={w}");
        }
    }
    if let Some(ca) = &running.ca_file {
        println!("trust ca={} pin={}", ca.display(), running.fingerprint);
    }
    for (name, path) in ssh_keys {
        // The transport made or loaded it at start: compare with ssh's first-contact prompt.
        if let Ok(key) = tunneld_transport_ssh::host_key::load_or_create(&path, false) {
            println!(
                "trust ssh={name} host_key={} known_hosts_key=\"{}\"",
                tunneld_transport_ssh::host_key::fingerprint(&key),
                tunneld_transport_ssh::host_key::public_line(&key)
            );
        }
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&running).await,
        }
    }
    tracing::info!(
        "signal received: no new connections; draining open streams (signal again to exit now)"
    );
    tokio::select! {
        drained = running.stop() => {
            tracing::info!(drained, "stopped");
            Ok(())
        }
        _ = term.recv() => { tracing::warn!("second signal: exiting now"); std::process::exit(130) }
        _ = int.recv() => { tracing::warn!("second signal: exiting now"); std::process::exit(130) }
    }
}

/// SIGHUP: reloads, and says how it went on stdout too (the log has each error).
async fn reload(running: &server::Running) {
    tracing::info!("SIGHUP: reloading the configuration");
    match running.reloader.reload().await {
        Ok(s) => {
            for (key, addr) in &s.listening {
                let (kind, name) = key.split_once('.').unwrap_or(("", key));
                println!(
                    "listening {}={name} addr={addr}",
                    kind.trim_end_matches('s')
                );
            }
            let how = if s.failed.is_empty() {
                "reloaded"
            } else {
                "reloaded in part"
            };
            println!("{how}: {}", s.line());
        }
        Err(e) => println!("reload failed: {e}"),
    }
}

/// The host key file of each ssh transport.
fn ssh_host_keys(cfg: &ServerConfig) -> Vec<(String, std::path::PathBuf)> {
    use tunneld_daemon::config::server::TransportConfig;
    cfg.transports
        .iter()
        .filter_map(|(name, t)| match t {
            TransportConfig::Ssh(c) => Some((
                name.clone(),
                c.host_key.clone().unwrap_or_else(|| {
                    cfg.state_dir
                        .join(tunneld_transport_ssh::host_key::DEFAULT_FILE)
                }),
            )),
            _ => None,
        })
        .collect()
}
