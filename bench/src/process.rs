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

    /// CPU time of the process and its children, in clock ticks ([`tree_cpu_ticks`]).
    pub fn cpu_ticks(&self) -> Option<u64> {
        tree_cpu_ticks(self.child.id()?)
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

/// Clock ticks a second in /proc's CPU times (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// CPU time, user and system, of process `root` and of every process descended from it (an
/// nginx master's workers), in clock ticks; `None` when `root` is gone.
pub fn tree_cpu_ticks(root: u32) -> Option<u64> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, ticks)) = stat_of(pid) {
            procs.push((pid, ppid, ticks));
        }
    }
    let mut total = procs.iter().find(|p| p.0 == root)?.2;
    let mut tree = vec![root];
    // Children, then their children (a process list is short: one pass per generation).
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, ticks) in &procs {
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
                total += ticks;
            }
        }
        i += 1;
    }
    Some(total)
}

/// (parent pid, utime + stime) from `/proc/<pid>/stat`; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid (4), ... utime (14), stime (15).
    let num = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some((u32::try_from(num(4)?).ok()?, num(14)? + num(15)?))
}
