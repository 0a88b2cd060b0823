//! tunneld: the public side of the tunnels.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tunneld_daemon::config::server::{LogFormat, ServerConfig};
use tunneld_daemon::{logging, server};

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
    /// Manage rendezvous ids (kept in <state_dir>/rendezvous.json; a running tunneld picks
    /// up changes by itself).
    #[command(subcommand)]
    Rendezvous(RendezvousCmd),
}

#[derive(Subcommand, Debug)]
enum RendezvousCmd {
    /// Create an id with a new TOTP secret; prints the id, the secret and an otpauth:// URI.
    Add {
        /// The id (default: a random UUID).
        id: Option<String>,
        /// TOTP step in seconds.
        #[arg(long, default_value_t = 30)]
        step: u64,
        /// A tunnel client (token or certificate id) that may park for this id with its own
        /// credentials instead of TOTP codes (what tunnelc does).
        #[arg(long)]
        client: Option<String>,
    },
    /// List the ids (never their secrets).
    List,
    /// Delete an id.
    Remove { id: String },
}

fn rendezvous(cfg: &ServerConfig, cmd: RendezvousCmd) -> anyhow::Result<()> {
    use tunneld_core::rendezvous::store;
    let path = cfg.state_dir.join(store::FILE);
    match cmd {
        RendezvousCmd::Add { id, step, client } => {
            let (id, e) = store::add(&path, id.as_deref(), step, client.as_deref())?;
            println!("id: {id}");
            println!("secret: {}", e.secret);
            println!("step: {}", e.step);
            if let Some(c) = &e.client {
                println!("client: {c}");
            }
            println!("uri: {}", store::otpauth_uri(&id, &e));
        }
        RendezvousCmd::List => {
            let file = store::read(&path)?;
            if file.ids.is_empty() {
                println!("no rendezvous ids in {}", path.display());
            }
            for (id, e) in &file.ids {
                println!(
                    "{id} step={} client={} created={}",
                    e.step,
                    e.client.as_deref().unwrap_or("-"),
                    e.created
                );
            }
        }
        RendezvousCmd::Remove { id } => {
            if !store::remove(&path, &id)? {
                anyhow::bail!("no rendezvous id `{id}` in {}", path.display());
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
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
    if let Some(Command::Rendezvous(cmd)) = cli.command {
        if let Err(e) = rendezvous(&cfg, cmd) {
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
    logging::init(
        cli.log_level.as_deref().or(cfg.log.level.as_deref()),
        cli.log_format.unwrap_or(cfg.log.format),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tunneld: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("tunneld: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let running = server::start(cfg).await?;
    for (name, addr) in &running.transports {
        println!("listening transport={name} addr={addr}");
    }
    for (name, addr) in &running.frontends {
        println!("listening frontend={name} addr={addr}");
    }
    if let Some(a) = running.admin {
        println!("listening admin addr={a}");
    }
    if let Some(ca) = &running.ca_file {
        println!("trust ca={} pin={}", ca.display(), running.fingerprint);
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
