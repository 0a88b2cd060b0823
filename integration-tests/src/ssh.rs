//! The real OpenSSH client (and autossh) against tunneld's `ssh` transport: key pairs made
//! by `ssh-keygen`, `ssh` processes whose stderr is watched for OpenSSH's own lines
//! (`Allocated port N ...`), and a test server with an ssh transport and the `web` frontend.

use crate::{TestServer, WAIT, WEB_FRONTEND};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Whether `program` runs here; when it does not, a test is skipped with a note, or fails
/// under CI (`CI=true`), where `.ci/run` installs it.
pub fn peer_or_skip(program: &str, test: &str) -> bool {
    crate::process::tool_or_skip(
        program,
        "-V",
        "apt-get install openssh-client autossh",
        test,
    )
}

/// A key pair made by `ssh-keygen` in `dir`: (private key file, public key line).
pub fn keygen(dir: &Path, name: &str, kind: &str) -> Result<(PathBuf, String)> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-C", name, "-t", kind, "-f"])
        .arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    let out = cmd.output().context("run ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = std::fs::read_to_string(path.with_extension("pub"))
        .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))?;
    Ok((path, line.trim().to_string()))
}

/// A test server with transport `ssh` (port 0, 1 s keepalives), the `web` https frontend
/// (sharing its port with an `h2` transport) and the harness's `tcp` ports frontend; `keys`
/// become `auth.tokens.alice.ssh_keys`.
pub async fn server(keys: &[&str], sets: &[String]) -> Result<TestServer> {
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let mut all = vec![
        "transports.h2.type=h2-reverse".into(),
        "transports.h2.listen=127.0.0.1:0".into(),
        "transports.ssh.type=ssh".into(),
        "transports.ssh.listen=127.0.0.1:0".into(),
        "transports.ssh.keepalive_interval=1s".into(),
        format!("auth.tokens.alice.ssh_keys=[{}]", quoted.join(", ")),
    ];
    all.extend_from_slice(sets);
    TestServer::start_full(WEB_FRONTEND, &all).await
}

/// An `ssh` process and the lines of its stderr.
pub struct Ssh {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

/// The options every test's `ssh` uses: the key only, no host key prompt, no password.
pub fn base_args(port: u16, key: &Path) -> Vec<String> {
    [
        "-p",
        &port.to_string(),
        "-i",
        &key.display().to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Ssh {
    /// Runs `program` (ssh or autossh) with `args`; stderr is read line by line.
    pub fn spawn(program: &str, args: &[String], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {program}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        for pipe in [
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(pipe).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits (at most [`WAIT`]) for an output line containing `needle`.
    pub async fn line_with(&mut self, needle: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            match next {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Ok(l);
                    }
                }
                Ok(None) => bail!("ssh ended before `{needle}`: {:?}", self.seen),
                Err(_) => bail!("no `{needle}` within {WAIT:?}: {:?}", self.seen),
            }
        }
    }

    /// The port of OpenSSH's `Allocated port N for remote forward to ...` line.
    pub async fn allocated_port(&mut self) -> Result<u16> {
        let l = self.line_with("Allocated port").await?;
        l.split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("cannot read the port of `{l}`"))
    }

    /// Waits (at most [`WAIT`]) for the process to end; its exit code and all it printed.
    pub async fn exit(mut self) -> Result<(Option<i32>, String)> {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .map_err(|_| anyhow!("ssh still running after {WAIT:?}: {:?}", self.seen))??;
        // What it printed last arrives after the exit.
        while let Ok(Some(l)) =
            tokio::time::timeout(Duration::from_millis(500), self.lines.recv()).await
        {
            self.seen.push(l);
        }
        Ok((status.code(), self.seen.join("\n")))
    }
}
