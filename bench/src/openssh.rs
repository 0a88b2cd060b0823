//! tunneld's `ssh` transport with the stock OpenSSH client as the private side:
//! `ssh -N -R 0:<service>` with a key made by `ssh-keygen`, the forward on a ports frontend.

use crate::systems::{start_tunneld, Proc, System, START};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The system's name in the table and the JSON.
pub const NAME: &str = "tunneld ssh (OpenSSH -R)";

/// Why the row cannot run here (`ssh` or `ssh-keygen` missing), or None.
pub fn missing() -> Option<String> {
    for program in ["ssh", "ssh-keygen"] {
        let found = std::process::Command::new(program)
            .arg(if program == "ssh" { "-V" } else { "-?" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{NAME}: `{program}` (OpenSSH client) is not installed; skipped"
            ));
        }
    }
    None
}

/// An ed25519 key pair made by `ssh-keygen` in `dir`: (private key file, public key line).
fn keygen(dir: &Path) -> Result<(PathBuf, String)> {
    let key = dir.join("bench_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "bench", "-t", "ed25519", "-f"])
        .arg(&key)
        .output()
        .context("run ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let public = std::fs::read_to_string(dir.join("bench_ed25519.pub"))?;
    Ok((key, public.trim().to_string()))
}

/// Polls `log` (the ssh process's stderr) for OpenSSH's `Allocated port N for remote
/// forward to ...` line; the port.
async fn allocated_port(ssh: &mut Proc, log: &Path) -> Result<u16> {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("Allocated port ")) {
            return l
                .split_whitespace()
                .nth(2)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("cannot read the port of `{l}`"));
        }
        if ssh.exited() {
            bail!("ssh exited before allocating a port: {}", text.trim());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("ssh allocated no port within {START:?}: {}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Ciphers` line `tunnelc setup --transport ssh` writes on a CPU with AES instructions
/// (`AES_FIRST_CIPHERS` in client/src/setup/ssh.rs): OpenSSH's own list, AES-GCM first.
const CIPHERS: &str = "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

/// tunneld with an `ssh` transport and a ports frontend; OpenSSH's `ssh -N -R 0:<service>`
/// as the client, with the ciphers `tunnelc setup --transport ssh` writes (everything else at
/// OpenSSH's defaults, no keepalives from the client).
pub async fn tunneld_ssh(bins: &Path, service: SocketAddr, dir: &Path) -> Result<System> {
    let (key, public) = keygen(dir)?;
    let components = "transports: { edge: { type: ssh, listen: 127.0.0.1:0 } }\nfrontends: { tcp: { type: ports, bind: 127.0.0.1, range: 13000-13999 } }\n";
    let ssh_keys = format!(", ssh_keys: [\"{public}\"]");
    let (server, addrs, _) =
        start_tunneld(bins, dir, &ssh_keys, components, &["transport=edge"]).await?;
    let edge: SocketAddr = addrs[0].parse()?;
    let (port, key) = (edge.port().to_string(), key.display().to_string());
    let forward = format!("0:127.0.0.1:{}", service.port());
    let log = dir.join("ssh.log");
    #[rustfmt::skip]
    let args = [
        "-F", "/dev/null", "-N", "-p", &port, "-i", &key,
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ServerAliveInterval=0", "-o", CIPHERS,
        "-o", "ExitOnForwardFailure=yes", "-R", &forward, "bench@127.0.0.1",
    ];
    let mut client = Proc::spawn(Path::new("ssh"), &args, &log, "ssh")?;
    let public_port = allocated_port(&mut client, &log).await?;
    Ok(System {
        name: NAME.into(),
        endpoint: crate::endpoint::Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], public_port))),
        server: Some(server),
        client: Some(client),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}
