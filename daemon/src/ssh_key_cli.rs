//! `tunneld token ssh-key add|list|remove` and the keys of `tunneld token add --ssh-key`:
//! SSH public keys in the state store that authenticate as a stored token's client on `ssh`
//! transports. Keys of config-file clients belong in `auth.tokens.<client>.ssh_keys`.

use crate::config::server::ServerConfig;
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use tunneld_core::ssh_keys::{parse_line, PublicKeyLine};
use tunneld_state::{self as state, SshKeyRecord, StateStore};

#[derive(Subcommand, Debug)]
pub enum SshKeyCmd {
    /// Let an SSH key authenticate as a stored token's client.
    Add {
        /// The token's name.
        name: String,
        /// The public key line (`ssh-ed25519 AAAA... comment`).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        line: Option<String>,
        /// A .pub or authorized_keys-style file: one key per line, `#` comments and blank
        /// lines skipped.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List stored SSH keys (of one client, or all).
    List { name: Option<String> },
    /// Remove a key by its fingerprint (`SHA256:...`, as `ssh-keygen -lf` prints it).
    Remove { fingerprint: String },
}

/// The keys of one file, each line's error naming the file and the line.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<PublicKeyLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read SSH key file {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let k = parse_line(t).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        keys.push(k);
    }
    if keys.is_empty() {
        bail!("{}: no SSH public key in the file", path.display());
    }
    Ok(keys)
}

/// Parses `--ssh-key` lines and `--ssh-key-file` files, in order.
pub fn collect(lines: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<PublicKeyLine>> {
    let mut keys = Vec::new();
    for l in lines {
        keys.push(parse_line(l).map_err(|e| anyhow::anyhow!("--ssh-key: {e}"))?);
    }
    for f in files {
        keys.extend(read_key_file(f)?);
    }
    Ok(keys)
}

/// Who holds a key already, if anyone: a stored key's client (and tunnel) or a config-file
/// client.
pub fn holder(
    cfg: &ServerConfig,
    store: &dyn StateStore,
    fingerprint: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(k) = store.ssh_key(fingerprint)? {
        return Ok(Some(match k.tunnel {
            Some(t) => format!("client `{}` (tunnel `{t}`)", k.client),
            None => format!("client `{}`", k.client),
        }));
    }
    for (client, t) in &cfg.auth.tokens {
        if t.ssh_keys
            .iter()
            .any(|l| parse_line(l).is_ok_and(|k| k.fingerprint == fingerprint))
        {
            return Ok(Some(format!(
                "client `{client}` of the config file (auth.tokens.{client}.ssh_keys)"
            )));
        }
    }
    Ok(None)
}

/// Refuses keys already held (or listed twice), before anything is written.
pub fn check_free(
    cfg: &ServerConfig,
    store: &dyn StateStore,
    keys: &[PublicKeyLine],
) -> anyhow::Result<()> {
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].iter().any(|o| o.fingerprint == k.fingerprint) {
            bail!("SSH key {} is given twice", k.fingerprint);
        }
        if let Some(h) = holder(cfg, store, &k.fingerprint)? {
            bail!("SSH key {} is already bound to {h}", k.fingerprint);
        }
    }
    Ok(())
}

/// Stores keys for `client` (checked with [`check_free`] first) and prints each.
pub fn store_keys(
    store: &dyn StateStore,
    client: &str,
    keys: &[PublicKeyLine],
) -> anyhow::Result<()> {
    for k in keys {
        store.add_ssh_key(&SshKeyRecord {
            fingerprint: k.fingerprint.clone(),
            key: k.canonical(),
            comment: k.comment.clone(),
            client: client.to_string(),
            tunnel: None,
            created_at: state::now(),
        })?;
        println!("ssh_key: {} {}", k.fingerprint, k.algorithm);
    }
    Ok(())
}

pub fn ssh_key(cfg: &ServerConfig, store: &dyn StateStore, cmd: SshKeyCmd) -> anyhow::Result<()> {
    match cmd {
        SshKeyCmd::Add { name, line, file } => {
            if store.token(&name)?.is_none() {
                if cfg.auth.tokens.contains_key(&name) {
                    bail!("`{name}` is a token of the config file: list its keys in auth.tokens.{name}.ssh_keys there");
                }
                bail!("no token named `{name}` in the state store");
            }
            let keys = collect(line.as_slice(), file.as_slice())?;
            check_free(cfg, store, &keys)?;
            store_keys(store, &name, &keys)?;
            println!("a running tunneld accepts the key(s) at once");
        }
        SshKeyCmd::List { name } => list(store, name.as_deref())?,
        SshKeyCmd::Remove { fingerprint } => {
            if !store.remove_ssh_key(&fingerprint)? {
                bail!("no stored SSH key {fingerprint} (see `tunneld token ssh-key list`)");
            }
            println!("removed {fingerprint}: refused for new sessions from now on");
        }
    }
    Ok(())
}

fn list(store: &dyn StateStore, name: Option<&str>) -> anyhow::Result<()> {
    let all = store.ssh_keys(name)?;
    if all.is_empty() {
        println!("no SSH keys in the state store (keys in the config file are not listed)");
        return Ok(());
    }
    println!("FINGERPRINT\tALGORITHM\tCOMMENT\tCLIENT\tTUNNEL\tCREATED");
    for k in all {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            k.fingerprint,
            k.algorithm(),
            k.comment.as_deref().unwrap_or("-"),
            k.client,
            k.tunnel.as_deref().unwrap_or("-"),
            state::rfc3339(k.created_at)
        );
    }
    Ok(())
}
