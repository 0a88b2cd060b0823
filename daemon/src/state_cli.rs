//! `tunneld token ...`, `tunneld rendezvous ...` and `tunneld state ...`: edit the state
//! store directly (safe while tunneld runs: SQLite serializes writers, and tunneld reads
//! tokens and ids at each use).

use crate::config::server::ServerConfig;
use crate::rendezvous_ids as rdv;
use crate::ssh_key_cli as keys;
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::PathBuf;
use tunneld_core::auth::{hex, random_bytes, sha256};
use tunneld_state::{self as state, rfc3339, StateStore, TokenRecord};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; prints it once (tunneld keeps only its SHA-256).
    Add {
        /// The token's name, which is also the client id of its sessions.
        name: String,
        /// Ports its tunnels may hold at once.
        #[arg(long)]
        max_ports: Option<u32>,
        /// Names (subdomains, provisioned tunnels) it may hold at once.
        #[arg(long)]
        max_names: Option<u32>,
        /// Validity, e.g. 30d or 12h; sessions are cut when it ends.
        #[arg(long)]
        lifespan: Option<String>,
        /// May create one tunnel only.
        #[arg(long)]
        single_use: bool,
        /// Transports (names or types) its sessions may use, comma-separated.
        #[arg(long, value_delimiter = ',')]
        transports: Option<Vec<String>>,
        /// An SSH public key line that authenticates as this client on `ssh` transports
        /// (repeatable).
        #[arg(long = "ssh-key", value_name = "LINE")]
        ssh_keys: Vec<String>,
        /// A .pub or authorized_keys-style file of such keys (repeatable).
        #[arg(long = "ssh-key-file", value_name = "PATH")]
        ssh_key_files: Vec<PathBuf>,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from now on and its live sessions are cut.
    Revoke { name: String },
    /// SSH keys of stored tokens.
    #[command(subcommand)]
    SshKey(crate::ssh_key_cli::SshKeyCmd),
}

#[derive(Subcommand, Debug)]
pub enum RendezvousCmd {
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
        /// Import this base32 TOTP secret (from another node-rendezvous server) instead of
        /// creating one, so its hidden servers keep working unchanged.
        #[arg(long)]
        secret: Option<String>,
    },
    /// List the ids (never their secrets).
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Delete an id; connections parked for it stop serving (within seconds, on a running
    /// tunneld).
    Remove { id: String },
    /// Give an id a new secret (same step and client); prints it like `add`. Connections
    /// parked with the old secret stop serving.
    Rotate { id: String },
}

#[derive(Subcommand, Debug)]
pub enum StateCmd {
    /// Check the store's integrity (exit 1 when damaged).
    Check,
    /// Write a consistent copy of the store to FILE, safe while tunneld runs.
    Backup { file: PathBuf },
}

/// A new random token: `tk_` and 32 URL-safe characters (192 bits).
pub fn new_token() -> String {
    format!(
        "tk_{}",
        data_encoding::BASE64URL_NOPAD.encode(&random_bytes::<24>())
    )
}

fn limit(v: Option<u32>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn token(cfg: &ServerConfig, store: &dyn StateStore, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Add {
            name,
            max_ports,
            max_names,
            lifespan,
            single_use,
            transports,
            ssh_keys,
            ssh_key_files,
        } => {
            let now = state::now();
            let expires_at =
                check_add(cfg, &name, lifespan.as_deref(), transports.as_deref(), now)?;
            // Keys are checked before the token is written: a bad key adds nothing.
            let keys = keys::collect(&ssh_keys, &ssh_key_files)?;
            keys::check_free(cfg, store, &keys)?;
            let token = new_token();
            store.add_token(&TokenRecord {
                name: name.clone(),
                digest: hex(&sha256(token.as_bytes())),
                max_ports,
                max_names,
                expires_at,
                single_use,
                used_at: None,
                transports: transports.clone(),
                revoked_at: None,
                created_at: now,
            })?;
            println!("token: {token}");
            println!("name: {name}");
            println!("max_ports: {}", limit(max_ports));
            println!("max_names: {}", limit(max_names));
            println!("expires: {}", expires_at.map_or("never".into(), rfc3339));
            println!("single_use: {single_use}");
            println!(
                "transports: {}",
                transports.map_or("any".into(), |t| t.join(","))
            );
            keys::store_keys(store, &name, &keys)?;
            eprintln!(
                "Keep the token now: tunneld stores only its SHA-256 and cannot show it again."
            );
        }
        TokenCmd::List { json } => list_tokens(store, json)?,
        TokenCmd::SshKey(c) => keys::ssh_key(cfg, store, c)?,
        TokenCmd::Revoke { name } => {
            if !store.revoke_token(&name, state::now())? {
                if cfg.auth.tokens.contains_key(&name) {
                    bail!(
                        "`{name}` is a token of the config file: remove auth.tokens.{name} there"
                    );
                }
                bail!("no token named `{name}` in the state store");
            }
            println!("revoked {name}: refused from now on; a running tunneld cuts its sessions within a second");
        }
    }
    Ok(())
}

/// The checks of `token add` before anything is written; returns when the token expires.
fn check_add(
    cfg: &ServerConfig,
    name: &str,
    lifespan: Option<&str>,
    transports: Option<&[String]>,
    now: u64,
) -> anyhow::Result<Option<u64>> {
    if !tunneld_core::hub::valid_tunnel_name(name) {
        bail!("token name `{name}` is invalid: use 1-63 letters, digits, `-`, `_` or `.`");
    }
    if cfg.auth.tokens.contains_key(name) {
        bail!("token name `{name}` is already a client id in the config file (auth.tokens.{name})");
    }
    let expires_at = match lifespan {
        Some(l) => {
            let d =
                tunneld_core::duration::parse(l).map_err(|e| anyhow::anyhow!("--lifespan: {e}"))?;
            if d.as_secs() == 0 {
                bail!("--lifespan: must be at least 1s");
            }
            Some(now + d.as_secs())
        }
        None => None,
    };
    if let Some(list) = transports {
        for t in list {
            let known = cfg.transports.keys().any(|k| k == t)
                || crate::config::server::TRANSPORT_TYPES.contains(&t.as_str());
            if !known {
                bail!(
                    "--transports: `{t}` is neither a transport of this config ({}) nor a transport type",
                    cfg.transports.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    Ok(expires_at)
}

/// `token list`: every stored token with its state and how many tunnels it holds.
fn list_tokens(store: &dyn StateStore, json: bool) -> anyhow::Result<()> {
    let all = store.tokens()?;
    if json {
        let now = state::now();
        let mut rows = Vec::new();
        for t in &all {
            rows.push(serde_json::json!({
                "name": t.name,
                "state": t.state(now),
                "max_ports": t.max_ports,
                "max_names": t.max_names,
                "expires_at": t.expires_at.map(rfc3339),
                "single_use": t.single_use,
                "transports": t.transports,
                "tunnels": store.tunnels(Some(&t.name))?.len(),
                "ssh_keys": store.ssh_keys(Some(&t.name))?.len(),
            }));
        }
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if all.is_empty() {
        println!("no tokens in the state store (tokens in the config file are not listed)");
        return Ok(());
    }
    let now = state::now();
    println!(
        "NAME\tSTATE\tMAX_PORTS\tMAX_NAMES\tEXPIRES\tSINGLE_USE\tTRANSPORTS\tTUNNELS\tSSH_KEYS"
    );
    for t in all {
        let st = t.state(now);
        let tunnels = store.tunnels(Some(&t.name))?.len();
        let keys = store.ssh_keys(Some(&t.name))?.len();
        println!(
            "{}\t{st}\t{}\t{}\t{}\t{}\t{}\t{tunnels}\t{keys}",
            t.name,
            limit(t.max_ports),
            limit(t.max_names),
            t.expires_at.map_or("never".into(), rfc3339),
            t.single_use,
            t.transports.map_or("any".into(), |v| v.join(",")),
        );
    }
    Ok(())
}

fn print_id(id: &str, e: &rdv::IdEntry) {
    println!("id: {id}");
    println!("secret: {}", e.secret);
    println!("step: {}", e.step);
    if let Some(c) = &e.client {
        println!("client: {c}");
    }
    println!("uri: {}", rdv::otpauth_uri(id, e));
}

pub fn rendezvous(store: &dyn StateStore, cmd: RendezvousCmd) -> anyhow::Result<()> {
    match cmd {
        RendezvousCmd::Add {
            id,
            step,
            client,
            secret,
        } => {
            let (id, e) = rdv::add_with_secret(
                store,
                id.as_deref(),
                step,
                client.as_deref(),
                secret.as_deref(),
            )?;
            print_id(&id, &e);
        }
        RendezvousCmd::Rotate { id } => {
            let Some(e) = rdv::rotate(store, &id)? else {
                bail!("no rendezvous id `{id}`");
            };
            print_id(&id, &e);
        }
        RendezvousCmd::List { json: true } => {
            let rows: Vec<_> = rdv::list(store)?
                .iter()
                .map(|(id, e)| {
                    serde_json::json!({
                        "id": id, "step": e.step, "client": e.client, "created": e.created,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        RendezvousCmd::List { json: false } => {
            let ids = rdv::list(store)?;
            if ids.is_empty() {
                println!("no rendezvous ids");
            }
            for (id, e) in &ids {
                println!(
                    "{id} step={} client={} created={}",
                    e.step,
                    e.client.as_deref().unwrap_or("-"),
                    e.created
                );
            }
        }
        RendezvousCmd::Remove { id } => {
            if !rdv::remove(store, &id)? {
                bail!("no rendezvous id `{id}`");
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

pub fn state_cmd(
    store: &dyn StateStore,
    path: &std::path::Path,
    cmd: StateCmd,
) -> anyhow::Result<()> {
    match cmd {
        StateCmd::Check => {
            let r = store.check()?;
            if r != "ok" {
                bail!("{} is damaged:\n{r}", path.display());
            }
            println!(
                "{}: ok ({} tokens, {} tunnels, {} rendezvous ids)",
                path.display(),
                store.tokens()?.len(),
                store.tunnels(None)?.len(),
                store.rendezvous_ids()?.len()
            );
        }
        StateCmd::Backup { file } => {
            store
                .backup(&file)
                .with_context(|| format!("backup to {}", file.display()))?;
            println!("wrote {}", file.display());
        }
    }
    Ok(())
}
