//! The example configs pass `--check`; every file in fixtures/invalid fails `--check` with
//! the message its first line (`# expect: ...`) names. Environment and `--set` layering.

use std::path::{Path, PathBuf};
use std::process::Command;
use tunneld_client::config::client::ClientConfig;
use tunneld_daemon::config::server::{FrontendConfig, ServerConfig, TransportConfig};
use tunneld_integration_tests::process::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn check(bin: &str, file: &Path) -> (bool, String) {
    let out = Command::new(binary(bin).expect("binary"))
        .args(["--check", "--config", file.to_str().expect("utf8")])
        .output()
        .expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn examples_pass_check_and_parse_fully() {
    let (ok, out) = check("tunneld", &repo().join("config.example.yaml"));
    assert!(ok, "{out}");
    assert!(out.contains("configuration ok"), "{out}");
    let (ok, out) = check("tunnelc", &repo().join("client.example.yaml"));
    assert!(ok, "{out}");

    let cfg =
        ServerConfig::load(Some(&repo().join("config.example.yaml")), &[]).expect("server example");
    let Some(TransportConfig::Yamux(edge)) = cfg.transports.get("edge") else {
        panic!("yamux transport")
    };
    let threshold = edge
        .threshold
        .as_ref()
        .expect("threshold dialect in the example");
    assert_eq!(
        (threshold.domain.as_str(), threshold.header_identity),
        ("localhost", false)
    );
    let Some(FrontendConfig::Ports(p)) = cfg.frontends.get("tcp") else {
        panic!("ports frontend")
    };
    assert_eq!(p.range.to_string(), "20000-20999");
    assert_eq!(
        cfg.state_dir,
        repo().join("state"),
        "relative paths follow the config file"
    );
    let client =
        ClientConfig::load(Some(&repo().join("client.example.yaml")), &[]).expect("client example");
    assert_eq!(
        client.tls.ca,
        Some(repo().join("state/tls/ca.pem")),
        "the client trusts what tunneld generates"
    );
    assert_eq!(client.tunnels["web"].remote_port, Some(20080));
}

#[test]
fn every_invalid_fixture_fails_with_its_message() {
    let dir = repo().join("fixtures/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` first line", path.display()));
        let name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        let bin = if name.starts_with("client-") {
            "tunnelc"
        } else {
            "tunneld"
        };
        let (ok, out) = check(bin, &path);
        assert!(!ok, "{name} passed --check");
        assert!(
            out.contains(expect),
            "{name}: expected `{expect}` in:\n{out}"
        );
        n += 1;
    }
    assert!(n >= 10, "only {n} fixtures");
}

#[test]
fn set_flags_override_the_file_and_unknown_keys_in_set_are_errors() {
    let file = repo().join("config.example.yaml");
    let cfg = ServerConfig::load(
        Some(&file),
        &[
            "admin.listen=127.0.0.1:9999".into(),
            "limits.keepalive=3s".into(),
        ],
    )
    .expect("overrides");
    assert_eq!(cfg.admin.expect("admin").listen.port(), 9999);
    assert_eq!(cfg.limits.keepalive.as_secs(), 3);
    let err = ServerConfig::load(Some(&file), &["limits.keepalive_typo=3s".into()])
        .expect_err("unknown key");
    assert!(
        err.to_string()
            .contains("limits.keepalive_typo: unknown field"),
        "{err}"
    );
    let err = ServerConfig::load(Some(&file), &["nonsense".into()]).expect_err("no =");
    assert!(err.to_string().contains("expected key.path=value"), "{err}");
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let file = repo().join("config.example.yaml");
    let out = Command::new(binary("tunneld").expect("binary"))
        .args(["--check", "--config", file.to_str().expect("utf8")])
        .env("TUNNELD_LIMITS__KEEPALIVE", "forever")
        .env("TUNNELD_UNRELATED", "ignored")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.keepalive") && err.contains("forever"),
        "{err}"
    );
    let out = Command::new(binary("tunneld").expect("binary"))
        .args([
            "--check",
            "--config",
            file.to_str().expect("utf8"),
            "--set",
            "limits.keepalive=5s",
        ])
        .env("TUNNELD_LIMITS__KEEPALIVE", "forever")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reading_commands_never_create_a_state_store_and_bare_tunnelc_prints_usage() {
    let dir = tunneld_integration_tests::temp_dir("no-store");
    let state = dir.join("state");
    let example = repo().join("config.example.yaml");
    for args in [
        vec!["token", "list"],
        vec!["token", "revoke", "nobody"],
        vec!["token", "ssh-key", "list"],
        vec!["rendezvous", "list"],
        vec!["state", "check"],
    ] {
        let out = Command::new(binary("tunneld").expect("binary"))
            .args(["--config", example.to_str().expect("utf8"), "--set"])
            .arg(format!("state_dir={}", state.display()))
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("no state store at") && err.contains("nothing was created"),
            "{args:?}: {err}"
        );
        assert!(!state.exists(), "{args:?} created {}", state.display());
    }
    // Bare tunnelc: usage and exit 2, no connection attempt.
    let out = Command::new(binary("tunnelc").expect("binary"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run tunnelc");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to do"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Usage"),
        "{out:?}"
    );
}
