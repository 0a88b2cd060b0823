//! Running the real `tunneld` and `tunnelc` binaries.

use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Runs `tunneld --config <config> ARGS` to its end: its stdout; on a non-zero exit, an error
/// naming the arguments with tunneld's stderr.
pub fn tunneld_cli(config: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(binary("tunneld")?)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tunneld {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path of a workspace binary, building the binaries once if they are missing or older
/// than this test executable (plain `cargo test` builds only libraries for this crate). The
/// build selects the same targets as `cargo test --workspace`, so features unify the same way
/// and nothing already built is rebuilt.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let path = dir.join(name);
    let fresh = |p: &std::path::Path| {
        let age = |q: &std::path::Path| std::fs::metadata(q).and_then(|m| m.modified()).ok();
        matches!((age(p), age(&exe)), (Some(b), Some(t)) if b >= t)
    };
    let built = BUILT.get_or_init(|| {
        if fresh(&dir.join("tunneld")) && fresh(&dir.join("tunnelc")) {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--workspace", "--all-targets"]);
        // Into the directory this test runs from: the same profile, target and target
        // directory (`cargo test --release` must not find stale release binaries beside a
        // fresh debug build).
        build.args(build_location(dir));
        // What cargo sets for a test run is not the caller's environment: ring's build script
        // watches CARGO_MANIFEST_DIR, so passing it on rebuilt most of the tree (twice: the next
        // plain build changed it back).
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key == "OUT_DIR"
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
            {
                build.env_remove(key);
            }
        }
        let status = build.status().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build --bins failed: {status}"))
        }
    });
    built.clone().map_err(|e| anyhow!(e))?;
    if !path.exists() {
        bail!("{} is missing after building", path.display());
    }
    Ok(path)
}

/// The `cargo build` arguments that put binaries in `dir` (`<target-dir>[/<triple>]/<profile>`,
/// the target directory being the outermost with cargo's `CACHEDIR.TAG`: cargo tags a
/// `<triple>` directory as well).
fn build_location(dir: &std::path::Path) -> Vec<String> {
    let name = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut args = match name(dir).as_str() {
        "debug" => Vec::new(),
        "release" => vec!["--release".to_string()],
        profile => vec!["--profile".to_string(), profile.to_string()],
    };
    let Some(up) = dir.parent() else {
        return args;
    };
    let root = if let Some(root) = up.parent().filter(|r| r.join("CACHEDIR.TAG").exists()) {
        args.extend(["--target".to_string(), name(up)]);
        root
    } else if up.join("CACHEDIR.TAG").exists() {
        up
    } else {
        return args;
    };
    args.extend(["--target-dir".to_string(), root.display().to_string()]);
    args
}

/// A spawned binary whose stdout is read line by line. Killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], stderr_path: PathBuf) -> Result<Self> {
        Self::spawn_program(&binary(name)?, args, stderr_path)
    }

    /// Spawns any program (a peer such as the Go threshold client).
    pub fn spawn_program(
        program: &std::path::Path,
        args: &[&str],
        stderr_path: PathBuf,
    ) -> Result<Self> {
        let name = program.display().to_string();
        let err = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let stdout =
            BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
        Ok(Self {
            child,
            stdout,
            stderr_path,
        })
    }

    /// Reads stdout until a line starts with `prefix`; returns that line.
    pub async fn line_starting(&mut self, prefix: &str) -> Result<String> {
        let fut = async {
            while let Some(line) = self.stdout.next_line().await? {
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
            Err(anyhow!(
                "stdout ended before a line starting with `{prefix}`; stderr: {}",
                self.stderr()
            ))
        };
        tokio::time::timeout(crate::WAIT, fut)
            .await
            .map_err(|_| anyhow!("timed out waiting for `{prefix}`"))?
    }

    /// The next line of stdout (bounded by [`crate::WAIT`]).
    pub async fn next_line(&mut self) -> Result<String> {
        match tokio::time::timeout(crate::WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(anyhow!("stdout ended; stderr: {}", self.stderr())),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow!("timed out waiting for a line")),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("process already exited"))?;
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    pub async fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(crate::WAIT, self.child.wait()).await??)
    }
}

/// Builds the Go threshold client (`integration-tests/go/threshold-client`) with Debian's
/// `golang-go` and `golang-github-hashicorp-yamux-dev`, in GOPATH mode without downloads.
/// `Ok(None)` only when `go` is not installed; a failing build is an error.
pub fn go_threshold_client() -> Result<Option<PathBuf>> {
    static BUILT: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if std::process::Command::new("go")
                .arg("version")
                .output()
                .is_err()
            {
                return Ok(None);
            }
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let target = exe
                .parent()
                .and_then(|d| d.parent())
                .ok_or("cannot locate the target directory")?
                .to_path_buf();
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("go/threshold-client");
            // Each test process builds to its own name, then renames: parallel test
            // binaries never see a half-written executable.
            let tmp = target.join(format!("go-threshold-client.{}", std::process::id()));
            let out = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&tmp)
                .arg(".")
                .current_dir(&src)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", target.join("go-cache"))
                .env("GOFLAGS", "")
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "go build of the threshold client failed (is golang-github-hashicorp-yamux-dev installed?): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let path = target.join("go-threshold-client");
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            Ok(Some(path))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The Go threshold client for a test, or `None` after printing why the test is skipped
/// (only when Go is not installed; a failing build panics).
pub fn go_threshold_client_or_skip(test: &str) -> Option<PathBuf> {
    match go_threshold_client() {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            eprintln!(
                "SKIPPED {test}: `go` is not installed (apt-get install golang-go golang-github-hashicorp-yamux-dev; scripts/test does)"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Whether `program` runs here (`program arg`); when it does not, the test is skipped with a
/// note, or fails under CI (`CI=true`), where scripts/test installs it (`install` says how).
pub fn tool_or_skip(program: &str, arg: &str, install: &str, test: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: `{program}` is not installed ({install}; scripts/test does)");
        }
        eprintln!("SKIPPED {test}: `{program}` is not installed ({install})");
    }
    found
}

/// The value of `key=` in a line like `listening transport=edge addr=127.0.0.1:7000`.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Runs `curl` with `args` and returns (status, stdout).
pub async fn curl(args: &[&str]) -> Result<(std::process::ExitStatus, String)> {
    let out = tokio::time::timeout(
        crate::WAIT,
        Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output(),
    )
    .await
    .context("curl timed out")?
    .context("curl is not installed (scripts/test installs it)")?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::build_location;

    #[test]
    fn the_fallback_build_goes_where_the_tests_run() {
        let root = crate::temp_dir("build-location");
        std::fs::write(
            root.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .expect("tag");
        let at = |rel: &str| {
            let d = root.join(rel);
            std::fs::create_dir_all(&d).expect("dir");
            build_location(&d)
        };
        let r = root.display().to_string();
        assert_eq!(at("debug"), ["--target-dir", &r]);
        // Cargo tags the directory of a named target too.
        std::fs::create_dir_all(root.join("x86_64-unknown-linux-gnu")).expect("dir");
        std::fs::write(
            root.join("x86_64-unknown-linux-gnu/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .expect("tag");
        assert_eq!(at("release"), ["--release", "--target-dir", &r]);
        assert_eq!(
            at("x86_64-unknown-linux-gnu/release"),
            [
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                &r
            ]
        );
        assert_eq!(
            at("profiling"),
            ["--profile", "profiling", "--target-dir", &r]
        );
    }
}
