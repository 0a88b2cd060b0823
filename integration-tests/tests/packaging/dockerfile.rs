//! The Dockerfile copies only what exists and runs the built binaries as a non-root user.

use crate::common::*;

/// One Dockerfile instruction: keyword and arguments, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (kw, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
                out.push((kw.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// The `[[bin]]` names of a package's manifest, and its package name.
fn package(manifest: &str) -> (String, Vec<String>) {
    let text = read(manifest);
    let field = |line: &str| {
        line.split_once('=')
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
    };
    let name = text
        .lines()
        .find(|l| l.starts_with("name"))
        .and_then(field)
        .expect("package name");
    let mut bins = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && line.starts_with("name") {
            bins.extend(field(line));
        }
    }
    (name, bins)
}

/// The Dockerfile's instructions: (all, the first stage's, the last stage's).
type Stages = (Vec<(String, String)>, usize, usize);

fn stages() -> Stages {
    let steps = instructions(&read("Dockerfile"));
    let from: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].0 == "FROM").collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    let (second, last) = (from[1], from[from.len() - 1]);
    (steps, second, last)
}

#[test]
fn dockerfile_copies_only_what_exists_and_is_not_ignored() {
    let (steps, _, _) = stages();
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for (kw, args) in &steps {
        if kw != "COPY" || args.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                repo().join(src).exists(),
                "COPY source {src} does not exist"
            );
            let first = src.split('/').next().unwrap_or(src);
            assert!(
                src == "." || !ignored.iter().any(|i| i == first || i == src),
                "COPY source {src} is in .dockerignore"
            );
        }
    }
    for needed in [
        "Cargo.lock",
        "Cargo.toml",
        "config.example.yaml",
        "client.example.yaml",
        "daemon",
        "client",
        "core",
    ] {
        assert!(
            !ignored.iter().any(|i| i == needed),
            ".dockerignore drops {needed}"
        );
    }
    for heavy in ["target", "state", ".git", "fuzz"] {
        assert!(
            ignored.iter().any(|i| i == heavy),
            ".dockerignore keeps {heavy}"
        );
    }
}

#[test]
fn dockerfile_runs_the_built_binaries_as_non_root_with_the_ports_exposed() {
    let (steps, second, last) = stages();
    let (build, runtime) = (&steps[..second], &steps[last..]);

    // The build names the packages that hold the binaries, and the runtime stage copies the
    // binaries those packages build.
    let (daemon, daemon_bins) = package("daemon/Cargo.toml");
    let (client, client_bins) = package("client/Cargo.toml");
    assert_eq!(
        (daemon_bins.as_slice(), client_bins.as_slice()),
        (&["tunneld".to_string()][..], &["tunnelc".to_string()][..])
    );
    let cargo = build
        .iter()
        .find(|(kw, args)| kw == "RUN" && args.contains("cargo build"))
        .map(|(_, a)| a.as_str())
        .expect("a RUN with cargo build");
    for want in [
        "--release",
        "--locked",
        &format!("-p {daemon}"),
        &format!("-p {client}"),
    ] {
        assert!(cargo.contains(want), "cargo build without {want}: {cargo}");
    }
    for b in ["tunneld", "tunnelc"] {
        assert!(
            cargo.contains(&format!("target/$(rustc --print host-tuple)/release/{b}")),
            "the build stage keeps no {b}"
        );
        assert!(
            runtime.iter().any(|(kw, a)| kw == "COPY"
                && a.contains("--from=")
                && a.contains(&format!("/usr/local/bin/{b}"))),
            "the runtime stage gets no {b}"
        );
    }
    let entry = runtime
        .iter()
        .find(|(kw, _)| kw == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert!(entry.1.contains("/usr/local/bin/tunneld"), "{entry:?}");

    // Runs as a user that is not root, with the installed locations.
    let user = runtime
        .iter()
        .rev()
        .find(|(kw, _)| kw == "USER")
        .expect("USER in the runtime stage");
    let who = user.1.split(':').next().unwrap_or("");
    assert!(
        !who.is_empty() && who != "root" && who != "0",
        "runtime user {who}"
    );
    for (kw, want) in [
        ("COPY", "/etc/tunneld/server.yaml"),
        ("ENV", "TUNNELD_STATE_DIR=/var/lib/tunneld"),
        ("VOLUME", "/var/lib/tunneld"),
        ("CMD", "/etc/tunneld/server.yaml"),
    ] {
        assert!(
            runtime.iter().any(|(k, a)| k == kw && a.contains(want)),
            "runtime stage: no {kw} with {want}"
        );
    }

    // Every public port the image's config listens on is exposed.
    let exposed: String = runtime
        .iter()
        .filter(|(kw, _)| kw == "EXPOSE")
        .map(|(_, a)| format!(" {a} "))
        .collect();
    for line in read("packaging/etc/server.yaml").lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(port) = line.split_once("0.0.0.0:").map(|(_, p)| p.trim()) {
            assert!(
                exposed.contains(&format!(" {port} ")),
                "port {port} not exposed: {exposed}"
            );
        }
        if let Some(range) = line.strip_prefix("range: ") {
            assert!(
                exposed.contains(&format!(" {range} ")),
                "range {range} not exposed"
            );
        }
    }
}
