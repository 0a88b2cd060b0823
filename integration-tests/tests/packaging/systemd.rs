//! The systemd units pass `systemd-analyze verify` (a broken one does not) and are sandboxed,
//! sysusers makes the users they run as, and the installed configs pass `--check`.

use crate::common::*;

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
