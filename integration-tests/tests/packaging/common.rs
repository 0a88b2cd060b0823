//! Helpers the packaging tests share: the repository's files, the tools they need (skipped
//! when missing outside CI), commands run with their output, and the built binaries.

pub(crate) use std::io::Read;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Command, Output, Stdio};
pub(crate) use std::time::{Duration, Instant};
pub(crate) use tunneld_integration_tests::process::binary;
pub(crate) use tunneld_integration_tests::temp_dir;

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

pub(crate) fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether `tool` is installed; when it is not, the test is skipped with a note, or fails
/// under CI, where scripts/test installs `package`.
pub(crate) fn tool(tool: &str, package: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    if !found {
        let why =
            format!("`{tool}` is not installed (apt-get install {package}; scripts/test does)");
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
    }
    found
}

/// Runs `cmd` to its end within 60 s (killed past that, which fails the test).
pub(crate) fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn bin(name: &str) -> PathBuf {
    binary(name).expect("built binary")
}

// ---------------------------------------------------------------- systemd units

/// A MANPATH with both programs' generated pages, as installed: the units' `Documentation=`
/// names them, and `systemd-analyze verify` runs `man` to check that they exist.
pub(crate) fn man_path() -> PathBuf {
    let dir = temp_dir("manpath");
    std::fs::create_dir_all(dir.join("man1")).expect("man1");
    for program in ["tunneld", "tunnelc"] {
        let page = docs(program, &["man"]);
        std::fs::write(dir.join(format!("man1/{program}.1")), page).expect("write page");
    }
    dir
}

pub(crate) fn docs(program: &str, args: &[&str]) -> String {
    // --config names a file that does not exist: these commands never read one.
    let out = run(Command::new(bin(program))
        .args(["--config", "/nonexistent/config.yaml"])
        .args(args));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("utf8")
}
