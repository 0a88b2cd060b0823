//! Packaging (docs/operations.md#installing): the systemd units pass `systemd-analyze verify`
//! (and a broken unit does not), the sysusers file makes the users they run as, the installed
//! configs pass `--check` and point the state at /var/lib/tunneld, the completion scripts load
//! in bash and complete subcommands, the man pages are clean roff, and the Dockerfile copies
//! only what exists and builds the binaries its runtime stage runs as a non-root user.
//!
//! The tools (`systemd-analyze`, `systemd-sysusers`, `groff`, `bash`) come from Debian's
//! systemd, groff-base and bash; scripts/test installs them. A missing one skips its test with
//! a note, and fails it under CI (`CI=true`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tunneld_integration_tests::process::binary;
use tunneld_integration_tests::temp_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Whether `tool` is installed; when it is not, the test is skipped with a note, or fails
/// under CI, where scripts/test installs `package`.
fn tool(tool: &str, package: &str, test: &str) -> bool {
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
fn run(cmd: &mut Command) -> Output {
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

fn text(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn bin(name: &str) -> PathBuf {
    binary(name).expect("built binary")
}

// ---------------------------------------------------------------- systemd units

const UNITS: [(&str, &str); 2] = [
    ("tunneld.service", "tunneld.service"),
    ("tunnelc@.service", "tunnelc@example.service"),
];

/// The unit's `Key=value` lines of `[Service]`, in order.
fn service_keys(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut keys = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.push((k.to_string(), v.to_string()));
            }
        }
    }
    keys
}

fn values<'a>(keys: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    keys.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A MANPATH with both programs' generated pages, as installed: the units' `Documentation=`
/// names them, and `systemd-analyze verify` runs `man` to check that they exist.
fn man_path() -> PathBuf {
    let dir = temp_dir("manpath");
    std::fs::create_dir_all(dir.join("man1")).expect("man1");
    for program in ["tunneld", "tunnelc"] {
        let page = docs(program, &["man"]);
        std::fs::write(dir.join(format!("man1/{program}.1")), page).expect("write page");
    }
    dir
}

/// `systemd-analyze ARGS <dir>/instance`, with `unit` written as `file` in a fresh directory
/// and the installed binary paths replaced by the built ones (verify requires them to exist).
fn analyze(args: &[&str], unit: &str, file: &str, instance: &str, man: &Path) -> Output {
    let unit = unit
        .replace(
            "/usr/local/bin/tunneld",
            bin("tunneld").to_str().expect("utf8"),
        )
        .replace(
            "/usr/local/bin/tunnelc",
            bin("tunnelc").to_str().expect("utf8"),
        );
    let dir = temp_dir("unit");
    std::fs::write(dir.join(file), unit).expect("write unit");
    let out = run(Command::new("systemd-analyze")
        .args(args)
        .arg(dir.join(instance))
        .env("MANPATH", man)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// `systemd-analyze verify`: clean means exit 0 and not a line of output (verify exits 0 on
/// unknown keys and other problems it only warns about).
fn verify(unit: &str, file: &str, instance: &str, man: &Path) -> (bool, String) {
    let out = analyze(&["verify"], unit, file, instance, man);
    let clean = out.status.success() && out.stdout.is_empty() && out.stderr.is_empty();
    (clean, text(&out))
}

#[test]
fn units_pass_systemd_analyze_verify_and_broken_ones_do_not() {
    if !tool("systemd-analyze", "systemd", "units_verify") || !tool("man", "man-db", "units_verify")
    {
        return;
    }
    let man = man_path();
    for (file, instance) in UNITS {
        let unit = read(&format!("packaging/systemd/{file}"));
        let (clean, out) = verify(&unit, file, instance, &man);
        assert!(clean, "{file}: {out}");

        // The check is meaningful: a misspelled key (verify only warns and exits 0) and a
        // binary that does not exist both fail it.
        let typo = unit.replace("ProtectSystem=strict", "ProtectSystm=strict");
        let (clean, out) = verify(&typo, file, instance, &man);
        assert!(
            !clean && out.contains("ProtectSystm"),
            "{file} with a typo: {out}"
        );
        let missing = unit.replace("/usr/local/bin/tun", "/nonexistent/tun");
        let out = analyze(&["verify"], &missing, file, instance, &man);
        assert!(
            !out.status.success() && text(&out).contains("/nonexistent/tun"),
            "{file} with a missing binary: {}",
            text(&out)
        );
        let undocumented = unit.replace("man:tun", "man:no-such-page-tun");
        let (clean, out) = verify(&undocumented, file, instance, &man);
        assert!(!clean, "{file} naming a missing man page: {out}");

        // systemd's own sandbox score (0 to 10, lower is tighter; 2.0 is the 20 here): the
        // units keep what they have (tunneld 1.4, tunnelc@ 1.1 when written).
        let out = analyze(
            &["security", "--offline=yes", "--threshold=20"],
            &unit,
            file,
            instance,
            &man,
        );
        assert!(
            out.status.success(),
            "{file} exposure above 2.0: {}",
            text(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&man);
}

#[test]
fn units_are_sandboxed_and_only_tunneld_may_bind_low_ports() {
    let d = service_keys(&read("packaging/systemd/tunneld.service"));
    let c = service_keys(&read("packaging/systemd/tunnelc@.service"));
    for (name, keys) in [("tunneld", &d), ("tunnelc@", &c)] {
        for (key, want) in [
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            ("Restart", "on-failure"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ] {
            assert!(
                values(keys, key).contains(&want),
                "{name}: {key}={want} missing: {:?}",
                values(keys, key)
            );
        }
        assert!(
            values(keys, "User").iter().all(|u| *u != "root") && !values(keys, "User").is_empty(),
            "{name} runs as its own user"
        );
        let limit: u64 = values(keys, "LimitNOFILE")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(limit >= 65536, "{name}: LimitNOFILE {limit}");
    }
    assert_eq!(values(&d, "AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(
        values(&d, "CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(values(&c, "AmbientCapabilities"), [""]);
    assert_eq!(
        values(&c, "CapabilityBoundingSet"),
        [""],
        "tunnelc: no capability"
    );
    assert_eq!(values(&d, "StateDirectory"), ["tunneld"]);
    assert_eq!(values(&d, "ConfigurationDirectory"), ["tunneld"]);
    assert_eq!(
        values(&d, "Environment"),
        ["TUNNELD_STATE_DIR=%S/tunneld"],
        "the state dir is /var/lib/tunneld whatever the config says"
    );
    assert!(
        values(&c, "RestartPreventExitStatus")
            .iter()
            .any(|v| v.split(' ').any(|s| s == "2")),
        "tunnelc's exit 2 (retrying cannot help) must not restart it"
    );
    assert!(values(&c, "ExecStart")
        .iter()
        .any(|v| v.ends_with("--config /etc/tunneld/client-%i.yaml")));
    assert!(values(&d, "ExecStart")
        .iter()
        .any(|v| v.ends_with("--config /etc/tunneld/server.yaml")));
}

#[test]
fn sysusers_makes_the_users_the_units_run_as() {
    if !tool("systemd-sysusers", "systemd", "sysusers") {
        return;
    }
    let root = temp_dir("sysusers");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo().join("packaging/sysusers.d/tunneld.conf")));
    assert!(out.status.success(), "{}", text(&out));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    let _ = std::fs::remove_dir_all(&root);
    for (user, unit) in [
        ("tunneld", "tunneld.service"),
        ("tunnelc", "tunnelc@.service"),
    ] {
        let line = passwd
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("{user} missing from {passwd}"));
        assert!(line.ends_with("nologin"), "{user} has no shell: {line}");
        let keys = service_keys(&read(&format!("packaging/systemd/{unit}")));
        assert_eq!(values(&keys, "User"), [user], "{unit}");
    }
}

// ---------------------------------------------------------------- installed configs

#[test]
fn installed_configs_pass_check_and_keep_state_in_var_lib() {
    let server = repo().join("packaging/etc/server.yaml");
    let out = run(Command::new(bin("tunneld"))
        .args(["--check", "--config"])
        .arg(&server));
    assert!(out.status.success(), "{}", text(&out));
    let cfg = tunneld_daemon::config::server::ServerConfig::load(Some(&server), &[])
        .expect("packaging/etc/server.yaml");
    assert_eq!(cfg.state_dir, Path::new("/var/lib/tunneld"));

    // The CLI reads the store the config names (and never creates one for a read); the
    // unit's TUNNELD_STATE_DIR overrides it.
    let out = run(Command::new(bin("tunneld"))
        .arg("--config")
        .arg(&server)
        .args(["token", "list"])
        .env_remove("TUNNELD_STATE_DIR"));
    assert!(
        !out.status.success() && text(&out).contains("/var/lib/tunneld/state.db"),
        "{}",
        text(&out)
    );
    let elsewhere = temp_dir("state-env");
    let out = run(Command::new(bin("tunneld"))
        .arg("--config")
        .arg(&server)
        .args(["token", "list"])
        .env("TUNNELD_STATE_DIR", &elsewhere));
    assert!(
        text(&out).contains(&format!("{}/state.db", elsewhere.display())),
        "TUNNELD_STATE_DIR: {}",
        text(&out)
    );
    assert!(
        !elsewhere.join("state.db").exists(),
        "a read created a store"
    );
    let _ = std::fs::remove_dir_all(&elsewhere);

    // The client example, with the CA file it names beside it.
    let dir = temp_dir("client-example");
    std::fs::copy(
        repo().join("packaging/etc/client-example.yaml"),
        dir.join("client-example.yaml"),
    )
    .expect("copy");
    let (ca, _, _) = tunneld_integration_tests::pki::server_pki(&dir, "tunneld", &["localhost"]);
    assert!(ca.ends_with("tunneld-ca.pem"), "the file the example names");
    let out = run(Command::new(bin("tunnelc"))
        .args(["--check", "--config"])
        .arg(dir.join("client-example.yaml")));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out));
}

// ---------------------------------------------------------------- completions, man pages

const SUBCOMMANDS: [(&str, &[&str]); 2] = [
    (
        "tunneld",
        &["token", "rendezvous", "state", "completions", "man"],
    ),
    (
        "tunnelc",
        &[
            "tcp",
            "http",
            "setup",
            "list",
            "env",
            "test",
            "completions",
            "man",
        ],
    ),
];

fn docs(program: &str, args: &[&str]) -> String {
    // --config names a file that does not exist: these commands never read one.
    let out = run(Command::new(bin(program))
        .args(["--config", "/nonexistent/config.yaml"])
        .args(args));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    if !tool("bash", "bash", "bash_completion") {
        return;
    }
    for (program, subcommands) in SUBCOMMANDS {
        let dir = temp_dir("completion");
        let script = dir.join(program);
        std::fs::write(&script, docs(program, &["completions", "bash"])).expect("write");
        // Loaded as bash-completion would, then asked for `<program> <TAB>`.
        let probe = format!(
            r#"set -e; source {script}; complete -p {program}
COMP_WORDS=({program} ""); COMP_CWORD=1; COMP_LINE="{program} "; COMP_POINT=${{#COMP_LINE}}
_{program} {program} "" {program}; printf '%s\n' "${{COMPREPLY[@]}}""#,
            script = script.display()
        );
        let out = run(Command::new("bash").args(["--norc", "-c", &probe]));
        let _ = std::fs::remove_dir_all(&dir);
        let out_text = text(&out);
        assert!(out.status.success(), "{program}: {out_text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let registered = lines.next().unwrap_or("");
        assert!(
            registered.starts_with("complete ") && registered.ends_with(&format!(" {program}")),
            "{program}: complete -p printed {registered:?}"
        );
        let offered: Vec<&str> = lines.collect();
        for sub in subcommands {
            assert!(
                offered.contains(sub),
                "{program} <TAB> offers no {sub}: {offered:?}"
            );
        }
    }
}

#[test]
fn other_shells_get_scripts_naming_the_subcommands() {
    for (program, subcommands) in SUBCOMMANDS {
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            let script = docs(program, &["completions", shell]);
            for sub in subcommands {
                assert!(script.contains(sub), "{program} {shell}: no {sub}");
            }
        }
        let out = run(Command::new(bin(program)).args(["completions", "tcsh"]));
        assert!(
            !out.status.success() && text(&out).contains("tcsh"),
            "an unknown shell is refused: {}",
            text(&out)
        );
    }
}

/// Checks roff with groff's man macros, every warning on: (clean, rendered text).
fn groff(roff: &[u8], what: &str) -> String {
    let dir = temp_dir("man");
    let file = dir.join("page.1");
    std::fs::write(&file, roff).expect("write");
    let out = run(Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(&file)
        .env("MANWIDTH", "100"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: groff complains: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_pages_are_clean_roff_with_the_installed_locations() {
    if !tool("groff", "groff-base", "man_pages") {
        return;
    }
    for (program, subcommands, location) in [
        ("tunneld", SUBCOMMANDS[0].1, "/var/lib/tunneld"),
        ("tunnelc", SUBCOMMANDS[1].1, "/etc/tunneld/client-NAME.yaml"),
    ] {
        let page = groff(docs(program, &["man"]).as_bytes(), program);
        for want in [
            "NAME",
            "SYNOPSIS",
            "--config",
            "FILES",
            "EXIT STATUS",
            location,
        ] {
            assert!(page.contains(want), "{program}(1) has no {want}:\n{page}");
        }
        for sub in subcommands {
            assert!(page.contains(sub), "{program}(1) names no {sub}");
        }
        // --dir: a page per subcommand, each clean.
        let dir = temp_dir("man-dir");
        docs(program, &["man", "--dir", dir.to_str().expect("utf8")]);
        let nested = if program == "tunneld" {
            "tunneld-token-add.1"
        } else {
            "tunnelc-setup.1"
        };
        let roff = std::fs::read(dir.join(nested)).unwrap_or_else(|e| panic!("{nested}: {e}"));
        let page = groff(&roff, nested);
        assert!(page.contains("SYNOPSIS"), "{nested}:\n{page}");
        let main = std::fs::read_to_string(dir.join(format!("{program}.1"))).expect("main page");
        assert!(
            main.contains(".SH FILES"),
            "{program}.1 in --dir has its FILES"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------- Dockerfile

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
            cargo.contains(&format!("target/release/{b}")),
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
