//! `--profile`: one extra load run per tunneld row with Linux `perf` sampling tunneld and
//! tunnelc (software clock, DWARF call graphs, so no frame pointers are needed), turned into
//! folded stacks and a flame graph per process (inferno, installed from crates.io into the
//! peers directory) plus the top functions by self time. The profiled run is not counted in
//! the table: sampling with DWARF stacks slows both processes down.

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Where the tools are and where profiles go.
pub struct Profiler {
    collapse: PathBuf,
    flamegraph: PathBuf,
    out: PathBuf,
}

impl Profiler {
    /// Checks `perf` works here (a software clock event; hardware counters are often not
    /// available on cloud machines) and installs inferno into `peers` when missing.
    pub fn new(peers: &Path, out: &Path) -> Result<Self> {
        let perf = std::process::Command::new("perf")
            .args(["stat", "-e", "cpu-clock", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(perf, Ok(s) if s.success()) {
            bail!("--profile needs Linux perf (Debian: apt-get install linux-perf) allowed to sample (kernel.perf_event_paranoid <= 2)");
        }
        let bin = peers.join("bin");
        let (collapse, flamegraph) = (
            bin.join("inferno-collapse-perf"),
            bin.join("inferno-flamegraph"),
        );
        if !collapse.exists() || !flamegraph.exists() {
            eprintln!(
                "installing inferno into {} (cached afterwards)",
                peers.display()
            );
            let ok = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .args(["install", "--locked", "--root"])
            .arg(peers)
            .arg("inferno")
            .status()
            .context("cargo install inferno")?
            .success();
            if !ok {
                bail!("`cargo install inferno` failed");
            }
        }
        let out = out.join("profiles");
        std::fs::create_dir_all(&out)?;
        Ok(Self {
            collapse,
            flamegraph,
            out,
        })
    }

    /// Runs `load` while sampling each `(name, pid)`; writes `<label>-<name>.{svg,folded,top.txt}`.
    pub async fn record<T>(
        &self,
        label: &str,
        pids: &[(&str, u32)],
        load: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut perfs = Vec::new();
        for (name, pid) in pids {
            let stem = format!("{label}-{name}");
            let data = self.out.join(format!("{stem}.perf.data"));
            // perf's own messages (attach failures, lost samples) stay next to the graphs.
            let log = std::fs::File::create(self.out.join(format!("{stem}.perf.log")))?;
            let child = tokio::process::Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-F", "499"])
                .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("perf record")?;
            perfs.push((stem, data, child));
        }
        // perf needs a moment to attach before the load starts; its output file says so.
        for (_, data, _) in &perfs {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !data.exists() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let result = load.await;
        // Every perf is stopped and every data file removed, whatever fails on the way; the
        // first failure is reported.
        let mut failed = None;
        for (stem, data, mut child) in perfs {
            if let Some(id) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-INT", &id.to_string()])
                    .status();
            }
            let stopped = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
            let rendered = match stopped {
                Ok(Ok(_)) if data.exists() => self
                    .render(&stem, &data)
                    .with_context(|| format!("rendering {stem}")),
                Ok(Ok(status)) => Err(anyhow::anyhow!(
                    "perf record for {stem} wrote nothing ({status}; see {stem}.perf.log)"
                )),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("perf record")),
                Err(_) => Err(anyhow::anyhow!("perf record for {stem} did not stop")),
            };
            let _ = std::fs::remove_file(&data);
            if let (Err(e), None) = (rendered, &failed) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        eprintln!("profiles of {label} in {}", self.out.display());
        result
    }

    /// perf.data -> folded stacks -> flame graph, and the 25 hottest functions by self time.
    fn render(&self, stem: &str, data: &Path) -> Result<()> {
        let script = std::process::Command::new("perf")
            .args(["script", "-i"])
            .arg(data)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        let folded = self.out.join(format!("{stem}.folded"));
        pipe(&self.collapse, &[], &script.stdout, &folded)?;
        let title = format!("--title={stem}");
        let svg = self.out.join(format!("{stem}.svg"));
        pipe(&self.flamegraph, &[&title], &std::fs::read(&folded)?, &svg)?;
        let top = std::process::Command::new("perf")
            .args(["report", "--no-children", "--stdio", "-g", "none"])
            .args(["--percent-limit", "0.5", "--sort", "dso,symbol", "-i"])
            .arg(data)
            .stderr(Stdio::null())
            .output()
            .context("perf report")?;
        std::fs::write(self.out.join(format!("{stem}.top.txt")), top.stdout)?;
        Ok(())
    }
}

/// `program args < input > output`.
fn pipe(program: &Path, args: &[&str], input: &[u8], output: &Path) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(output)?)
        .spawn()
        .with_context(|| program.display().to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    if !child.wait()?.success() {
        bail!("{} failed", program.display());
    }
    Ok(())
}
