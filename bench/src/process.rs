//! A process under test: spawned with its stdout read line by line (what it prints when
//! ready), its memory read from /proc, killed on drop.

use crate::systems::START;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A spawned process, killed on drop.
pub struct Proc {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    label: String,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[&str], log: &Path, label: &str) -> Result<Self> {
        let err = std::fs::File::create(log)?;
        let mut child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        Ok(Self {
            child,
            lines: BufReader::new(out).lines(),
            label: label.to_string(),
        })
    }

    /// Reads stdout until a line contains `needle`.
    pub async fn line_with(&mut self, needle: &str) -> Result<String> {
        let label = self.label.clone();
        tokio::time::timeout(START, async {
            while let Some(l) = self.lines.next_line().await? {
                if l.contains(needle) {
                    return Ok(l);
                }
            }
            bail!("{label} exited before printing `{needle}`")
        })
        .await
        .map_err(|_| anyhow!("{label}: no `{needle}` within {START:?}"))?
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// The anonymous part of it (heap, stacks: what the process allocated, without the
    /// program's own pages mapped from its file), in KiB.
    pub fn anon_kib(&self) -> Option<u64> {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}
