//! The README's blocks marked ```` ```sh runnable ```` run, in order, as one bash script in a
//! scratch copy of the repository's example configs, against the built tunneld and tunnelc
//! (`cargo run ... --bin X -- args` runs the built `X`), with tunneld started on
//! config.example.yaml's embedded defaults as the quick start does. Any failing command
//! (`set -e`, curl `--fail`) fails the test with the script's output.
//!
//! It uses the documented fixed ports (7000-8445, 20000-20999): cargo runs test binaries one
//! at a time, and this binary holds one test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tunneld_integration_tests::process::binary;
use tunneld_integration_tests::temp_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The runnable blocks with the README line each starts on.
fn runnable_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh runnable" => current = Some((i + 2, String::new())),
            Some((_, body)) if line.trim_end() == "```" => {
                let body = std::mem::take(body);
                let (start, _) = current.take().expect("open block");
                out.push((start, body));
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "README ends inside a runnable block");
    out
}

fn peers_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = ["python3", "curl", "bash"]
        .into_iter()
        .filter(|p| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: missing {missing:?} (scripts/test installs them)");
    }
    eprintln!("SKIPPED {test}: missing {missing:?}");
    false
}

const PREAMBLE: &str = r#"set -euo pipefail
# `cargo run [--release] [-q] --bin X -- args` runs the built X; `tunnelc` is the built one.
cargo() {
  [ "$1" = run ] || { echo "readme test: only \`cargo run\` is supported: cargo $*" >&2; return 2; }
  shift
  local bin=
  while [ $# -gt 0 ]; do
    case "$1" in
      --release|-q) shift ;;
      --bin) bin="$2"; shift 2 ;;
      --) shift; break ;;
      *) echo "readme test: unexpected cargo argument $1" >&2; return 2 ;;
    esac
  done
  "$BIN/$bin" "$@"
}
tunnelc() { "$BIN/tunnelc" "$@"; }
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cargo run --release --bin tunneld -- --config config.example.yaml > tunneld.log 2>&1 &
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null http://127.0.0.1:7001/readyz \
  || { cat tunneld.log; exit 1; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnable_readme_blocks_work_against_the_built_binaries() {
    if !peers_or_skip("runnable_readme_blocks_work_against_the_built_binaries") {
        return;
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks.len() >= 4,
        "runnable README blocks: {}",
        blocks.len()
    );
    let bin = binary("tunneld")
        .expect("tunneld built")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let work = temp_dir("readme");
    for f in ["config.example.yaml", "client.example.yaml"] {
        std::fs::copy(repo().join(f), work.join(f)).expect("copy example");
    }
    let home = work.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut script = PREAMBLE.to_string();
    for (line, body) in &blocks {
        script.push_str(&format!("echo '### README line {line}'\n{body}"));
    }
    script.push_str("echo '### README done'\n");
    std::fs::write(work.join("readme.sh"), &script).expect("script");

    // Output goes to files: background processes the script starts keep them open.
    let out_file = std::fs::File::create(work.join("readme.out")).expect("out");
    let err_file = std::fs::File::create(work.join("readme.err")).expect("err");
    let mut child = tokio::process::Command::new("bash")
        .arg("readme.sh")
        .current_dir(&work)
        .env("BIN", &bin)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("bash");
    let pgid = child.id().expect("pid");
    let result = tokio::time::timeout(std::time::Duration::from_secs(180), child.wait()).await;
    // Whatever happened, nothing the script started outlives it.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let read = |f: &str| std::fs::read_to_string(work.join(f)).unwrap_or_default();
    let (stdout, stderr, log) = (read("readme.out"), read("readme.err"), read("tunneld.log"));
    let status = match result {
        Ok(st) => st.expect("wait"),
        Err(_) => panic!(
            "the README script did not finish in 180 s:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- tunneld\n{log}"
        ),
    };
    assert!(
        status.success() && stdout.contains("### README done"),
        "README script failed ({status}) in the block after the last marker:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- tunneld\n{log}"
    );
}
