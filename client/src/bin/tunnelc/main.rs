//! tunnelc: exposes local services through a tunneld.
#![forbid(unsafe_code)]

/// jemalloc with a background thread gives freed memory back to the OS within seconds
/// (glibc's malloc kept it all after a burst of connections); its settings are in
/// .cargo/config.toml, the figures in docs/benchmarks.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunneld_client::client::ClientEvent;
use tunneld_client::config::client::ClientConfig;
use tunneld_client::config::log::LogFormat;
use tunneld_client::inspect::start;
use tunneld_client::logging;
use tunneld_client::reload::Source;
use tunneld_core::proto::{TunnelKind, TunnelStatus};

mod quick;
mod workflow;

use quick::quick_config;
use workflow::workflow;

/// Tunnel client: connects out to a tunneld and serves its visitors from local services.
#[derive(Parser, Debug)]
#[command(name = "tunnelc", version)]
struct Cli {
    /// YAML configuration; without it the embedded default (client.example.yaml) is used.
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
    /// Override one key, e.g. --set server=tunnels.example.com:7000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// Serve the request inspector of the http tunnels at this loopback address (over
    /// `inspect.address`); `off` for none. `tunnelc http` serves one at 127.0.0.1:4040
    /// (or the next free port up to 4049) unless told.
    #[arg(long, value_name = "ADDR|off", global = true)]
    inspect: Option<String>,
    #[command(subcommand)]
    quick: Option<Quick>,
}

#[derive(Subcommand, Debug)]
enum Quick {
    /// Expose one local TCP service without a config file.
    Tcp {
        /// The local service, host:port.
        local: String,
        /// tunneld's transport address, host:port.
        #[arg(long, env = "TUNNELC_SERVER")]
        server: String,
        /// The token tunneld knows this client by.
        #[arg(long, env = "TUNNELC_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        trust: TrustArgs,
        /// Ask for this public port.
        #[arg(long)]
        remote_port: Option<u16>,
        /// The tunnel's name.
        #[arg(long, default_value = "tcp")]
        name: String,
        /// Send a PROXY protocol header to the local service.
        #[arg(long, value_parser = ["v1", "v2"])]
        proxy_protocol: Option<String>,
    },
    /// Publish a local web service at <subdomain>.<server> over the websocket transport (as
    /// TPoT's `tpot http`). Defaults come from ~/.config/tunnelc/config.yaml.
    Http(HttpArgs),
    /// Register a tunnel through tunneld's provisioning API (as pipe2me's setup): writes its
    /// client config, key, certificate and CA into --dir/<name> and prints its endpoints.
    Setup(SetupCli),
    /// The tunnels `setup` wrote: endpoints, state at tunneld, certificate expiry.
    List {
        #[arg(long, env = "TUNNELC_DIR")]
        dir: Option<PathBuf>,
        /// One JSON array instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Sourceable KEY=value lines (endpoints, paths of cert, key, CA) for a set-up tunnel.
    Env {
        /// The tunnel (default: every tunnel in --dir).
        name: Option<String>,
        #[arg(long, env = "TUNNELC_DIR")]
        dir: Option<PathBuf>,
    },
    /// Run echo services on the local ports, connect, and check every public endpoint end to
    /// end: one PASS/FAIL line each; exits 1 on any failure.
    Test {
        /// The tunnel (default: every tunnel in --dir).
        name: Option<String>,
        #[arg(long, env = "TUNNELC_DIR")]
        dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Docs(tunneld_client::cli_docs::DocsCmd),
}

#[derive(clap::Args, Debug)]
struct SetupCli {
    /// The provisioning API, https://host[:port] (tunneld's control.listen).
    #[arg(long, env = "TUNNELC_SERVER")]
    server: String,
    /// A token from `tunneld token add`.
    #[arg(long, env = "TUNNELC_TOKEN", hide_env_values = true)]
    token: String,
    /// The public name (default: a readable <mood>-<color>-<animal>).
    #[arg(long)]
    name: Option<String>,
    /// http, https and/or tcp, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "https")]
    protocols: Vec<String>,
    /// One local port per protocol, same order (default 8080 http, 9443 https, 2222 tcp).
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Where to write the tunnel's directory (default $TUNNELC_DIR, $XDG_DATA_HOME/tunnelc or
    /// ~/.local/share/tunnelc).
    #[arg(long, env = "TUNNELC_DIR")]
    dir: Option<PathBuf>,
    /// `ssh`: run the tunnel with stock OpenSSH (writes a key pair, known_hosts and an
    /// ssh_config; no tunnelc needed); or tunneld's own transport (yamux, h2-reverse).
    /// Default: the server's control.transport.
    #[arg(long)]
    transport: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
}

/// How tunnelc trusts tunneld's certificate (shared by the subcommands that dial it).
#[derive(clap::Args, Debug, Clone, Default)]
struct TrustArgs {
    /// PEM CA to trust (tunneld's state/tls/ca.pem); default: the system bundle.
    #[arg(long, conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Trust exactly this certificate (sha256:<hex>, as tunneld prints it).
    #[arg(long)]
    pin: Option<String>,
    /// Name to check in the certificate (default: the server's host).
    #[arg(long)]
    server_name: Option<String>,
}

#[derive(clap::Args, Debug)]
struct HttpArgs {
    /// The local web service: `port`, `host:port` or `http://host:port`.
    target: String,
    /// tunneld's URL, http(s)://host[:port].
    #[arg(short = 't', long)]
    server: Option<String>,
    /// The token tunneld knows this client by.
    #[arg(long, env = "TUNNELC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A TPoT key instead of a token.
    #[arg(short = 'k', long, env = "TUNNELC_AUTH_KEY", hide_env_values = true)]
    auth_key: Option<String>,
    /// Ask for this subdomain (kept across reconnects either way).
    #[arg(short = 's', long)]
    subdomain: Option<String>,
    /// Rewrite every request's Host to this (default: the target's host:port).
    #[arg(long, conflicts_with = "no_host_rewrite")]
    http_host: Option<String>,
    /// Pass the Host header through unchanged.
    #[arg(long)]
    no_host_rewrite: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

fn fail_config(lines: &[String]) -> ! {
    eprintln!("tunnelc: invalid configuration:");
    for line in lines {
        eprintln!("  {line}");
    }
    std::process::exit(1);
}

fn main() {
    // Bare `tunnelc` (no argument, no TUNNELC_* setting) asks for nothing: usage, not a
    // connection attempt on the embedded demo config.
    let bare = std::env::args_os().len() == 1
        && !std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("TUNNELC_"));
    if bare {
        let _ = Cli::command().print_help();
        eprintln!("\ntunnelc: nothing to do: give --config FILE, a quick mode (`tunnelc http 8080 ...`) or a command (`tunnelc setup ...`)");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    if let Some(result) = cli.quick.as_ref().and_then(workflow) {
        match result {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("tunnelc: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let http_mode = matches!(cli.quick, Some(Quick::Http(_)));
    let source = match (&cli.quick, &cli.config) {
        (None, Some(file)) => Some(Source {
            file: file.clone(),
            sets: cli.sets.clone(),
        }),
        _ => None,
    };
    let cfg = match cli.quick {
        Some(q) => {
            let c = quick_config(q).unwrap_or_else(|lines| fail_config(&lines));
            if let Err(e) = c.validate() {
                fail_config(&e.lines);
            }
            c
        }
        None => ClientConfig::load(cli.config.as_deref(), &cli.sets)
            .unwrap_or_else(|e| fail_config(&e.lines)),
    };
    if cli.check {
        println!(
            "configuration ok: {} tunnel(s), {} rendezvous id(s) to {}",
            cfg.tunnels.len(),
            cfg.rendezvous.len(),
            cfg.server_list().join(", ")
        );
        return;
    }
    let inspect = start::plan(cli.inspect.as_deref(), &cfg, http_mode)
        .unwrap_or_else(|line| fail_config(&[line]));
    let level = cli.log_level.clone().or_else(|| cfg.log.level.clone());
    let (format, threads) = (
        cli.log_format.unwrap_or(cfg.log.format),
        cfg.runtime_threads(),
    );
    // Every error that reaches here is one retrying cannot fix (the rest are retried).
    logging::run_main_exiting(
        "tunnelc",
        level.as_deref(),
        format,
        threads,
        run(cfg, http_mode, source, inspect),
        2,
    );
}

fn print_tunnels(tunnels: &[TunnelStatus]) {
    for t in tunnels {
        match (&t.endpoint, &t.error) {
            (Some(ep), _) => println!("tunnel {}: {ep}", t.name),
            (None, Some(err)) if t.retrying => {
                println!("tunnel {} waiting: {err} (tunneld tries again)", t.name)
            }
            (None, Some(err)) => println!("tunnel {} refused: {err}", t.name),
            (None, None) => println!("tunnel {}: no endpoint", t.name),
        }
    }
}

async fn run(
    cfg: ClientConfig,
    http_mode: bool,
    source: Option<Source>,
    inspect: Option<start::Plan>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let inspector = match inspect {
        Some(plan) => start::start(plan).await?,
        None => None,
    };
    let inspect_url = inspector.as_ref().map(|(_, a)| format!("http://{a}"));
    if let Some(url) = &inspect_url {
        tracing::info!("request inspector at {url}");
        if !cfg.tunnels.values().any(|t| t.kind == TunnelKind::Http) {
            tracing::warn!("the request inspector records `type: http` tunnels, and this configuration has none");
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Where rendezvous connections park: each moves on to the next server on errors.
    let parked_where = match cfg.server_list().as_slice() {
        [one] => one.clone(),
        all => format!("one of {}", all.join(", ")),
    };
    let both_on_terminal = {
        use std::io::IsTerminal;
        std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
    };
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                ClientEvent::Connected { tunnels, .. } if http_mode => {
                    // TPoT's output: `connected`, then the public URL.
                    println!("connected");
                    for t in &tunnels {
                        match (&t.endpoint, &t.error) {
                            (Some(ep), _) => println!("{ep}"),
                            (None, Some(err)) => println!("refused: {err}"),
                            (None, None) => println!("no endpoint"),
                        }
                    }
                    if let Some(url) = &inspect_url {
                        println!("inspector: {url}");
                    }
                }
                ClientEvent::Connected {
                    server,
                    client_id,
                    tunnels,
                } => {
                    println!("connected to {server} as {client_id}");
                    print_tunnels(&tunnels);
                    if let Some(url) = &inspect_url {
                        println!("inspector: {url}");
                    }
                }
                ClientEvent::TunnelsChanged { tunnels } => {
                    println!("tunnels changed:");
                    print_tunnels(&tunnels);
                }
                ClientEvent::Reloaded { line } => println!("{line}"),
                ClientEvent::Parked { id } => {
                    println!("rendezvous {id}: parked at {parked_where}");
                }
                // On a terminal the log line (stderr) already says it: one line per event.
                ClientEvent::Disconnected { .. } if both_on_terminal => {}
                ClientEvent::Disconnected { reason, retry_in } => {
                    println!(
                        "disconnected: {reason}; retrying in {:.1} s",
                        retry_in.as_secs_f64()
                    );
                }
            }
        }
    });
    let reloads = tunneld_client::reload::signals(&stop)?;
    let inspector = inspector.map(|(i, _)| i);
    let result = tunneld_client::reload::run(cfg, source, inspector, tx, stop, reloads).await;
    let _ = printer.await;
    result
}
